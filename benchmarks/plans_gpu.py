"""Our plans against what users get for free, on the GPU here: one table.

    python benchmarks/plans_gpu.py [--models bert-base,gpt2,scgpt] [--dtypes fp16,bf16]
                                   [--ways eager,sdpa,flex,compile,max-autotune,ours]
                                   [--trials 300] [--repeats 20] [--out reports/plans-gpu.md]
    python benchmarks/plans_gpu.py --dry-run    # here, no GPU: every path on tiny models

Rows: bert-base, gpt2 and scgpt at two sizes each (`SIZES`; scgpt's second at 1200 genes with
75% of them queries, the mask our attention kernel skips most of), in fp16 and bf16, and fp32 for
the sizes of NeuSight's workloads (`FP32_SIZES`). Ways, each on its own freshly built model with
the same seeded weights and inputs:
- eager: Hugging Face's eager attention (matmul, softmax, matmul), op by op;
- sdpa: `scaled_dot_product_attention` (the library's flash or memory-efficient kernel);
- flex: FlexAttention (`torch.nn.attention.flex_attention`) with the model's mask as a block
  mask, compiled (how FlexAttention runs); for causal and scgpt masks only;
- compile: `torch.compile` of the sdpa model, default mode, its compile time beside it;
- max-autotune: `torch.compile(mode="max-autotune")`, its compile time beside it;
- ours: `autotune`'s search for this GPU (the default cost model, `--trials`), its tuning time,
  then the plan run by the executor (`autotune.executor`: our Triton kernels, the rest of the
  graph and the CUDA graph as the plan says), its compile time, and the prediction beside.
Every way's outputs are checked against eager within the rule book's tolerance before timing.
Times: median of `--repeats` interleaved calls after warm-up (`Runner.time`).

`--dry-run` runs every path here on tiny versions of the three models: on the CPU, our kernels
through Triton's interpreter (set before Triton loads), tuned for the H100's profile, and the
plan also through the fake runner (`costmodel.measure.fake`). Its times mean nothing; it proves
the script runs before a GPU is lent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

if "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

from costmodel.ir.zoo import tiny_config  # noqa: E402
from costmodel.models.registry import DEFAULT_COST_MODEL  # noqa: E402

WAYS = ("eager", "sdpa", "flex", "compile", "max-autotune", "ours")
SIZES = {"bert-base": ((8, 128), (8, 512)), "gpt2": ((8, 256), (8, 1024)),
         "scgpt": ((8, 512), (4, 1200))}
FP32_SIZES = {"bert-base": ((8, 512),), "gpt2": ((8, 1024),)}  # NeuSight's workloads' sizes
SCGPT_QUERIES = {1200: 0.75}  # query fraction by sequence (default scGPT's 0.25)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def model_file(folder: Path, model: str, seq: int, dry: bool) -> str:
    """The model as `zoo.build` takes it: the zoo name, or a config.json (tiny for a dry run;
    scGPT with the query fraction of `SCGPT_QUERIES`)."""
    config = tiny_config(model) if dry else ({"model_type": "scgpt"} if model == "scgpt" else None)
    if model == "scgpt" and seq in SCGPT_QUERIES:
        config["query_fraction"] = SCGPT_QUERIES[seq]
    if config is None or config == {"model_type": "scgpt"}:
        return model
    path = folder / f"{model}-{seq}{'-tiny' if dry else ''}.json"
    path.write_text(json.dumps(config))
    return str(path)


def tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


class FlexAttention:
    """While entered, every scaled_dot_product_attention call is answered by FlexAttention with
    `mask` as a block mask (the model's mask, known from its capture: causal, or scGPT's
    `context` keys and the diagonal). Entered around each call only, so the other ways keep
    the library's kernel; the function swapped in is one object, so a compiled model's guard
    on it holds from call to call."""

    def __init__(self, mask: str, context: int, seq: int, device: torch.device) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def causal(b, h, q, k):
            return q >= k

        def scgpt(b, h, q, k):
            return (k < context) | (q == k)

        block = create_block_mask({"causal": causal, "scgpt": scgpt}[mask], None, None, seq, seq,
                                  device=device)

        def flex(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            return flex_attention(q, k, v, block_mask=block, scale=scale, enable_gqa=enable_gqa)

        self.flex, self.real = flex, None

    def __enter__(self) -> None:
        self.real = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = self.flex

    def __exit__(self, *exc) -> None:
        torch.nn.functional.scaled_dot_product_attention = self.real


def first_call(fn: Callable, runner) -> tuple[object, float]:
    """The first call's result and its seconds (a compile included)."""
    start = time.perf_counter()
    out = fn()
    runner.sync()
    return out, time.perf_counter() - start


