"""Shared and resumed studies: `autotune worker` processes on one PostgreSQL study, and a search
resumed from its journal file after Ctrl-C. No trial may be lost, doubled or left RUNNING."""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autotune.search import Evaluator, search
from autotune.space import Space
from costmodel.models.roofline import Roofline
from costmodel.hardware import load_profile
from costmodel.ir.plan import Plan

ATTRS = {"model": "bert-base", "batch": 1, "seq": 32, "dtype": "fp32", "target": "a100",
         "cost_model": "roofline"}
WORKER = [sys.executable, "-m", "autotune.cli", "worker"]


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server's bin folder: Debian's /usr/lib/postgresql/N/bin, else PATH."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "initdb").exists()]
    if found:
        return max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A private PostgreSQL server on 127.0.0.1 (trust auth, one database), stopped and removed
    after. initdb refuses root, so as root the server runs as `postgres` (else `nobody`)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or on "
                    "PATH; install them with .ci/start-postgres")
    owner, as_user = None, []
    if os.geteuid() == 0:
        users = {pw.pw_name: pw for pw in pwd.getpwall()}
        owner = users.get("postgres") or users.get("nobody")
        if owner is None:
            pytest.skip("running as root with neither a `postgres` nor a `nobody` user for initdb")
        as_user = ["runuser", "-u", owner.pw_name, "--"]
    base = Path(tempfile.mkdtemp(prefix="feyntune-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)

    def run(*cmd: str) -> None:
        p = subprocess.run(cmd, check=False, cwd=base, capture_output=True, text=True, timeout=120)
        if p.returncode:
            log = base / "server.log"
            pytest.fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}"
                        + (log.read_text() if log.exists() else ""))

    data, port = base / "data", free_port()
    try:
        run(*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "feyntune",
            "-E", "UTF8", "--locale=C", "--no-sync")
        # Durability is no concern for a throwaway cluster; fsync off keeps it quick on shared disks.
        run(*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"),
            "-w", "-t", "60", "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off", "start")
        try:
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "feyntune",
                "feyntune")
            yield f"postgresql://feyntune@127.0.0.1:{port}/feyntune"
        finally:
            run(*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study(postgres_url, capture):
    space = Space(capture("bert-base", 1, 32), load_profile("a100"))
    search(space, Roofline(), trials=5, storage=postgres_url, study_name="shared", attrs=ATTRS,
           progress=False)
    argv = [*WORKER, "--study", "shared", "--storage", postgres_url, "--trials", "15", "--quiet"]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        outs = [w.communicate(timeout=180) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err
        assert "worker ran 15 trials of 'shared'" in out
    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    assert len(trials) == 5 + 2 * 15
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert sorted(t.number for t in trials) == list(range(35))
    baseline = Evaluator(space, Roofline()).total_ms(Plan())
    assert trials[0].value == pytest.approx(baseline)  # the enqueued eager start
    assert min(t.value for t in trials) <= baseline


def _worker_error(study: str, storage: str) -> str:
    """Run a worker that must fail; return its stderr."""
    p = subprocess.run([*WORKER, "--study", study, "--storage", storage, "--trials", "3", "--quiet"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    return p.stderr


def test_worker_on_a_missing_study_says_so(postgres_url):
    err = _worker_error("no-such-study", postgres_url).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no study 'no-such-study'")


def test_worker_on_an_unreachable_storage_says_so():
    url = f"postgresql://feyntune@127.0.0.1:{free_port()}/feyntune"  # nothing listens there
    err = _worker_error("shared", url).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot open storage")


class Interrupted(Roofline):
    """The roofline, with a Ctrl-C (KeyboardInterrupt) on its `at`-th predict call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def predict(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().predict(*args, **kwargs)


def test_search_resumes_its_journal_after_ctrl_c(tmp_path, capture):
    space = Space(capture("bert-base", 1, 32), load_profile("a100"))
    path = str(tmp_path / "study.journal")

    def trials() -> list[optuna.trial.FrozenTrial]:
        storage = optuna.storages.JournalStorage(JournalFileBackend(path))
        return optuna.load_study(study_name="s", storage=storage).trials

    def run(cost_model: Roofline):
        # A fresh storage object each time, as a rerun of the command would open.
        storage = optuna.storages.JournalStorage(JournalFileBackend(path))
        return search(space, cost_model, trials=30, storage=storage, study_name="s", progress=False)

    with pytest.raises(KeyboardInterrupt):
        run(Interrupted(at=3))
    before = trials()
    done = {t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE}
    failed = [t.number for t in before if t.state == TrialState.FAIL]
    assert 0 < len(done) < 30 and failed  # the batch cut off is told as failed, not left RUNNING
    assert len(done) + len(failed) == len(before)

    result = run(Roofline())
    after = trials()
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == result.trials == 30
    assert [t.number for t in after if t.state == TrialState.FAIL] == failed
    assert len(complete) + len(failed) == len(after)
    assert {t.number: (t.params, t.value) for t in complete if t.number in done} == done
    assert sorted(t.number for t in after) == list(range(len(after)))
