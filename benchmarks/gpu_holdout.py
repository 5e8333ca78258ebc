"""How close are the cost model's predictions on a GPU it never trained on?

NeuSight's whole-model workloads (BERT-large, GPT-2-large and OPT-1.3B inference, fp32), and a few
of the zoo's own, timed on the GPU here and compared with what the shipped GNN and the roofline
predict for that GPU. The shipped checkpoint trained on release 0.1: A100, V100, T4, P4, P100 and
this host's CPU, so an H100 or H200 is hardware it never saw.

    python benchmarks/gpu_holdout.py measure --out DIR     # on the GPU: whole models into DIR
    python benchmarks/gpu_holdout.py report [DATA] [--hardware h100-sxm]   # anywhere: the tables

`measure` writes "model"-scope rows of source "cuda" into the dataset folder DIR (the way
`costmodel measure` writes kernel rows), one per workload:
- the model is built from its config with random weights (seeded) directly on the GPU
  (`autotune.executor.build_model`);
- the Hugging Face forward runs (sdpa attention, no KV cache) under `torch.no_grad()`, fp32 with
  TF32 off;
- `--warmup` calls, then the median of `--repeats` calls, each timed by the runner's timer
  (`Runner.time`: CUDA events on a GPU, a synchronisation after each call).

The rows' config says `"forward": "module"`, apart from `autotune --measure`'s eager rows (the
exported graph op by op); the key names the workload. A model this torch cannot capture is
still timed: its row has no diagram and says why in `extra_json`.

`report` reads the rows of one GPU back from DATA (default datasets/data) and prints two tables.
- Whole models: each workload as `CostModel.predict_model` prices it on the GPU's profile.
- Kernels: the kernel rows by class (library, inductor, sdpa), scored for each cost model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from costmodel.data.shards import ShardWriter, read_table

# NeuSight's whole-model label workloads (model, batch, seq) under the zoo's names, and the zoo's
# own smaller models.
NEUSIGHT = (("bert-large", 8, 512), ("bert-large", 16, 512), ("gpt2-large", 4, 1024),
            ("gpt2-large", 8, 1024), ("opt-1.3b", 2, 2048), ("opt-1.3b", 8, 2048))
ZOO = (("bert-base", 8, 128), ("bert-base", 8, 512), ("gpt2", 8, 1024), ("scgpt", 8, 512))
WORKLOADS = NEUSIGHT + ZOO


def measure(root: Path, workloads, *, device: str, warmup: int, repeats: int) -> int:
    from autotune.executor import build_model
    from costmodel.measure import Result, runner
    from costmodel.measure.collect import add_context_rows
    from costmodel.ir.zoo import export_model

    be = runner(device)
    failed = 0
    print(f"{'workload':<26} {'median ms':>10} {'min':>9} {'max':>9}", flush=True)
    for model, batch, seq in workloads:
        workload = f"{model}-inf-{seq}-{batch}"
        try:  # the diagram the row refers to; a capture this torch cannot make leaves it out
            _, diagram = export_model(model, batch, seq, "fp32")
            capture_error = None
        except Exception as e:  # noqa: BLE001
            diagram, capture_error = None, f"{type(e).__name__}: {str(e)[:300]}"
        module = args = None
        try:
            module, args, kwargs = build_model(model, batch, seq, "fp32", device=be.device)
            with torch.no_grad(), be.numerics("fp32"):
                samples = be.time({"forward": lambda: module(*args, **kwargs)}, [()],
                                  warmup=warmup, repeats=repeats)["forward"]
            result = Result.of(samples)
        except Exception as e:  # noqa: BLE001 - an out-of-memory workload is recorded, not fatal
            result, failed = Result.failure(f"{type(e).__name__}: {str(e)[:300]}"), failed + 1
        finally:
            module = args = None
            if be.device.type == "cuda":
                torch.cuda.empty_cache()
        with ShardWriter(root, source=be.source) as writer:
            add_context_rows(writer, be, diagram, root)
            writer.add("measurements", be.row(
                result, scope="model", diagram_hash=diagram.hash if diagram else None,
                kernel_config={"plan": "eager", "compiler": "eager", "forward": "module"},
                kernel_name="eager:model", key={**be.key(), "workload": workload},
                extra={"model": model, "batch": batch, "seq": seq, "dtype": "fp32",
                       "workload": workload, "plan": "eager", "warmup": warmup,
                       "forward": "huggingface" if model != "scgpt" else "zoo",
                       "attention": "sdpa", "tf32": False,
                       **({"capture_error": capture_error} if capture_error else {})}))
        if result.error:
            print(f"{workload:<26} failed: {result.error}", flush=True)
        else:
            print(f"{workload:<26} {result.runtime_ms:>10.2f} {result.min_ms:>9.2f} "
                  f"{result.max_ms:>9.2f}", flush=True)
    return failed


def _pct(errors: list[float]) -> str:
    return f"{100 * statistics.fmean(errors):.1f}%" if errors else "n/a"


def holdout_workloads(root: Path, hardware: str) -> list[dict]:
    """This benchmark's whole-model rows of `hardware`: workload, group ("neusight" or "zoo"),
    model, batch, seq, dtype, attention and measured ms, fastest first."""
    m = read_table("measurements", root)
    m = m[(m["scope"] == "model") & (m["hardware"] == hardware) & m["runtime_ms"].notna()]
    configs = m["kernel_config_json"].map(json.loads)
    m = m[configs.map(lambda c: c.get("forward") == "module")]  # this benchmark's rows only
    out = []
    for r in m.sort_values("runtime_ms").itertuples():
        e = json.loads(r.extra_json)
        out.append({"workload": e["workload"], "model": e["model"], "batch": e["batch"],
                    "seq": e["seq"], "dtype": e["dtype"], "attention": e.get("attention", "sdpa"),
                    "group": "neusight" if (e["model"], e["batch"], e["seq"]) in NEUSIGHT else "zoo",
                    "measured_ms": r.runtime_ms})
    return out


def whole_model_predictions(workloads: list[dict], hardware: str, cost_model) -> list[float]:
    """Each workload as `CostModel.predict_model` prices it on `hardware`, in ms."""
    return [cost_model.predict_model(w["model"], w["batch"], w["seq"], hardware, w["dtype"],
                                     attention=w["attention"]).total_ms for w in workloads]


def whole_models(root: Path, hardware: str, cost_models: dict) -> str:
    """Each workload's measured median next to each cost model's prediction for `hardware`."""
    workloads = holdout_workloads(root, hardware)
    predicted = {n: whole_model_predictions(workloads, hardware, cm) for n, cm in cost_models.items()}
    head = ["workload", "measured ms"] + [f"{n} ms (error)" for n in cost_models]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    errors: dict[str, dict[str, list[float]]] = {n: {"neusight": [], "zoo": []} for n in cost_models}
    for i, w in enumerate(workloads):
        cells = [w["workload"] + (" (NeuSight)" if w["group"] == "neusight" else ""),
                 f"{w['measured_ms']:.2f}"]
        for name in cost_models:
            p = predicted[name][i]
            err = (p - w["measured_ms"]) / w["measured_ms"]
            errors[name][w["group"]].append(abs(err))
            cells.append(f"{p:.2f} ({100 * err:+.1f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    for group, label in (("neusight", "MAPE, NeuSight's workloads"), ("zoo", "MAPE, the zoo's")):
        lines.append(f"| {label} | | " + " | ".join(_pct(errors[n][group]) for n in cost_models) + " |")
    return "\n".join(lines)


def kernel_kind(config: dict, sub) -> str:
    """A measured kernel's class: the op and how it ran (library, Triton tiles, inductor, sdpa)."""
    compute = [v for v in sub.vertices if not v.is_free]
    if config.get("compiler") == "triton":
        return "matmul, Triton tiles"
    if config.get("fused"):
        return "fused group, inductor"
    if config.get("compiler") == "inductor":
        return f"{compute[0].kind}, inductor"
    if "sdpa_backend" in config:
        return "attention, sdpa " + config["sdpa_backend"] + (" implicit mask" if config.get("mask") else "")
    return f"{compute[0].kind}, library"