def bench_row(model: str, path: str, batch: int, seq: int, dtype: str, ways: list[str], *,
              runner, target: str, cost_model: str, trials: int, repeats: int, warmup: int,
              dry: bool) -> dict:
    from autotune.executor import executor, flat_inputs, lower_plan
    from autotune.search import search
    from autotune.space import Space
    from costmodel.hardware import load_profile
    from costmodel.ir.zoo import build, export_model
    from costmodel.measure.runner import output_error
    from costmodel.models.registry import load_cost_model

    device = runner.device
    row: dict = {"model": model, "batch": batch, "seq": seq, "dtype": dtype, "ms": {}, "compile_s": {},
                 "max_abs_error": {}, "skipped": {}}

    def built(attention: str):
        return build(path, batch, seq, dtype, attention=attention, device=device, seed=0)

    exported, diagram = export_model(path, batch, seq, dtype)
    attention = next((v for v in diagram.vertices if v.kind == "attention"), None)
    mask = attention.mask_kind if attention is not None else "none"
    row["mask"] = mask
    eager = built("eager")
    fns: dict[str, Callable] = {}
    with torch.no_grad(), runner.numerics(dtype):
        reference = tensors(eager.module(*eager.args, **eager.kwargs))

        def check(way: str, fn: Callable, out=None) -> None:
            out = fn() if out is None else out
            err, allowed, reason = output_error(tensors(out), reference, dtype)
            row["max_abs_error"][way] = err
            if reason or err > allowed:
                raise SystemExit(f"{model} {batch}x{seq} {dtype}: {way} differs from eager "
                                 f"({reason or f'max abs error {err:.3g} > {allowed:.3g}'})")
            fns[way] = fn

        for way in ways:
            _say(f"{model} {batch}x{seq} {dtype}: {way}")
            if way == "eager":
                check(way, lambda b=eager: b.module(*b.args, **b.kwargs))
            elif way == "sdpa":
                b = built("sdpa")
                check(way, lambda b=b: b.module(*b.args, **b.kwargs))
            elif way == "flex":
                if mask not in ("causal", "scgpt"):
                    row["skipped"][way] = f"a {mask} mask"
                    continue
                b = built("sdpa")
                flex = FlexAttention(mask, b.meta.get("known_genes", 0) + 1, seq, device)
                compiled = torch.compile(b.module)

                def fn(c=compiled, b=b, flex=flex):
                    with flex:
                        return c(*b.args, **b.kwargs)

                out, row["compile_s"][way] = first_call(fn, runner)
                check(way, fn, out)
            elif way in ("compile", "max-autotune"):
                b = built("sdpa")
                compiled = torch.compile(b.module, **({"mode": "max-autotune"} if way == "max-autotune" else {}))
                fn = (lambda c=compiled, b=b: c(*b.args, **b.kwargs))
                out, row["compile_s"][way] = first_call(fn, runner)
                check(way, fn, out)
            elif way == "ours":
                space = Space(diagram, load_profile(target))
                start = time.perf_counter()
                result = search(space, load_cost_model(cost_model), trials=trials, seed=0,
                                progress=False, study_name=f"plans-gpu-{model}-{seq}-{dtype}")
                row["tune_s"] = time.perf_counter() - start
                row["predicted_ms"] = {"eager": result.baseline.total_ms, "ours": result.best.total_ms,
                                       "compile": result.compiled.total_ms if result.compiled else None}
                row["plan"] = result.plan.to_list()
                b = built("sdpa")
                inputs = flat_inputs(exported, b.module, b.args, b.kwargs)
                users = [k for k, s in enumerate(exported.graph_signature.output_specs)
                         if s.kind.name == "USER_OUTPUT"]
                exe = lower_plan(exported.graph_module, diagram, result.plan, device=device,
                                 triton=True, tf32=dtype == "tf32")
                row["applied"] = exe.applied.to_dict()
                start = time.perf_counter()
                planned = executor(exe, inputs, cuda_graph=exe.cuda_graph and device.type == "cuda")
                row["cuda_graph"] = exe.cuda_graph  # a dry run on the CPU replays none
                out = planned(*inputs)
                runner.sync()
                row["compile_s"][way] = time.perf_counter() - start
                check(way, lambda p=planned, i=inputs: [p(*i)[k] for k in users], [out[k] for k in users])
                if dry:  # the same plan through the fake runner: its path, priced
                    from autotune.verify import verify_plan
                    from costmodel.measure.fake import FakeRunner

                    v = verify_plan(path, batch, seq, dtype, result.plan, repeats=3,
                                    runner=FakeRunner(hardware=space.target.name), progress=False)
                    row["fake_ms"] = {"eager": v.eager_ms, "ours": v.plan_ms, "compile": v.compiled_ms}
        _say(f"{model} {batch}x{seq} {dtype}: timing {', '.join(fns)}")
        samples = runner.time({k: (lambda f=f: f()) for k, f in fns.items()}, [[]], repeats=repeats,
                              warmup=warmup)
    row["ms"] = {k: statistics.median(v) for k, v in samples.items()}
    return row


