import json

import pytest

from autotune.cli import main
from autotune.search import Evaluator, search
from autotune.space import Space
from costmodel.cost import Roofline
from costmodel.hardware import load_profile
from costmodel.plan import Plan


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
