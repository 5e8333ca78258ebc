"""The autotuner benchmark: wall time, predicted speedup, search efficiency, measured speedup.

    python benchmarks/tuning.py [--trials 500] [--models bert-base,gpt2,scgpt]
                                  [--targets a100,h100,cpu] [--llm smollm2] [--no-measure]

For each model (batch 1, seq 128, fp32) and target:
- `autotune` as a user runs it (a cold child process, default prior and cost model, --trials):
  wall time and predicted speedup;
- search efficiency, in this process with the same cost model: the trials each method needs to
  come within 1% of the best plan any method found, for random search, the model-guided TPE
  search without priors, and TPE with the heuristic and the llm priors (one seed each);
and on `cpu`, with --measure, the plan's measured speedup over eager and over whole-model
torch.compile (medians, see autotune/verify.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.models.registry import DEFAULT_COST_MODEL  # noqa: E402

METHODS = (("random", "random", "none"), ("tpe", "tpe", "none"), ("tpe+heuristic", "tpe", "heuristic"))


def cold_autotune(model: str, target: str, trials: int, measure: bool, cost_model: str
                  ) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        argv = ["--target", target, "--model", model, "--trials", str(trials), "--quiet",
                "--out", out, "--cost-model", cost_model, *(["--measure"] if measure else [])]
        cmd = [sys.executable, "-c",
               "import sys; from autotune.cli import main; sys.exit(main(sys.argv[1:]))", *argv]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"autotune {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
        return seconds, json.loads((Path(out) / "plan.json").read_text())


def trials_to_within(history: list[float], best: float, tolerance: float = 0.01) -> int | None:
    """1-based index of the first trial whose best-so-far is within `tolerance` of `best`."""
    low = float("inf")
    for i, value in enumerate(history, 1):
        low = min(low, value)
        if low <= best * (1 + tolerance):
            return i
    return None


def efficiency(model: str, target: str, trials: int, llm: str | None,
               cost_model_spec: str) -> dict[str, tuple[int | None, float]]:
    """Per method: (trials to within 1% of the best plan any method found, its own best
    predicted speedup over eager)."""
    from autotune.priors import load_prior
    from autotune.search import search
    from autotune.space import Space
    from costmodel.models.registry import load_cost_model
    from costmodel.hardware import load_profile
    from costmodel.ir.zoo import capture_model

    space = Space(capture_model(model, 1, 128, "fp32"), load_profile(target))
    cost_model = load_cost_model(cost_model_spec)
    methods = [*METHODS, *([(f"tpe+llm:{llm}", "tpe", f"llm:{llm}")] if llm else [])]
    histories = {}
    for name, sampler, prior_spec in methods:
        prior = load_prior(prior_spec)
        # SmolLM2 takes about 15 s per suggestion on 2 cores: two is enough to see it help or not.
        n = 2 if prior_spec.startswith("llm") else 8
        result = search(space, cost_model, trials=trials, seed=0, progress=False, sampler=sampler,
                        suggestions=prior.suggest(space, n))
        histories[name] = list(result.history)
    best = min(min(h) for h in histories.values())
    return {name: (trials_to_within(h, best), h[0] / min(h)) for name, h in histories.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--models", default="bert-base,gpt2,scgpt")
    parser.add_argument("--targets", default="a100,h100,cpu")
    parser.add_argument("--llm", default="smollm2", help="llm prior provider ('' to skip)")
    parser.add_argument("--no-measure", action="store_true", help="skip --measure on cpu")
    parser.add_argument("--cost-model", default=DEFAULT_COST_MODEL,
                        help=f"a name or a checkpoint file (default {DEFAULT_COST_MODEL})")
    args = parser.parse_args()
    methods = [m[0] for m in METHODS] + ([f"tpe+llm:{args.llm}"] if args.llm else [])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"batch 1, seq 128, fp32, {args.trials} trials, cost model {args.cost_model}, one run per cell")
    width = {m: max(len(m), 11) for m in methods}
    head = f"{'model':<10} {'target':<6} {'wall s':>7} {'pred x':>7} " + \
        " ".join(f"{m:>{width[m]}}" for m in methods) + f" {'meas x eager':>12} {'x compile':>9}"
    print("per method: trials to within 1% of the best plan any method found ('-': not in "
          "the budget), and (its best predicted speedup)")
    print(head)
    for model in args.models.split(","):
        for target in args.targets.split(","):
            measure = target == "cpu" and not args.no_measure
            seconds, doc = cold_autotune(model, target, args.trials, measure, args.cost_model)
            eff = efficiency(model, target, args.trials, args.llm or None, args.cost_model)
            cells = " ".join(f"{f'{eff[m][0] or chr(45)} ({eff[m][1]:.3f}x)':>{width[m]}}"
                             for m in methods)
            meas = doc.get("measured")
            extra = (f" {meas['baseline']['measured_ms'] / meas['plan']['measured_ms']:>12.3f}"
                     f" {meas['compiled_ms'] / meas['plan']['measured_ms']:>9.3f}") if meas else \
                f" {'':>12} {'':>9}"
            print(f"{model:<10} {target:<6} {seconds:>7.1f} {doc['predicted_speedup']:>7.3f} "
                  f"{cells}{extra}", flush=True)


if __name__ == "__main__":
    main()
