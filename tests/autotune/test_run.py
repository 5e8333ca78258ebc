"""`autotune run --plan`: a plan.json run with its decisions applied where its target is (this
CPU, or a fake GPU of the target), and refused in one line when it does not match the model,
the target or the dtype it was tuned for."""
import json
import re

import pytest

from autotune.cli import main
from costmodel.ir.zoo import tiny_config

TINY_GPT2 = tiny_config("gpt2", 2)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny GPT-2 tuned for the A100 and for this CPU (roofline prices: quick)."""
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny-gpt2.json"
    config.write_text(json.dumps(TINY_GPT2))
    plans = {}
    for target in ("a100", "cpu"):
        out = folder / target
        assert main(["--target", target, "--model", str(config), "--seq", "16", "--trials", "30",
                     "--cost-model", "roofline", "--quiet", "--out", str(out)]) == 0
        plans[target] = out / "plan.json"
    return config, plans


def test_a_gpu_plan_runs_on_the_fake_gpu(tuned, capsys):
    config, plans = tuned
    capsys.readouterr()
    assert main(["run", "--plan", str(plans["a100"]), "--measure", "fake", "--repeats", "3", "--json",
                 "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runner"] == "fake" and doc["hardware"] == "a100-sxm4-80gb"
    assert doc["plan"]["measured_ms"] > 0 and doc["compiled_ms"] > 0
    decisions = json.loads(plans["a100"].read_text())["decisions"]
    tiles = sum("tile" in d for d in decisions)
    assert doc["applied"]["tiles_applied"] == tiles and doc["applied"]["tiles_ignored"] == 0


def test_a_cpu_plan_runs_here(tuned, capsys):
    config, plans = tuned
    capsys.readouterr()
    assert main(["run", "--plan", str(plans["cpu"]), "--repeats", "3", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "outputs match eager" in out and "measured speedup" in out
    assert "0 not" in out  # every decision the CPU space offers is applied


@pytest.mark.parametrize("extra,says", [
    (["--dtype", "fp16"], "was tuned for fp32, not fp16"),
    (["--target", "h100"], "was tuned for a100-sxm4-80gb, not h100"),
    (["--model", "gpt2"], "was tuned for another graph"),
    (["--measure", "here"], "cuda.is_available|not a100"),
])
def test_a_plan_that_does_not_match_is_refused_in_one_line(tuned, capsys, extra, says):
    _, plans = tuned
    capsys.readouterr()
    assert main(["run", "--plan", str(plans["a100"]), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err


def test_bad_plan_files_are_refused(tmp_path, capsys):
    broken = tmp_path / "plan.json"
    broken.write_text("{not json")
    assert main(["run", "--plan", str(broken)]) == 2
    assert "is not a valid plan" in capsys.readouterr().err
    broken.write_text(json.dumps({"decisions": []}))
    assert main(["run", "--plan", str(broken)]) == 2
    assert "lacks model, batch" in capsys.readouterr().err
    assert main(["run", "--plan", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
