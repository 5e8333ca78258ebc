"""`autotune`: search a plan for a model on a target, write it out, and (optionally) measure it.

    autotune --target a100                      # bert-base, batch 1, seq 128, fp32, 200 trials
    autotune --target h100 --model gpt2 --batch 8 --seq 512 --dtype bf16 --trials 500 --out out/
    autotune --target cpu --model gpt2 --seq 64 --measure      # run eager and the plan here
    autotune worker --study NAME --storage URL --trials 100    # join a shared study
    autotune run --plan out/plan.json                           # run a plan where its target is

The study lives in OUT/study.journal unless --storage names another (sqlite:///f.db,
postgresql://...): rerunning the same command resumes it where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from autotune.storage import fail_stale, open_storage, redact
from costmodel.cli import ArgumentParser, add_cost_model_arg, add_workload_args, positive_int, run_main
from costmodel.errors import UserError

DEFAULT_MODEL = "bert-base"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="autotune", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="hardware target, e.g. a100, h100, t4, cpu")
    add_workload_args(p, model_default=DEFAULT_MODEL)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=positive_int, default=200,
                        help="Optuna trials in all, a resumed study's included (default 200)")
    budget.add_argument("--time-budget", type=positive_seconds, metavar="S",
                        help="search for S seconds instead of a number of trials")
    p.add_argument("--prior", default="heuristic",
                   help="heuristic (default), none, or llm:PROVIDER (llm:smollm2, llm:gguf=PATH, "
                        "llm:openai=URL[,model=NAME])")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random"), help="default tpe")
    p.add_argument("--storage", help="study storage URL (default: a journal file in --out)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    add_cost_model_arg(p)
    p.add_argument("--measure", nargs="?", const="here", choices=("here", "fake"),
                   help="run eager, the plan and torch.compile on this machine (target cpu, or "
                        "the GPU here) and compare with the predictions; --measure fake runs the "
                        "same path on a fake GPU of the target (seeded roofline timings, no GPU)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for --measure (default: torch's; 1 is steadier on a busy host)")
    p.add_argument("--dataset", default=None,
                   help="where --measure appends its measurements (default datasets/data)")
    p.add_argument("--repeats", type=positive_int, default=20,
                   help="timed runs of each of eager, plan and torch.compile for --measure")
    p.add_argument("--out", default="out", help="directory for plan.json and report.html (default out/)")
    p.add_argument("--top", type=positive_int, default=8, help="kernels to list in the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def writable_folder(path: str) -> Path:
    """`path` as a folder this process can write, made if need be; UserError saying why not."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except FileExistsError:
        raise UserError(f"--out {path!r} is a file, not a folder; give a folder for plan.json "
                        "and report.html") from None
    except NotADirectoryError:
        raise UserError(f"--out {path!r} lies under a file; give a folder path") from None
    except OSError as e:
        raise UserError(f"cannot write to --out {path!r}: {e.strerror}") from None
    return out


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _worker_parser() -> ArgumentParser:
    p = ArgumentParser(prog="autotune worker",
                       description="Run trials of an existing study from a shared storage.")
    p.add_argument("--study", required=True, help="study name (printed by autotune, in plan.json)")
    p.add_argument("--storage", required=True, help="storage URL: sqlite:///f.db, postgresql://...")
    p.add_argument("--trials", type=positive_int, default=100, help="trials this worker runs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _run_parser() -> ArgumentParser:
    p = ArgumentParser(prog="autotune run",
                       description="Run a plan.json with every decision applied where its target is "
                                   "(this CPU, the GPU here, or a fake GPU), check its outputs against "
                                   "eager and time it beside eager and whole-model torch.compile.")
    p.add_argument("--plan", required=True, help="a plan.json written by autotune")
    p.add_argument("--model", default=None,
                   help="the model the plan is for (default: the plan's); a zoo name or config.json")
    p.add_argument("--target", default=None, help="must be the plan's target (default: the plan's)")
    p.add_argument("--dtype", default=None, help="must be the plan's dtype (default: the plan's)")
    p.add_argument("--measure", default="here", choices=("here", "fake"),
                   help="here (default): this machine; fake: a fake GPU of the target")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed calls of each way (default 20)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return run_main(_worker, argv[1:])
    if argv[:1] == ["run"]:
        return run_main(_run, argv[1:])
    return run_main(_main, argv)


def _run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    from autotune.space import Space
    from autotune.verify import verify_plan
    from costmodel.api import check_plan_diagram, check_plan_target
    from costmodel.hardware import load_profile
    from costmodel.ir.plan import load_plan_file
    from costmodel.ir.zoo import capture_model

    plan, doc = load_plan_file(args.plan)
    missing = [k for k in ("model", "batch", "seq", "dtype", "target", "diagram_hash") if k not in doc]
    if missing:
        raise UserError(f"{args.plan} lacks {', '.join(missing)}: it is not a plan.json autotune wrote")
    model, attention = args.model or doc["model"], doc.get("attention", "sdpa")
    if args.dtype is not None and args.dtype != doc["dtype"]:
        raise UserError(f"{args.plan} was tuned for {doc['dtype']}, not {args.dtype}: its tiles and "
                        f"prices hold for that dtype only; retune with autotune --dtype {args.dtype}")
    target = load_profile(args.target or doc["target"])
    check_plan_target(doc, target, name=args.plan)
    diagram = capture_model(model, doc["batch"], doc["seq"], doc["dtype"], attention=attention)
    check_plan_diagram(doc, diagram, name=args.plan)
    try:
        Space(diagram, target).check(plan)
    except ValueError as e:
        raise UserError(f"{args.plan} does not fit {target.name}: {e}") from None
    runner = _measure_runner(target, args.measure)
    v = verify_plan(model, doc["batch"], doc["seq"], doc["dtype"], plan, repeats=args.repeats,
                    threads=args.threads, runner=runner, attention=attention, progress=not args.quiet)
    measured = {"baseline": {"predicted_ms": doc.get("baseline_ms"), "measured_ms": v.eager_ms},
                "plan": {"predicted_ms": doc.get("plan_ms"), "measured_ms": v.plan_ms},
                "compiled_ms": v.compiled_ms, "max_abs_error": v.max_abs_error,
                "tolerance": v.tolerance, "repeats": v.repeats, "threads": v.threads,
                "hardware": v.hardware, "device": v.device, "runner": runner.name,
                "applied": v.applied.to_dict(), "plan_hash": v.plan_hash}
    if args.json:
        print(json.dumps(measured, indent=1))
        return 0
    print(f"{diagram.name} batch {doc['batch']} seq {doc['seq']} {doc['dtype']} on {v.hardware}: "
          f"rest {plan.runtime.rest}{', CUDA graph' if plan.runtime.cuda_graph else ''}")
    print(f"  outputs match eager: max abs error {v.max_abs_error:.3g} (allowed {v.tolerance:.3g})")
    print(_measured_table(measured))
    return 0


def study_name(args, diagram_hash: str, cost_model: str) -> str:
    """The study a search resumes: the workload, the target, the cost model by the identity of
    its weights (a retrained checkpoint is another study), the sampler and seed."""
    model = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(args.model).stem if args.model.endswith(".json")
                   else args.model)
    return (f"{model}-b{args.batch}-s{args.seq}-{args.dtype}-{args.attention}-{args.target}"
            f"-{cost_model}-{args.sampler}-seed{args.seed}-{diagram_hash[:10]}")


