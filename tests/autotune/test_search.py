import json

import pytest
import torch

from autotune.cli import main
from autotune.search import Evaluator, search
from autotune.space import Space
from costmodel.models.roofline import Roofline
from costmodel.hardware import load_profile
from costmodel.ir.plan import Plan


def test_search_never_worse_than_eager_and_is_seeded(capture):
    space = Space(capture("gpt2", 1, 64), load_profile("a100"))
    a = search(space, Roofline(), trials=30, seed=3, progress=False)
    b = search(space, Roofline(), trials=30, seed=3, progress=False)
    assert a.plan == b.plan and a.history == b.history
    assert a.best.total_ms <= a.baseline.total_ms
    assert a.history[0] == pytest.approx(a.baseline.total_ms)  # the enqueued eager start
    assert min(a.history) == pytest.approx(a.best.total_ms)


def test_evaluator_matches_the_cost_model(capture):
    space = Space(capture("scgpt", 1, 64), load_profile("h100"))
    plan = space.plan({c.key: (len(c.sites[0][1]), None) for c in space.classes})
    priced = Roofline().predict_plan(space.diagram, space.target, plan)
    assert Evaluator(space, Roofline()).total_ms(plan) == pytest.approx(priced.total_ms)
    assert Evaluator(space, Roofline()).total_ms(Plan()) == pytest.approx(
        Roofline().predict_plan(space.diagram, space.target).total_ms)


def test_autotune_writes_plan_json(tmp_path, capsys):
    assert main(["--target", "a100", "--seq", "32", "--trials", "25", "--quiet",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["model"] == "bert-base" and doc["target"] == "a100-sxm4-80gb"
    for key in ("diagram_hash", "decisions", "baseline_ms", "plan_ms", "cost_model", "seed"):
        assert key in doc
    assert doc["plan_ms"] <= doc["baseline_ms"]
    out = capsys.readouterr().out
    assert "eager baseline" in out and "tuned plan" in out and "predicted speedup" in out


@pytest.mark.parametrize("argv,code", [(["--target", "a1000"], 2), (["--target", "cpu", "--model", "x"], 2),
                                       (["--target", "a100", "--trials", "0"], 2),
                                       (["--target", "tpu-v4"], 2)])
def test_autotune_bad_input(argv, code, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_illegal_trials_are_marked_and_never_chosen(capture):
    from optuna.trial import TrialState

    from autotune.search import open_study, run_trials

    space = Space(capture("bert-base", 1, 32), load_profile("a100"))
    study = open_study("s", None, "random", seed=1)
    run_trials(study, space, Evaluator(space, Roofline()), 40, progress=False)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    illegal = [t for t in trials if "illegal" in t.user_attrs]
    assert len(trials) == 40 and illegal  # random choices often overlap a residual add twice
    for t in illegal:
        assert t.value == pytest.approx(Evaluator(space, Roofline()).total_ms(Plan()))
        assert t.system_attrs["constraints:legal"] == 1.0


def test_suggestions_run_first_and_time_budget_stops(capture):
    space = Space(capture("scgpt", 1, 32), load_profile("h100"))
    at = next(p for p in space.params if p.name.startswith("at"))
    suggestion = {at.name: at.choices[-1]}
    r = search(space, Roofline(), trials=5, progress=False, suggestions=[suggestion])
    priced = Roofline().predict_plan(space.diagram, space.target, space.plan_from(suggestion))
    starts = 1 + len(space.compile_points)  # eager, then whole-model torch.compile
    assert r.history[starts] == pytest.approx(priced.total_ms)  # right after
    compiled = Roofline().predict_plan(space.diagram, space.target, space.plan_from(space.compile_points[0]))
    assert r.history[1] == pytest.approx(compiled.total_ms) == pytest.approx(r.compiled.total_ms)
    timed = search(space, Roofline(), trials=10**6, progress=False, time_budget=0.5)
    assert 3 <= timed.trials < 10**6


def test_torch_compile_is_a_point_of_the_space_and_never_beaten_by_the_pick(capture):
    """The rest of the graph by inductor and a CUDA graph are decisions: whole-model compile is
    enqueued, inductor's kernels are priced as fusion groups, replay drops the launch cost, and
    the plan picked is never predicted slower than compile."""
    from costmodel.ir import rules
    from costmodel.ir.plan import Runtime

    space = Space(capture("gpt2", 1, 64), load_profile("a100"))
    assert space.param["rt.rest"].choices == ("eager", "inductor")
    assert space.param["rt.cuda_graph"].choices == (False, True)
    assert "rt.cuda_graph" not in Space(capture("gpt2", 1, 64), load_profile("cpu")).param
    compiled = space.plan_from({"rt.rest": "inductor"})
    assert compiled.runtime == Runtime("inductor")
    groups = rules.inductor_groups(space.diagram)
    assert {d.vertices for d in compiled.decisions if hasattr(d, "vertices")} == set(groups)
    assert len(compiled.kernels(space.diagram)) < len(Plan().kernels(space.diagram))
    replayed = space.plan_from({"rt.rest": "inductor", "rt.cuda_graph": True})
    assert replayed.launches(100) == 0 and compiled.launches(100) == 100

    class Launching(Roofline):  # a host cost per launch, as a learned composition has
        def plan_total(self, kernels_ms, launches, target=""):
            return kernels_ms + 0.01 * launches

    launching = Evaluator(space, Launching())
    assert launching.total_ms(replayed) == pytest.approx(launching.total_ms(compiled) - 0.01 * len(
        compiled.kernels(space.diagram)))
    r = search(space, Roofline(), trials=20, seed=0, progress=False)
    assert r.best.total_ms <= r.compiled.total_ms + 1e-9 and r.best.total_ms <= r.baseline.total_ms
    with pytest.raises(ValueError, match="runs no CUDA graphs"):
        Space(space.diagram, load_profile("cpu")).check(replayed)


def _tiny_gpt2(folder):
    config = folder / "tiny-gpt2.json"
    config.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                  "n_embd": 64, "n_layer": 2, "n_head": 2, "vocab_size": 100,
                                  "n_positions": 64}))
    return config


