"""`autotune`: search a plan for a model on a target and write it out.

    autotune --target a100                      # bert-base, batch 1, seq 128, fp32
    autotune --target h100 --model gpt2 --batch 8 --seq 512 --dtype bf16 --trials 300 --out out/
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from costmodel.cli import ArgumentParser, add_workload_args, positive_int, run_main

DEFAULT_MODEL = "bert-base"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="autotune", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="hardware target, e.g. a100, h100, t4, cpu")
    add_workload_args(p, model_default=DEFAULT_MODEL)
    p.add_argument("--trials", type=positive_int, default=200, help="Optuna trials (default 200)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--cost-model", default="roofline", help="roofline, or a saved model file")
    p.add_argument("--out", default="out", help="directory for plan.json (default out/)")
    p.add_argument("--top", type=positive_int, default=8, help="kernels to list in the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    from autotune.search import plan_document, search
    from autotune.space import Space
    from costmodel.cost import load_cost_model
    from costmodel.hardware import load_profile
    from costmodel.zoo import capture_model

    hw = load_profile(args.target)
    cost_model = load_cost_model(args.cost_model)
    diagram = capture_model(args.model, args.batch, args.seq, args.dtype)
    hw.peak(args.dtype)  # says plainly when the target has no such dtype
    space = Space(diagram, hw)
    result = search(space, cost_model, trials=args.trials, seed=args.seed, progress=not args.quiet)
    doc = plan_document(result, model=args.model, diagram_hash=diagram.hash, batch=args.batch,
                        seq=args.seq, dtype=args.dtype, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(summary(result, diagram.name, args, len(space.classes), args.top))
    print(f"plan written to {out / 'plan.json'}")
    return 0


def summary(result, model: str, args, classes: int, top: int) -> str:
    from autotune.search import changes, top_kernels

    base, best = result.baseline, result.best
    lines = [
        f"{model} batch {args.batch} seq {args.seq} {args.dtype} on {best.target} "
        f"({best.cost_model} cost model, {result.trials} trials over {classes} matmul classes)",
        f"  eager baseline {base.total_ms:10.3f} ms  ({len(base.kernels)} kernels)",
        f"  tuned plan     {best.total_ms:10.3f} ms  ({len(best.kernels)} kernels)",
        f"  predicted speedup {result.speedup:.3f}x",
        "",
        f"  {'costliest kernels of the plan':<40} {'ms':>9}  change",
    ]
    changed = changes(result.plan)
    for k in top_kernels(best, top):
        anchor = k.subdiagram.vertices[0].name
        what = "; ".join(changed.get(anchor, [])) or "as eager"
        lines.append(f"  {k.subdiagram.name[:40]:<40} {k.ms:>9.4f}  {what}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
