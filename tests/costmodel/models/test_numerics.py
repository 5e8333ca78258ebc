"""`numerics.pin`: training's CPU kernels and threads fixed before anything runs torch."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX2 = X86 and Path("/proc/cpuinfo").is_file() and " avx2" in Path("/proc/cpuinfo").read_text()
pytestmark = pytest.mark.skipif(not AVX2, reason="the pin is to x86-64's AVX2 kernels")


def _run(code: str, **env: str) -> tuple[dict, str]:
    """`code` in a fresh interpreter (no pinning variables but `env`); its last stdout line as JSON."""
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, "HF_HUB_OFFLINE": "1", **env},
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


REPORT = ("import json, os, torch, torch_geometric; print(json.dumps({'pinned': pinned, "
          "'kernels': torch.backends.cpu.get_cpu_capability(), 'threads': torch.get_num_threads(), "
          "'mkl': os.environ.get('MKL_CBWR')}))")


def test_pin_before_torch_runs_fixes_avx2_and_two_threads():
    out, _ = _run("from costmodel.models import numerics; pinned = numerics.pin(); " + REPORT)
    assert out == {"pinned": True, "kernels": "AVX2", "threads": 2, "mkl": "AVX2"}


def test_kernels_the_environment_names_are_kept():
    out, _ = _run("from costmodel.models import numerics; pinned = numerics.pin(); " + REPORT,
                  ATEN_CPU_CAPABILITY="default", MKL_CBWR="COMPATIBLE")
    assert out == {"pinned": True, "kernels": "DEFAULT", "threads": 2, "mkl": "COMPATIBLE"}


def test_a_pin_after_torch_ran_says_so():
    native, _ = _run("import torch; pinned = None; " + REPORT)
    if native["kernels"] == "AVX2":
        pytest.skip("this CPU's own kernels are the pinned ones")
    out, _ = _run("import torch_geometric; from costmodel.models import numerics; pinned = numerics.pin(); "
                  + REPORT)
    assert out["pinned"] is False and out["kernels"] == native["kernels"]
    note, _ = _run("import json, torch_geometric; from costmodel.models import numerics; numerics.pin(); "
                   "print(json.dumps(numerics.unpinned()))")
    assert f"torch ran on x86_64, torch {native['kernels']}" in note and "may differ from other machines'" in note


def test_costmodel_train_and_eval_pin_before_their_imports():
    out, _ = _run("from costmodel.cli import main; "
                  "assert main(['eval', '--protocol', 'leave-one-gpu-out', '--data', 'no-such-release']) == 2; "
                  "pinned = None; " + REPORT)
    assert (out["kernels"], out["threads"], out["mkl"]) == ("AVX2", 2, "AVX2")