def _build(model: str, batch: int, seq: int, dtype: str, target: str, cost_model_spec: str,
           attention: str = "sdpa", calibration: str | None = None):
    from autotune.space import Space
    from costmodel.models.registry import load_cost_model
    from costmodel.hardware import load_profile
    from costmodel.ir.zoo import capture_model

    hw = load_profile(target)
    cost_model = load_cost_model(cost_model_spec, calibration=calibration)
    diagram = capture_model(model, batch, seq, dtype, attention=attention)
    hw.peak(dtype)  # says plainly when the target has no such dtype
    return Space(diagram, hw), cost_model


def _main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    from autotune.priors import load_prior
    from autotune.search import plan_document, search

    # The folder, the prior and the storage before the capture and the search: nobody waits to
    # learn that one of them is wrong.
    out = writable_folder(args.out)
    prior = load_prior(args.prior)
    storage, lock = open_storage(args.storage, out)
    try:
        space, cost_model = _build(args.model, args.batch, args.seq, args.dtype, args.target,
                                   args.cost_model, args.attention, args.calibration)
        runner = _measure_runner(space.target, args.measure) if args.measure else None
        name = study_name(args, space.diagram.hash, cost_model.key)
        trials = 10**9 if args.time_budget else args.trials
        result = search(space, cost_model, trials=trials, seed=args.seed, progress=not args.quiet,
                        suggestions=lambda: prior.suggest(space, 8), storage=storage,
                        study_name=name, sampler=args.sampler, time_budget=args.time_budget,
                        attrs={"model": args.model, "batch": args.batch, "seq": args.seq,
                               "dtype": args.dtype, "attention": args.attention,
                               "target": args.target, "cost_model": args.cost_model,
                               "calibration": args.calibration, "sampler": args.sampler})
    finally:
        if lock is not None:
            lock.release()
    extra = {"prior": {"name": prior.name, **prior.stats}, "sampler": args.sampler}
    measured = None
    if args.measure:
        measured = _measure(args, result, runner)
        extra["measured"] = measured
    whatifs = _whatifs(args, cost_model, result, space.diagram)
    extra["whatifs"] = whatifs
    doc = plan_document(result, model=args.model, diagram_hash=space.diagram.hash,
                        batch=args.batch, seq=args.seq, dtype=args.dtype, seed=args.seed,
                        extra={"attention": args.attention, "cost_model_identity": cost_model.key,
                               **extra})
    (out / "plan.json").write_text(json.dumps(doc, indent=1) + "\n")
    from autotune.report import write_report

    write_report(out / "report.html", diagram=space.diagram, result=result,
                 title=f"{args.model} on {space.target.name}", whatifs=whatifs, measured=measured)
    print(summary(result, space.diagram.name, args, len(space.params), args.top))
    print(_prior_line(prior))
    if whatifs:
        print(_whatif_table(whatifs))
    if measured:
        print(_measured_table(measured))
    print(f"plan written to {out / 'plan.json'}, report to {out / 'report.html'} "
          f"(study {name!r})")
    return 0


