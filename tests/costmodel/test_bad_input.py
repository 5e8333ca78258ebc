"""Bad input on the command line: one line saying what was wrong and what to do, exit status 2,
no traceback, and nothing built or allocated first."""
import json
import os
import subprocess
import sys

import pytest

CLI = {"costmodel": [sys.executable, "-m", "costmodel.cli"], "autotune": [sys.executable, "-m", "autotune.cli"]}


def run(tool, *argv):
    return subprocess.run([*CLI[tool], *argv], capture_output=True, text=True, timeout=300)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert len(lines[0]) < 500


@pytest.fixture
def configs(tmp_path):
    def write(name, doc):
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return str(path)
    return write


@pytest.mark.parametrize("argv,needle", [
    (["--model", "gpt2", "--batch", "1000000", "--seq", "32"], "tokens is over"),
    (["--model", "gpt2", "--batch", "99999999999999999999999"], "tokens is over"),
    (["--model", "gpt2", "--batch", "64", "--seq", "4096"], "elements an attention mask"),
])
def test_sizes_beyond_the_limits_are_refused_before_capture(argv, needle):
    one_line_exit_2(run("costmodel", "predict", "--target", "a100", "--cost-model", "roofline", *argv), needle)


@pytest.mark.parametrize("doc,needle", [
    ({"model_type": "bert", "hidden_size": 100, "num_attention_heads": 3}, "do not divide"),
    ({"model_type": "bert", "hidden_size": -8}, "positive whole number"),
    ({"model_type": "bert", "num_hidden_layers": 1000000}, "is over the 1,024"),
    ({"model_type": "bert", "architectures": "BertModel"}, "must be a list"),
    ({"model_type": "no_such_model_type"}, "cannot build model_type"),
    ("\xff\xfe not json", "not valid JSON"),
])
def test_bad_configs(configs, doc, needle):
    one_line_exit_2(run("costmodel", "predict", "--target", "a100", "--cost-model", "roofline",
                        "--model", configs("c.json", doc)), needle)


def test_a_folder_is_not_a_config(tmp_path):
    one_line_exit_2(run("costmodel", "predict", "--target", "a100", "--model", str(tmp_path)), "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config(configs):
    path = configs("c.json", {"model_type": "bert"})
    os.chmod(path, 0)
    one_line_exit_2(run("costmodel", "predict", "--target", "a100", "--model", path), "cannot read")


@pytest.mark.parametrize("decision,needle", [
    ({"tile": "linear", "config": {"block_m": 0, "block_n": 64, "block_k": 32}}, "positive integer"),
    ({"tile": "linear", "config": {"block_m": "big", "block_n": 64, "block_k": 32}}, "positive integer"),
    ({"tile": "linear", "config": [1, 2]}, "'config' hold"),
])
def test_bad_plans(configs, decision, needle):
    plan = configs("plan.json", {"decisions": [decision]})
    one_line_exit_2(run("costmodel", "predict", "--target", "a100", "--model", "gpt2", "--plan", plan), needle)


def test_a_plan_for_another_target_is_refused(configs, tmp_path):
    from costmodel.ir.zoo import tiny_config

    model, out = configs("tiny-bert.json", tiny_config("bert-base", 2)), tmp_path / "out"
    assert run("autotune", "--target", "a100", "--model", model, "--seq", "32", "--trials", "3",
               "--cost-model", "roofline", "--quiet", "--out", str(out)).returncode == 0
    one_line_exit_2(run("costmodel", "predict", "--model", model, "--seq", "32", "--target", "p4",
                        "--plan", str(out / "plan.json"), "--cost-model", "roofline"),
                    "tuned for a100-sxm4-80gb, not p4")


@pytest.mark.parametrize("where,needle", [("file", "is a file"), ("under", "lies under a file")])
def test_bad_out_folders_are_refused_before_the_search(tmp_path, where, needle):
    afile = tmp_path / "afile"
    afile.write_text("")
    out = afile if where == "file" else afile / "sub"
    one_line_exit_2(run("autotune", "--target", "a100", "--trials", "3", "--out", str(out)), needle)


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_time_budgets_must_be_positive(budget):
    one_line_exit_2(run("autotune", "--target", "a100", "--time-budget", budget), "positive number of seconds")


def test_a_storage_password_is_never_echoed(tmp_path):
    r = run("autotune", "--target", "a100", "--trials", "3", "--quiet", "--out", str(tmp_path),
            "--storage", "postgresql://user:s3cret@127.0.0.1:1/db")
    one_line_exit_2(r, "cannot open storage")
    assert "s3cret" not in r.stderr and "user:***@" in r.stderr


def test_a_plan_for_another_target_is_refused_before_the_capture(configs):
    model = configs("odd.json", {"model_type": "no_such_model_type"})  # capturing it would fail
    plan = configs("plan.json", {"target": "a100-sxm4-80gb", "decisions": []})
    one_line_exit_2(run("costmodel", "predict", "--model", model, "--target", "p4", "--plan", plan,
                        "--cost-model", "roofline"), "tuned for a100-sxm4-80gb, not p4")


def test_the_storage_is_opened_before_the_capture(configs, tmp_path):
    """A model that cannot be built and a storage that cannot be opened: the storage is said,
    as nothing was captured first (nobody waits through a capture to learn the URL is wrong)."""
    model = configs("odd.json", {"model_type": "no_such_model_type"})
    one_line_exit_2(run("autotune", "--target", "a100", "--model", model, "--out", str(tmp_path / "out"),
                        "--storage", "postgresql://user@127.0.0.1:1/db"), "cannot open storage")


def test_a_file_that_is_not_gguf(configs):
    fake = configs("model.gguf", "not a model")
    one_line_exit_2(run("autotune", "--target", "a100", "--prior", f"llm:gguf={fake}", "--trials", "3"),
                    "not a GGUF model file")