def test_autotune_measure_runs_eager_and_the_plan_here(tmp_path, capsys):
    from costmodel.data.shards import read_table

    config = _tiny_gpt2(tmp_path)
    out, data = tmp_path / "out", tmp_path / "data"
    assert main(["--target", "cpu", "--model", str(config), "--seq", "16", "--trials", "12",
                 "--cost-model", "roofline", "--measure", "--threads", "1", "--repeats", "3",
                 "--dataset", str(data), "--quiet", "--out", str(out)]) == 0
    doc = json.loads((out / "plan.json").read_text())
    m = doc["measured"]
    assert m["baseline"]["measured_ms"] > 0 and m["plan"]["measured_ms"] > 0
    assert m["max_abs_error"] < 1e-3 and m["rows_written"] > 0
    assert len(read_table("measurements", data)) == m["rows_written"]
    assert "measured speedup" in capsys.readouterr().out
    assert (out / "report.html").is_file()


def test_autotune_measure_runs_end_to_end_on_the_fake_gpu(tmp_path, capsys):
    """The --measure path of a GPU target with no GPU: the fake runner builds and runs every
    graph on meta tensors and times them with seeded roofline prices, then records the rows."""
    from costmodel.data.shards import read_table

    config = _tiny_gpt2(tmp_path)
    out, data = tmp_path / "out", tmp_path / "data"
    assert main(["--target", "a100", "--model", str(config), "--seq", "16", "--trials", "12",
                 "--cost-model", "roofline", "--measure", "fake", "--repeats", "3",
                 "--dataset", str(data), "--quiet", "--out", str(out)]) == 0
    m = json.loads((out / "plan.json").read_text())["measured"]
    assert m["runner"] == "fake" and m["hardware"] == "a100-sxm4-80gb" and m["device"] == "meta"
    assert m["baseline"]["measured_ms"] > 0 and m["plan"]["measured_ms"] > 0 and m["compiled_ms"] > 0
    rows = read_table("measurements", data)
    assert len(rows) == m["rows_written"] == 3 and set(rows["source"]) == {"fake"}
    assert "fake timings" in capsys.readouterr().out
    assert main(["--target", "cpu", "--measure", "fake", "--trials", "2", "--cost-model", "roofline",
                 "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "pretends to be a GPU" in capsys.readouterr().err


def test_autotune_measure_needs_the_target_here(tmp_path, capsys):
    args = ["--seq", "16", "--trials", "3", "--cost-model", "roofline", "--measure", "--quiet",
            "--out", str(tmp_path)]
    assert main(["--target", "a100", *args]) == 2
    err = capsys.readouterr().err
    if torch.cuda.is_available():  # a GPU here, but not an A100 (the lent machines are H100/H200)
        assert "the GPU here is" in err and "not a100-sxm4-80gb" in err
    else:
        assert "torch.cuda.is_available() is False" in err
    assert main(["--target", "tpu-v4", "--dtype", "bf16", *args]) == 2
    assert "--measure runs on cpu or a CUDA GPU, not on tpu-v4" in capsys.readouterr().err
    assert not (tmp_path / "plan.json").exists()  # refused before any search


def test_a_resumed_study_does_not_ask_the_prior_again(capture, tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    space = Space(capture("bert-base", 1, 32), load_profile("a100"))
    asked = []

    def suggest():
        asked.append(1)
        return [{space.params[0].name: space.params[0].choices[-1]}]

    for trials in (6, 12):
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
        r = search(space, Roofline(), trials=trials, progress=False, suggestions=suggest,
                   storage=storage, study_name="s")
    assert len(asked) == 1 and r.trials == 12