def _ms(row: dict, way: str) -> str:
    if way in row["skipped"]:
        return "n/a"
    ms = row["ms"].get(way)
    if ms is None:
        return ""
    extra = f" ({row['compile_s'][way]:.0f} s)" if way in ("compile", "max-autotune") else ""
    return f"{ms:.3f}{extra}"


def table(rows: list[dict], ways: list[str]) -> str:
    head = ["model", "batch x seq", "dtype", "mask", *ways, "ours: tune + compile s",
            "ours / max-autotune", "ours predicted (error)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours, best = r["ms"].get("ours"), r["ms"].get("max-autotune")
        ratio = f"{best / ours:.2f}x" if ours and best else ""
        predicted = r.get("predicted_ms", {}).get("ours")
        pred = f"{predicted:.3f} ({100 * (predicted - ours) / ours:+.1f}%)" if predicted and ours else ""
        tune = f"{r['tune_s']:.0f} + {r['compile_s']['ours']:.0f}" if "tune_s" in r else ""
        lines.append("| " + " | ".join([r["model"], f"{r['batch']} x {r['seq']}", r["dtype"], r["mask"],
                                         *[_ms(r, w) for w in ways], tune, ratio, pred]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(SIZES))
    p.add_argument("--dtypes", default="fp16,bf16", help="comma-separated; fp32 adds NeuSight's sizes")
    p.add_argument("--sizes", default=None, help="BATCHxSEQ,... instead of each model's two")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--trials", type=int, default=300, help="our search's trials (default 300)")
    p.add_argument("--cost-model", default=DEFAULT_COST_MODEL, help="the cost model our search uses")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="write the table (markdown) and the rows (.json) here")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny models on this CPU, our kernels through Triton's interpreter")
    args = p.parse_args(argv)
    from costmodel.measure import runner as resolve_runner

    ways = [w for w in args.ways.split(",") if w]
    unknown = set(ways) - set(WAYS)
    if unknown:
        p.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    if args.dry_run:
        runner, target = resolve_runner("cpu"), "h100"
        dtypes = ["fp32", "fp16"] if args.dtypes == "fp16,bf16" else args.dtypes.split(",")
        trials, repeats, warmup = min(args.trials, 20), 1, 0
    else:
        runner = resolve_runner("cuda")  # says plainly when there is no GPU
        target, dtypes = runner.hardware, args.dtypes.split(",")
        trials, repeats, warmup = args.trials, args.repeats, args.warmup
    rows = []
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            for dtype in dtypes:
                sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")] if args.sizes \
                    else (FP32_SIZES.get(model, ()) if dtype == "fp32" and not args.dry_run else SIZES[model])
                for i, (batch, seq) in enumerate(sizes):
                    path = model_file(Path(folder), model, seq, args.dry_run)
                    if args.dry_run:
                        batch, seq = 2, (32, 48)[i % 2]
                    rows.append(bench_row(model, path, batch, seq, dtype, ways, runner=runner,
                                          target=target, cost_model=args.cost_model, trials=trials,
                                          repeats=repeats, warmup=warmup, dry=args.dry_run))
    where = f"{runner.hardware}" + (" (dry run: tiny models, Triton's interpreter)" if args.dry_run else "")
    text = (f"# Plans against torch.compile on {where}\n\n"
            f"`python benchmarks/plans_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
            f"{started:%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {platform.python_version()}; "
            f"ms: median of {repeats} interleaved calls after {warmup} warm-up; compile and tune "
            f"times in seconds.\n\n{table(rows, ways)}\n")
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(
            {"hardware": runner.hardware, "dry_run": args.dry_run, "torch": torch.__version__,
             "started": started.isoformat(), "rows": rows}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