def _worker(argv: Sequence[str]) -> int:
    args = _worker_parser().parse_args(argv)
    from autotune.search import Evaluator, open_study, run_trials

    storage, _ = open_storage(args.storage, Path("."))
    import optuna

    try:
        attrs = optuna.load_study(study_name=args.study, storage=storage).user_attrs
    except KeyError:
        raise UserError(f"no study {args.study!r} in {redact(args.storage)}; start it with "
                        "autotune --storage URL first") from None
    space, cost_model = _build(attrs["model"], attrs["batch"], attrs["seq"], attrs["dtype"],
                               attrs["target"], attrs["cost_model"], attrs.get("attention", "sdpa"),
                               attrs.get("calibration"))
    study = open_study(args.study, storage, attrs.get("sampler", "tpe"), seed=None)
    fail_stale(study, locked=False)  # trials of a worker that stopped beating
    done = run_trials(study, space, Evaluator(space, cost_model), args.trials,
                      progress=not args.quiet, desc="worker")
    print(f"worker ran {done} trials of {args.study!r}; best {study.best_value:.4f} ms")
    return 0


def _measure_runner(target, where: str):
    """Where --measure runs the plan: this host for the cpu target, the GPU here when it is the
    target's, or a fake GPU of the target; a UserError otherwise (checked before the search, so
    nobody waits for it)."""
    from costmodel.measure import runner

    if where == "fake":
        if target.kind != "gpu":
            raise UserError(f"--measure fake pretends to be a GPU; {target.name} is a {target.kind}")
        from costmodel.measure.fake import FakeRunner

        return FakeRunner(hardware=target.name)
    if target.kind == "cpu":
        return runner("cpu")
    if target.kind == "gpu":
        here = runner("cuda")  # says plainly when there is no GPU
        if here.hardware == target.name:
            return here
        raise UserError(f"--measure runs the plan on this machine: the GPU here is {here.hardware}, "
                        f"not {target.name}; use --target {here.hardware}, or leave out --measure")
    raise UserError(f"--measure runs on cpu or a CUDA GPU, not on {target.name} ({target.kind})")


def _measure(args, result, runner) -> dict:
    from autotune.verify import record, verify_plan

    v = verify_plan(args.model, args.batch, args.seq, args.dtype, result.plan,
                    repeats=args.repeats, seed=args.seed, threads=args.threads,
                    runner=runner, attention=args.attention, progress=not args.quiet)
    written = record(v, runner, **({"root": args.dataset} if args.dataset else {}))
    return {"baseline": {"predicted_ms": result.baseline.total_ms, "measured_ms": v.eager_ms},
            "plan": {"predicted_ms": result.best.total_ms, "measured_ms": v.plan_ms},
            "compiled_ms": v.compiled_ms, "max_abs_error": v.max_abs_error,
            "repeats": v.repeats, "threads": v.threads, "hardware": v.hardware, "device": v.device,
            "runner": runner.name, "rows_written": written.get("written", 0),
            "applied": v.applied.to_dict()}


