"""Where a study lives, kept whole: the default journal file, or a database URL.

- A journal whose last line was torn (the process killed mid-write) is repaired before Optuna
  reads it: the partial line is moved aside to `study.journal.torn-<time>` and every finished
  trial before it is kept. A damaged line anywhere else is refused, with what to do.
- One process at a time writes a journal (a lock file beside it); so trials a killed process
  left RUNNING in it are stale when the next run starts, and are failed then.
- A database shares a study between workers: trials carry a heartbeat, and a trial whose worker
  stopped beating is failed by the next worker that opens the study.
- A URL is never echoed with its password.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import IO

from costmodel.errors import UserError

HEARTBEAT_S = 30  # a worker's heartbeat on a shared study
GRACE_S = 120  # a trial with no heartbeat for this long is stale


def redact(url: str) -> str:
    """`url` with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def repair_journal(path: Path) -> str:
    """Make a journal file readable by Optuna: drop a torn last line (moved to a side file).
    Returns what was done ("" when the file was whole). UserError for damage before the end."""
    if not path.is_file():
        return ""
    data = path.read_bytes()
    if not data:
        return ""
    lines = data.split(b"\n")
    tail = lines[-1]  # after the last newline: b"" when the file ends whole
    complete = lines[:-1]
    for i, line in enumerate(complete):
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i < len(complete) - 1 or tail:
                raise UserError(f"study journal {path} is damaged at line {i + 1} of {len(complete)} "
                                f"(not the last, so it is not a torn write); move it away to start "
                                f"a new study, or restore it from a copy") from None
            tail = line + b"\n" + tail if tail else line
            complete = complete[:-1]
            break
    if not tail:
        return ""
    aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
    aside.write_bytes(tail)
    path.write_bytes(b"\n".join(complete) + (b"\n" if complete else b""))
    return (f"repaired {path}: its last line was torn (a write cut off); {len(tail)} bytes moved "
            f"to {aside.name}, {len(complete)} whole entries kept")


class JournalLock:
    """Held while a process writes a journal: a second one is refused instead of interleaving."""

    def __init__(self, journal: Path) -> None:
        self.path = journal.with_name(journal.name + ".run")  # Optuna's own lock is .lock
        self._file: IO | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            self._file = None
            raise UserError(f"another autotune is writing {self.path.with_suffix('')}; wait for it, "
                            "or give this run another --out") from None

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def open_storage(spec: str | None, out: Path, *, say=lambda m: print(m, file=sys.stderr)):
    """(storage, lock or None): a journal file in `out` by default (repaired, locked), else the
    database URL given (with heartbeats)."""
    import optuna

    if spec is None:
        from optuna.storages.journal import JournalFileBackend

        journal = out / "study.journal"
        lock = JournalLock(journal)
        lock.acquire()
        note = repair_journal(journal)
        if note:
            say(note)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal))), lock
    if not re.match(r"^[a-z0-9+]+://", spec):
        raise UserError(f"--storage {redact(spec)!r} is not a URL; use sqlite:///FILE or "
                        "postgresql://USER@HOST:PORT/DB (or leave it out for a journal file)")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(spec, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S), None
    except (ImportError, ValueError, SQLAlchemyError) as e:  # a missing driver, a bad URL, no server
        reason = " ".join(str(getattr(e, "orig", None) or e).split())
        raise UserError(f"cannot open storage {redact(spec)!r}: {redact(reason)}") from None


def fail_stale(study, *, locked: bool) -> int:
    """Fail the trials a stopped process left RUNNING: all of them when this process holds the
    journal's lock (nobody else can be running them), else those whose heartbeat stopped.
    Returns how many."""
    import optuna
    from optuna.trial import TrialState

    if not locked:
        before = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        optuna.storages.fail_stale_trials(study)
        return before - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)
