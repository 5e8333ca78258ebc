"""The command line contracts: exit codes, one-line errors, the --json shape."""
import json
import subprocess
import sys

import pytest

from costmodel.cli import main
from costmodel.models.registry import DEFAULT_COST_MODEL


def run(*argv):
    """Run the console script in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "costmodel.cli", *argv], capture_output=True,
                          text=True, timeout=300)


def test_predict_json_contract(capsys):
    assert main(["predict", "--model", "bert-base", "--batch", "2", "--seq", "64",
                 "--target", "h100", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("total_ms", "target", "model", "diagram_hash", "cost_model", "subdiagrams"):
        assert key in doc
    assert doc["target"] == "h100-sxm" and doc["cost_model"] == DEFAULT_COST_MODEL == "gbdt"
    assert doc["kernels_ms"] == pytest.approx(sum(s["predicted_ms"] for s in doc["subdiagrams"]))
    assert doc["total_ms"] == pytest.approx(doc["kernels_ms"] + doc["overhead_ms"])
    assert all(s["ops"] and s["predicted_ms"] > 0 for s in doc["subdiagrams"])
    assert main(["predict", "--model", "bert-base", "--batch", "2", "--seq", "64",
                 "--target", "h100", "--json", "--cost-model", "gnn"]) == 0
    gnn = json.loads(capsys.readouterr().out)
    assert gnn["cost_model"] == "gnn" and set(gnn) == set(doc)
    assert all(s["spread"] > 0 for s in gnn["subdiagrams"])  # an ensemble's spread per kernel


def test_predict_json_says_which_composition_priced_the_total(capsys):
    fits = {}
    for target, cost_model in (("h100", "gbdt"), ("t4", "gbdt"), ("t4", "roofline")):
        assert main(["predict", "--model", "gpt2", "--seq", "64", "--target", target, "--json",
                     "--cost-model", cost_model]) == 0
        doc = json.loads(capsys.readouterr().out)
        c = doc["composition"]
        assert doc["total_ms"] == pytest.approx(c["a"] * doc["kernels_ms"] + c["b_us"] / 1e3 * doc["kernels"])
        fits[target, cost_model] = c
    # Nobody measured an H100's whole models; NeuSight measured the T4's, so it has a scale of its own.
    assert fits["h100", "gbdt"]["fit"] == "median" and fits["t4", "gbdt"]["fit"] == "own"
    assert fits["t4", "gbdt"]["b_us"] == fits["h100", "gbdt"]["b_us"]  # one launch cost for every GPU
    assert fits["t4", "roofline"] == {"a": 1.0, "b_us": 0.0, "fit": "none"}


def test_predict_prices_a_calibrated_target_with_its_calibration(capsys, tmp_path):
    """A calibration file of the shipped GBDT on the H100: its matmul kernels x exp(shift), the
    others as before, the total by its composition; a file for other weights is refused."""
    import math

    from costmodel.models.calibration import Calibration
    from costmodel.models.registry import load_cost_model

    key = load_cost_model("gbdt").key
    path = tmp_path / "h100.json"
    Calibration("h100-sxm", (), {"runner": "test"}, key, math.log(1.5), (1.1, 2e-3)).save(path)
    argv = ["predict", "--model", "gpt2", "--seq", "64", "--target", "h100", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--calibration", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["composition"] == {"a": 1.1, "b_us": 2.0, "fit": "calibrated"}
    assert doc["total_ms"] == pytest.approx(1.1 * doc["kernels_ms"] + 2e-3 * doc["kernels"])
    scaled = [s["predicted_ms"] / p["predicted_ms"] for s, p in zip(doc["subdiagrams"], plain["subdiagrams"])]
    matmul = [s["ops"] in (["matmul"], ["conv"]) for s in doc["subdiagrams"]]
    assert any(matmul) and not all(matmul)
    assert all(r == pytest.approx(1.5 if m else 1.0) for r, m in zip(scaled, matmul))
    Calibration("h100-sxm", (), {}, "gbdt-0000000000", 0.0, (1.0, 0.0)).save(path)
    assert main([*argv, "--calibration", str(path)]) == 2
    assert "fitted for cost model gbdt-0000000000" in capsys.readouterr().err


def test_attention_is_chosen_and_reported(capsys):
    totals = {}
    for attention in ("sdpa", "eager"):
        assert main(["predict", "--model", "gpt2", "--seq", "256", "--target", "a100", "--json",
                     "--cost-model", "roofline", "--attention", attention]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["attention"] == attention
        totals[attention] = doc
    assert totals["sdpa"]["diagram_hash"] != totals["eager"]["diagram_hash"]
    assert any("softmax" in s["ops"] for s in totals["eager"]["subdiagrams"])
    assert not any("softmax" in s["ops"] for s in totals["sdpa"]["subdiagrams"])
    assert main(["predict", "--model", "gpt2", "--target", "a100", "--attention", "flash"]) == 2
    assert "invalid choice: 'flash' (choose from 'sdpa', 'eager')" in capsys.readouterr().err


def test_predict_text_and_diagram(capsys):
    assert main(["predict", "--model", "scgpt", "--seq", "64", "--target", "cpu"]) == 0
    assert "ms over" in capsys.readouterr().out
    assert main(["diagram", "--model", "scgpt", "--seq", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mask_kinds"] == ["scgpt"] and doc["vertices"] and doc["propagators"]


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--model", "bert-base", "--target", "a1000"], "valid choices: a100"),
    (["predict", "--model", "bert-tiny", "--target", "a100"], "valid choices: bert-base"),
    (["predict", "--model", "bert-base", "--target", "a100", "--dtype", "fp8"], "invalid choice"),
    (["predict", "--model", "bert-base", "--target", "a100", "--batch", "0"], "at least 1"),
    (["predict", "--model", "no/such/config.json", "--target", "a100"], "does not exist"),
    (["predict", "--model", "bert-base", "--target", "t4", "--dtype", "bf16"], "fp16"),
    (["predict", "--model", "bert-base", "--target", "t4", "--calibration", "no/such.json"], "no calibration file"),
    (["calibrate", "--runner", "fake", "--out", "t4.json"], "name it with --target"),
    (["calibrate", "--runner", "cpu", "--target", "h100-sxm", "--out", "h100.json"], "is not the machine"),
    (["calibrate", "--from", "no/such.json", "--out", "t4.json"], "no calibration file"),
    (["calibrate", "--runner", "fake", "--target", "t4", "--out", "no/such/t4.json"], "no folder"),
])
def test_user_errors_exit_2_with_one_line(argv, needle):
    r = run(*argv)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_config_not_json_exits_2(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("model_type: bert")
    r = run("predict", "--model", str(bad), "--target", "a100")
    assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_plan_file_is_priced(tmp_path, capsys):
    from autotune.cli import main as autotune

    assert autotune(["--target", "a100", "--model", "bert-base", "--seq", "32", "--trials", "20",
                     "--quiet", "--out", str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    capsys.readouterr()
    assert main(["predict", "--model", "bert-base", "--seq", "32", "--target", "a100",
                 "--plan", str(tmp_path / "plan.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_ms"] == pytest.approx(plan["plan_ms"])
    # The same plan on another workload is refused plainly.
    assert main(["predict", "--model", "bert-base", "--seq", "64", "--target", "a100",
                 "--plan", str(tmp_path / "plan.json")]) == 2


def test_learning_commands_refuse_what_they_cannot_learn_from(tmp_path, capsys):
    from costmodel.models.examples import LABELS

    assert main(["eval", "--protocol", "leave-one-gpu-out", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no measurements table" in err and "datasets/releases" in err
    assert main(["train", "--model", "gnn", "--labels", "device", "--out", str(tmp_path)]) == 2
    assert "--labels is the GBDT's" in capsys.readouterr().err
    assert main(["eval", "--protocol", "leave-one-gpu-out", "--labels", "wall"]) == 2
    assert f"choose from {', '.join(repr(k) for k in LABELS)}" in capsys.readouterr().err
    for bad in ("0", "8,x", ","):  # refused before the release's kernels are read (minutes)
        assert main(["eval", "--protocol", "leave-one-gpu-out", "--methods", "roofline", "--shots", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--shots {bad!r}" in err and "'' for none" in err