def holdout_kernels(root: Path, hardware: str) -> list[tuple]:
    """This GPU's kernel rows as (subdiagram, kernel config, its class, measured ms); rows that
    time several kernels back to back are left out."""
    from costmodel.data.loader import back_to_back
    from costmodel.ir.diagram import Subdiagram
    from costmodel.ir.plan import KernelConfig

    m = read_table("measurements", root)
    m = m[(m["scope"] == "kernel") & (m["hardware"] == hardware) & m["runtime_ms"].notna()]
    subs = read_table("subdiagrams", root, columns=["subdiagram_hash", "subdiagram_json"])
    records = dict(zip(subs["subdiagram_hash"], subs["subdiagram_json"]))
    rows = []
    for r in m.itertuples():
        sub = Subdiagram.from_record(json.loads(records[r.subdiagram_hash]))
        if back_to_back(r.kernel_config_json, sub):
            continue
        rows.append((sub, KernelConfig.from_record(r.kernel_config_json),
                     kernel_kind(json.loads(r.kernel_config_json), sub), r.runtime_ms))
    return rows


def kernels(root: Path, hardware: str, cost_models: dict) -> str:
    """Kernel-level error on `hardware`'s kernel rows, by class of kernel."""
    from costmodel.hardware import load_profile

    rows = holdout_kernels(root, hardware)
    hw = load_profile(hardware)
    measured = [ms for *_, ms in rows]
    predicted = {name: cm.predict([s for s, *_ in rows], hw, [c for _, c, *_ in rows])
                 for name, cm in cost_models.items()}
    names = list(cost_models)
    classes = sorted({k for _, _, k, _ in rows})
    lines = ["| kernels | n | " + " | ".join(f"{n} MAPE" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for kind in [*classes, "all"]:
        idx = [i for i, (_, _, k, _) in enumerate(rows) if kind == "all" or k == kind]
        cells = [_pct([abs(predicted[n][i] - measured[i]) / measured[i] for i in idx]) for n in names]
        lines.append(f"| {kind} | {len(idx)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(root: Path, hardware: str, cost_models: list[str]) -> str:
    from costmodel.models.registry import load_cost_model

    models = {Path(name).stem if name.endswith(".pt") else name: load_cost_model(name)
              for name in cost_models}
    return (f"Whole models on {hardware} (eager, fp32; prediction error in brackets)\n\n"
            + whole_models(root, hardware, models)
            + f"\n\nKernels on {hardware} (`costmodel collect --target cuda`)\n\n"
            + kernels(root, hardware, models))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="time the workloads on this machine's GPU into --out")
    p.add_argument("--out", required=True, help="dataset folder for the rows")
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    p.add_argument("--workloads", default=None,
                   help="MODEL:BATCH:SEQ,... (default: NeuSight's and the zoo's, see WORKLOADS)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p = sub.add_parser("report", help="predicted vs measured for the rows in DATA")
    p.add_argument("data", nargs="?", default="datasets/data", help="dataset folder (default datasets/data)")
    p.add_argument("--hardware", default="h100-sxm", help="the GPU's rows to score (default h100-sxm)")
    p.add_argument("--cost-models", default="gnn,gbdt,roofline")
    args = parser.parse_args(argv)
    if args.command == "measure":
        workloads = WORKLOADS if not args.workloads else [
            (w.split(":")[0], int(w.split(":")[1]), int(w.split(":")[2]))
            for w in args.workloads.split(",")]
        return 1 if measure(Path(args.out), workloads, device=args.device, warmup=args.warmup,
                            repeats=args.repeats) else 0
    print(report(Path(args.data), args.hardware, args.cost_models.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