def _whatifs(args, cost_model, result, diagram) -> list[dict]:
    from autotune.whatif import whatifs

    rows = whatifs(args.model, args.batch, args.seq, args.dtype, args.target, cost_model,
                   baseline_ms=result.best.total_ms, original=diagram, attention=args.attention)
    return [{"name": w.name, "description": w.description, "baseline_ms": w.baseline_ms,
             "variant_ms": w.variant_ms, "saving": w.saving} for w in rows]


def summary(result, model: str, args, params: int, top: int) -> str:
    from autotune.search import changes

    base, best = result.baseline, result.best
    spread = f" (+-{100 * result.speedup_spread:.1f}%)" if result.speedup_spread else ""
    lines = [
        (f"{model} batch {args.batch} seq {args.seq} {args.dtype} on {best.target} "
         f"({best.cost_model} cost model, {result.trials} trials over {params} decisions)"),
        f"  eager baseline {base.total_ms:10.3f} ms  ({len(base.kernels)} kernels)",
        f"  tuned plan     {best.total_ms:10.3f} ms  ({len(best.kernels)} kernels)" if result.plan.decisions
        else f"  no plan beats eager in {result.trials} trials: the plan is eager itself",
        f"  predicted speedup {result.speedup:.3f}x{spread}",
        *[f"  warning: {w}" for w in best.warnings],
        "",
        f"  {'costliest kernels of the plan (one row per class)':<52} {'count':>5} {'ms each':>9} "
        f"{'ms in all':>9}  change",
    ]
    changed = changes(result.plan)
    for group in kernel_classes(best)[:top]:
        k = group[0]
        what = "; ".join(changed.get(k.subdiagram.vertices[0].name, [])) or "as eager"
        ops = "+".join(v.kind for v in k.subdiagram.vertices if not v.is_free)
        shape = "x".join(map(str, next(v for v in k.subdiagram.vertices if not v.is_free).output_shapes[0]))
        where = re.sub(r"\.\d+(\.|$)", r".*\1", k.subdiagram.module) or k.subdiagram.name
        label = f"{ops} {shape} {where}"
        lines.append(f"  {label[:52]:<52} {len(group):>5} {k.ms:>9.4f} {k.ms * len(group):>9.4f}  {what}")
    return "\n".join(lines)


def kernel_classes(cost) -> list[list]:
    """The plan's kernels grouped by what they compute (content hash and config), costliest
    class first: the same projection in every layer is one row with its count."""
    groups: dict[tuple, list] = {}
    for k in cost.kernels:
        groups.setdefault((k.subdiagram.hash, k.config), []).append(k)
    return sorted(groups.values(), key=lambda g: -sum(k.ms for k in g))


def _prior_line(prior) -> str:
    s = prior.stats
    return (f"  prior {prior.name}: {s.get('valid', 0)} suggestions enqueued, "
            f"{s.get('invalid', 0)} invalid dropped")


def _whatif_table(rows: list[dict]) -> str:
    lines = ["", f"  {'what if (priced, not applied)':<40} {'ms':>9}  saving"]
    for r in rows:
        lines.append(f"  {r['name'][:40]:<40} {r['variant_ms']:>9.3f}  {100 * r['saving']:5.1f}%")
    return "\n".join(lines)


def _measured_table(m: dict) -> str:
    b, p, c, a = m["baseline"], m["plan"], m["compiled_ms"], m["applied"]
    lines = ["", f"  applied: {a['triton_kernels']} kernels ours, {a['inductor_groups']} groups by "
             f"inductor, {a['eager_decisions']} decisions eager; {a['tiles_applied']} tiles applied, "
             f"{a['tiles_ignored']} not", *(f"    {reason}" for reason in a["fallbacks"]),
             f"  {'measured here':<16} {'predicted ms':>12} {'measured ms':>12}",
             f"  {'eager':<16} {b['predicted_ms']:>12.3f} {b['measured_ms']:>12.3f}",
             f"  {'plan':<16} {p['predicted_ms']:>12.3f} {p['measured_ms']:>12.3f}",
             f"  {'torch.compile':<16} {'':>12} {c:>12.3f}" if c else
             "  torch.compile    (the whole model failed to compile)",
             f"  measured speedup {b['measured_ms'] / p['measured_ms']:.3f}x over eager"
             + (f", {c / p['measured_ms']:.3f}x over whole-model torch.compile" if c else "")
             + f" (median of {m['repeats']}, "
             + (f"{m['threads']} threads)" if m["device"] == "cpu" else
                f"{m['hardware']}{', fake timings' if m.get('runner') == 'fake' else ''})")]
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
