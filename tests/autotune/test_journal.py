"""A study outlives the process that runs it: a torn journal is repaired, trials a killed run
left running are failed on resume, two runs never write one journal, and a study is keyed by
the weights that priced it."""
import json
import subprocess
import sys

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autotune.storage import JournalLock, open_storage, redact, repair_journal
from costmodel.errors import UserError
from costmodel.ir.zoo import tiny_config

AUTOTUNE = [sys.executable, "-m", "autotune.cli", "--target", "a100", "--cost-model", "roofline",
            "--quiet", "--seq", "32"]


def autotune(out, *argv):
    """A run on a two-layer BERT (what is tested is the journal, not the model: a tiny one
    captures, what-ifs included, in a fraction of bert-base's time)."""
    config = out.parent / "tiny-bert.json"
    if not config.exists():
        config.write_text(json.dumps(tiny_config("bert-base", 2)))
    return subprocess.run([*AUTOTUNE, "--model", str(config), "--out", str(out), *argv],
                          capture_output=True, text=True, timeout=300)


def trials(out):
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study.get_trials(deepcopy=False)


@pytest.mark.parametrize("tear", ["truncate", "append"])
def test_a_torn_last_line_is_repaired_and_the_run_resumes(tmp_path, tear):
    out = tmp_path / "out"
    assert autotune(out, "--trials", "10").returncode == 0
    journal = out / "study.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:-7] if tear == "truncate" else data + b'{"op_code": 5, "worker')
    r = autotune(out, "--trials", "20")
    assert r.returncode == 0, r.stderr
    assert "last line was torn" in r.stderr
    done = [t for t in trials(out) if t.state == TrialState.COMPLETE]
    assert len(done) == 20  # every trial before the tear kept, the rest run
    assert list(out.glob("study.journal.torn-*"))
    again = autotune(out, "--trials", "20")  # and it stays readable
    assert again.returncode == 0 and "torn" not in again.stderr


def test_damage_before_the_end_is_refused_with_what_to_do(tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_text('{"op_code": 0}\nnot json\n{"op_code": 1}\n')
    with pytest.raises(UserError, match="damaged at line 2 of 3.*move it away"):
        repair_journal(journal)
    assert repair_journal(tmp_path / "none.journal") == ""


def test_trials_a_killed_run_left_running_are_failed_on_resume(tmp_path):
    out = tmp_path / "out"
    assert autotune(out, "--trials", "8").returncode == 0
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    study.ask(), study.ask()  # as a run killed with -9 mid-batch leaves them
    assert len([t for t in trials(out) if t.state == TrialState.RUNNING]) == 2
    r = autotune(out, "--trials", "12")
    assert r.returncode == 0 and "failed 2 trials a stopped run left running" in r.stderr
    states = [t.state for t in trials(out)]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) == 12


def test_one_run_at_a_time_writes_a_journal(tmp_path):
    lock = JournalLock(tmp_path / "study.journal")
    lock.acquire()
    try:
        with pytest.raises(UserError, match="another autotune is writing"):
            open_storage(None, tmp_path)
    finally:
        lock.release()
    storage, second = open_storage(None, tmp_path)
    second.release()


def test_a_retrained_checkpoint_is_another_study(tmp_path):
    """The study name carries the checkpoint's bytes: a study priced by old weights is not
    resumed by new ones."""
    from costmodel.models import load_cost_model
    from costmodel.models.registry import default_checkpoint

    path = default_checkpoint("gbdt")
    copy = tmp_path / "same.pt"
    copy.write_bytes(path.read_bytes())
    assert load_cost_model(str(copy)).key == load_cost_model("gbdt").key
    import torch

    doc = torch.load(path, weights_only=True)
    doc["trained_on"]["note"] = "retrained"
    torch.save(doc, tmp_path / "other.pt")
    assert load_cost_model(str(tmp_path / "other.pt")).key != load_cost_model("gbdt").key
    assert load_cost_model("roofline").key == "roofline"


def test_a_plan_slower_than_eager_is_never_the_tuned_plan():
    from autotune.search import result_of
    from autotune.space import Space
    from costmodel.hardware import load_profile
    from costmodel.ir.zoo import capture_model
    from costmodel.models.roofline import Roofline

    space = Space(capture_model("bert-base", 1, 32), load_profile("a100"))
    study = optuna.create_study(direction="minimize")
    p = next(p for p in space.params if p.kind == "tile")
    worst = max(p.choices[1:], key=lambda c: Roofline().predict_plan(
        space.diagram, space.target, space.plan_from({p.name: c})).total_ms)
    study.enqueue_trial({q.name: q.labels[0] for q in space.params} | {p.name: p.label(worst)})
    t = study.ask()
    for q in space.params:
        t.suggest_categorical(q.name, q.labels)
    study.tell(t, 0.0)  # a value that lies: the plan is priced again, and it is slower
    result = result_of(study, space, Roofline())
    assert result.plan.decisions == () and result.speedup == 1.0


def test_redact():
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
