"""Wall time and peak memory of `costmodel predict` and `autotune` from a cold process.

    python benchmarks/predict.py [--repeats 3]

Each row runs the real command line in a fresh subprocess (imports, capture on meta tensors,
pricing) and reports the median wall time over the repeats and the peak resident memory of the
child (ru_maxrss). The first row, a process that only imports torch, is the floor every command
stands on: compare runs of other days by their ratio to it (these machines are shared, and a
slow day moves every row). Targets from issue 2: bert-large 8x512 on h100 in under 10 s and well under
1.5 GB; `autotune --target a100` on bert-base in well under a minute.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [
    ("import torch (the floor)", ["python", "-c", "import torch"]),
    ("predict bert-large 8x512 h100", ["costmodel", "predict", "--model", "bert-large", "--batch", "8",
                                       "--seq", "512", "--target", "h100", "--json"]),
    ("predict gpt2-large 4x1024 a100", ["costmodel", "predict", "--model", "gpt2-large", "--batch", "4",
                                        "--seq", "1024", "--target", "a100", "--json"]),
    ("predict opt-1.3b 2x2048 a100", ["costmodel", "predict", "--model", "opt-1.3b", "--batch", "2",
                                      "--seq", "2048", "--target", "a100", "--json"]),
    ("predict scgpt 8x1200 h100", ["costmodel", "predict", "--model", "scgpt", "--batch", "8",
                                   "--seq", "1200", "--target", "h100", "--json"]),
    ("autotune bert-base a100 (defaults)", ["autotune", "--target", "a100", "--quiet", "--out", "out/bench"]),
]


def run(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MB) of one run of a console script in its own child process."""
    if argv[0] == "python":
        cmd = [sys.executable, *argv[1:]]
    else:
        module = {"costmodel": "costmodel.cli", "autotune": "autotune.cli"}[argv[0]]
        cmd = [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))",
               *argv[1:]]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode()}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"median of {args.repeats} cold runs")
    print(f"{'case':<38} {'median s':>9} {'min s':>7} {'peak MB':>8} {'x floor':>8}")
    floor = None
    for name, argv in CASES:
        times, peaks = [], []
        for _ in range(args.repeats):
            seconds, peak = run(argv)
            times.append(seconds)
            peaks.append(peak)
        median = statistics.median(times)
        floor = floor or median
        print(f"{name:<38} {median:>9.2f} {min(times):>7.2f} {max(peaks):>8.0f} {median / floor:>8.2f}")


if __name__ == "__main__":
    main()
