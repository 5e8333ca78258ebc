"""`costmodel`: capture a model as a diagram and price it on a target.

    costmodel predict --model bert-large --batch 8 --seq 512 --target h100 [--json]
    costmodel diagram --model gpt2 --json
    costmodel targets
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from costmodel.errors import UserError
from costmodel.ir.rules import COMPUTE_DTYPES
from costmodel.models.registry import DEFAULT_COST_MODEL

ATTENTION = ("sdpa", "eager")  # costmodel.ir.zoo.ATTENTION, without importing torch here


RUNNERS = ("cpu", "cuda", "fake")  # costmodel.measure.RUNNERS, without importing torch here


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit 2), as every feyntune error does."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_workload_args(p: argparse.ArgumentParser, *, model_default: str | None = None) -> None:
    """--model, --batch, --seq, --dtype: what to capture."""
    p.add_argument("--model", required=model_default is None, default=model_default,
                   help="zoo name (bert-base, bert-large, gpt2, gpt2-large, opt-1.3b, scgpt) "
                        "or a path to a Hugging Face config.json")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--seq", type=positive_int, default=128, help="sequence length (default 128)")
    p.add_argument("--dtype", default="fp32", choices=COMPUTE_DTYPES,
                   help="compute dtype (default fp32; tf32 runs fp32 matmuls on tensor cores)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION,
                   help="how attention is computed: sdpa (default: one fused kernel, as PyTorch "
                        "runs it today) or eager (matmul, softmax, matmul)")


def add_cost_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cost-model", default=DEFAULT_COST_MODEL,
                   help=f"gbdt (the shipped boosted trees), gnn (the shipped graph network), hybrid "
                        f"(their geometric mean), roofline, or a saved model file (default "
                        f"{DEFAULT_COST_MODEL}: the best on unseen GPUs)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a calibration of the target made for this cost model (costmodel "
                        "calibrate): its matmuls and composition as timed there")


def add_learning_args(p: argparse.ArgumentParser) -> None:
    """What a learned model is trained on and how: seed, epochs, members, inputs, weights."""
    p.add_argument("--data", default=None, help="release folder (default: the newest release)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per ensemble member")
    p.add_argument("--members", type=positive_int, default=None, help="ensemble size")
    p.add_argument("--hardware", default=None, choices=("all", "physical", "ratios", "minimal", "none"),
                   help="hardware descriptors the learned models see (default: each model's "
                        "own, GNNConfig's and GBDTConfig's)")
    p.add_argument("--weight", default=None, choices=("none", "time"),
                   help="regression weights: none, or time (big kernels count more; default: "
                        "each model's own)")
    p.add_argument("--labels", default=None, choices=("measured", "device"),
                   help="what the GBDT learns from: each kernel row as timed (default), or device: "
                        "less the time its source's harness adds to every kernel")
    p.add_argument("--level", default=None, choices=("none", "tdp", "own"),
                   help="the GBDT's matmul level per GPU: none (default); tdp: learnt with each "
                        "GPU's level off, a target's interpolated in its TDP; own: a training GPU "
                        "keeps its own level (trials, README)")
    add_guards_arg(p)


def add_guards_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guards", default="on", choices=("on", "off", "clamp", "bound"),
                   help="the GNN's guards against extrapolation: hardware descriptors clamped to "
                        "the training range and the correction bounded (default on; off: as "
                        "before them; clamp or bound: one alone)")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command, turning user errors into one line on stderr and exit status 2."""
    try:
        return main(argv)
    except SystemExit as e:  # argparse: usage errors and --help
        return e.code if isinstance(e.code, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="costmodel", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("predict", help="price a model on a target")
    add_workload_args(p)
    p.add_argument("--target", required=True, help="hardware target, e.g. a100, h100, t4, cpu")
    p.add_argument("--plan", default="eager", help="eager (one kernel per op) or a plan.json")
    add_cost_model_arg(p)
    p.add_argument("--top", type=positive_int, default=10, help="kernels to list (text output)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("diagram", help="print the captured diagram")
    add_workload_args(p)
    p.add_argument("--json", action="store_true", help="print the whole diagram as JSON")

    sub.add_parser("targets", help="list hardware targets")

    p = sub.add_parser("train", help="train a learned cost model on a dataset release")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=("gnn", "gbdt", "hybrid"),
                   help=f"default {DEFAULT_COST_MODEL}, the default cost model")
    add_learning_args(p)
    p.add_argument("--out", default=None,
                   help="checkpoint folder (default costmodel/models/checkpoints)")
    p.add_argument("--make-default", action="store_true",
                   help="make this checkpoint the one `--cost-model KIND` loads")

    p = sub.add_parser("eval", help="score the GNN and the baselines on held-out data")
    p.add_argument("--protocol", required=True,
                   choices=("leave-one-gpu-out", "leave-one-model-out", "ranking"),
                   help="ranking: order of configs of one kernel on one machine, on held-out groups")
    add_learning_args(p)
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPUs to hold out (default: every GPU with whole-model runs)")
    p.add_argument("--methods", default="gnn,gbdt,hybrid,roofline",
                   help="comma-separated methods to score (default gnn,gbdt,hybrid,roofline; the "
                        "hybrid is the mean of the GNN's and the GBDT's ln(ms))")
    p.add_argument("--shots", default="8,32",
                   help="leave-one-gpu-out: also score each fold with this many of the held-out "
                        "GPU's own matmuls timed, comma-separated ('' for none; default 8,32)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="serve predictions as JSON over HTTP")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    add_cost_model_arg(p)
    p.add_argument("--configs", default=None, metavar="DIR",
                   help="a folder of Hugging Face config.json files requests may name (default: "
                        "the zoo's models only)")

    p = sub.add_parser("calibrate", help="time a few GEMMs on this machine's GPU and fit a cost model to them")
    p.add_argument("--runner", default="cuda", choices=RUNNERS,
                   help="what times the GEMMs: cuda (GPU 0, default), cpu (this host) or fake (no "
                        "GPU: seeded roofline timings, to try the plumbing)")
    p.add_argument("--target", default=None,
                   help="the hardware profile timed (default: the runner's; fake needs one)")
    p.add_argument("--shots", type=positive_int, default=32, help="GEMMs to time (default 32)")
    p.add_argument("--seed", type=int, default=0, help="which GEMMs are drawn (default 0)")
    p.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="fit the GEMMs a calibration file timed (no runner), e.g. for another cost model")
    p.add_argument("--data", default=None, help="release folder (default: the newest release)")
    p.add_argument("--cost-model", default=DEFAULT_COST_MODEL,
                   help=f"the cost model to fit (default {DEFAULT_COST_MODEL}; a name or a saved file)")
    p.add_argument("--out", required=True, metavar="FILE", help="the calibration file to write")

    p = sub.add_parser("measure", help="time a model's kernels on this machine into the dataset")
    add_workload_args(p)
    p.add_argument("--target", required=True, choices=RUNNERS,
                   help="cpu (this host), cuda (GPU 0) or fake (no GPU: seeded timings through "
                        "the CUDA path)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds to spend (default 600)")
    p.add_argument("--root", default=None, help="dataset folder (default datasets/data)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")

    p = sub.add_parser("collect", help="measure every zoo model at several sizes within a budget")
    p.add_argument("--target", required=True, choices=RUNNERS, help="cpu, cuda or fake")
    p.add_argument("--models", default=None, help="comma-separated zoo names (default: all)")
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--seqs", default="64,256", help="comma-separated sequence lengths (default 64,256)")
    p.add_argument("--dtypes", default="fp32", help="comma-separated dtypes (default fp32)")
    p.add_argument("--budget", type=float, default=3600.0, help="seconds in all (default 3600)")
    p.add_argument("--root", default=None, help="dataset folder (default datasets/data)")

    p = sub.add_parser("dataset", help="import, release, verify and summarise measured runtimes")
    ds = p.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    q = ds.add_parser("import", help="convert public measurements into the dataset")
    q.add_argument("source", help="neusight, deepbench or tpugraphs")
    q.add_argument("path", help="the source's folder or file")
    q.add_argument("--root", default=None, help="dataset folder (default datasets/data)")
    q = ds.add_parser("release", help="snapshot the working data as datasets/releases/VERSION")
    q.add_argument("--version", required=True)
    q.add_argument("--root", default=None, help="dataset folder (default datasets/data)")
    q = ds.add_parser("verify", help="check a release's checksums, row counts and schema")
    q.add_argument("dir", nargs="?", default=None, help="release folder (default: the newest)")
    q = ds.add_parser("summary", help="row counts by hardware and source")
    q.add_argument("dir", nargs="?", default=None, help="release or data folder (default datasets/data)")
    q.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "targets":
        return _targets()
    if args.command == "dataset":
        return _dataset(args)
    if args.command in ("measure", "collect"):
        return _measure(args)
    if args.command == "serve":
        return _serve(args)
    if args.command in ("train", "eval"):
        return _learn(args)
    if args.command == "calibrate":
        return _calibrate(args)
    # Heavy imports wait until the arguments are known to be good.
    if args.command == "predict":
        from costmodel import api
        from costmodel.hardware import load_profile
        from costmodel.ir.plan import Plan, load_plan_file
        from costmodel.models import load_cost_model

        hw = load_profile(args.target)  # a bad target fails before the capture
        cost_model = load_cost_model(args.cost_model, calibration=args.calibration)
        plan, plan_doc = (Plan(), None) if args.plan == "eager" else load_plan_file(args.plan)
        result = api.predict(cost_model, args.model, hw, batch=args.batch, seq=args.seq,
                             dtype=args.dtype, attention=args.attention, plan=plan,
                             plan_doc=plan_doc, plan_name=args.plan)
        print(json.dumps(result, indent=1) if args.json else _prediction_text(result, args.top))
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        return 0

    from costmodel.ir.zoo import capture_model

    diagram = capture_model(args.model, args.batch, args.seq, args.dtype, attention=args.attention)
    if args.json:
        print(diagram.to_json())
    else:
        kinds: dict[str, int] = {}
        for v in diagram.vertices:
            kinds[v.kind] = kinds.get(v.kind, 0) + 1
        print(f"{diagram.name}: {len(diagram.vertices)} vertices, {len(diagram.propagators)} "
              f"propagators, {diagram.flops / 1e9:.2f} GFLOP, hash {diagram.hash}")
        print("  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda x: -x[1])))
        masks = sorted({v.mask_kind for v in diagram.vertices if v.mask_kind})
        print(f"  attention masks: {', '.join(masks) or 'no attention'}")
    return 0


def _prediction_text(result: dict, top: int) -> str:
    lines = [f"{result['model']} batch {result['batch']} seq {result['seq']} {result['dtype']} on "
             f"{result['target']} ({result['plan']} plan, {result['cost_model']}): "
             f"{result['total_ms']:.3f} ms over {result['kernels']} kernels",
             f"{'kernel':<44} {'ops':<24} {'ms':>10} {'share':>7}"]
    costliest = sorted(result["subdiagrams"], key=lambda s: -s["predicted_ms"])[:top]
    for s in costliest:
        lines.append(f"{s['name'][:44]:<44} {'+'.join(s['ops'])[:24]:<24} "
                     f"{s['predicted_ms']:>10.4f} {s['predicted_ms'] / result['total_ms']:>7.1%}")
    return "\n".join(lines)


def _learn(args) -> int:
    import dataclasses

    from costmodel.models import numerics

    pinned = numerics.pin()  # before the learned models' imports run torch
    from costmodel.data.schema import DATASETS_DIR, RELEASES_DIR
    from costmodel.models.gbdt import GBDTConfig
    from costmodel.models.gnn import GNNConfig
    from costmodel.models.registry import CHECKPOINTS
    from costmodel.models.train import train_checkpoint, training_graphs

    data = Path(args.data) if args.data else _newest_release(RELEASES_DIR)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("members", args.members),
                                   ("hardware", args.hardware), ("weight", args.weight)) if v}
    if args.guards in ("off", "bound"):  # off: as the GNN was before the guards (older reports)
        overrides["clamp_hardware"] = False
    if args.guards in ("off", "clamp"):
        overrides["correction"] = None
    cfg = dataclasses.replace(GNNConfig(seed=args.seed), **overrides)
    # the GBDT's own defaults, with the run's seed and whatever inputs, weights and labels were asked for
    asked = {**overrides, "labels": args.labels, "level": args.level}
    gbdt = dataclasses.replace(GBDTConfig(seed=args.seed), **{
        k: v for k, v in asked.items() if k in ("hardware", "weight", "labels", "level") and v})
    if args.command == "train":
        if args.labels and args.model == "gnn":
            raise UserError("--labels is the GBDT's (and the hybrid's trees); the gnn learns from the rows as measured")
        if args.level and args.model == "gnn":
            raise UserError("--level is the GBDT's (and the hybrid's trees); the gnn learns no level")
        model, path, seconds = train_checkpoint(args.model, data, gbdt if args.model == "gbdt" else cfg,
                                                Path(args.out) if args.out else CHECKPOINTS,
                                                gbdt=gbdt, make_default=args.make_default)
        print(f"trained a {args.model} on {model.trained_on['examples']} kernels from {data} in "
              f"{seconds:.0f} s; whole model = {model.composition.a:.3f} x kernels + "
              f"{model.composition.b * 1e3:.1f} us x launches; saved {path}")
        if model.composition.own:
            a, how = model.composition.unseen
            print("each GPU's own scale (a, with that b): "
                  + ", ".join(f"{k} {a:.3f}" for k, a in model.composition.own.items())
                  + f"; a GPU nobody measured: {a:.3f} ({how})")
        floors = getattr(model, "trained_on", {}).get("timing_floors_us")
        if floors:
            print("timing floors taken off each row (us): " + ", ".join(f"{k} {v}" for k, v in floors.items()))
        points = getattr(getattr(model, "levels", None), "points", ())
        if points:
            print("models' matmuls by TDP, the fraction of the roofline they run at: "
                  + ", ".join(f"{10 ** tdp:.0f} W {math.exp(-level):.2f}" for tdp, level in points))
        if not pinned:
            print(numerics.unpinned(), file=sys.stderr)
        return 0
    from costmodel.models.evaluate import (
        format_ranking_table,
        format_table,
        leave_one_gpu_out,
        leave_one_model_out,
        ranking,
        ranking_groups,
    )
    from costmodel.models.examples import model_workloads

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - {"gnn", "gbdt", "hybrid", "roofline"})
    if bad or not methods:
        raise UserError(f"unknown methods {bad or args.methods!r}; valid: gnn, gbdt, hybrid, roofline")
    if "hybrid" in methods and not {"gnn", "gbdt"} <= set(methods):
        raise UserError("--methods hybrid needs gnn and gbdt too: it is their mean")

    try:
        shots = tuple(int(k) for k in args.shots.split(",") if k.strip())
    except ValueError:
        shots = ()
    if any(k <= 0 for k in shots) or (args.shots.strip() and not shots):
        raise UserError(f"--shots {args.shots!r}: give counts of kernels above 0, comma-separated "
                        "(8,32), or '' for none")
    graphs = training_graphs(data, DATASETS_DIR / "cache")  # minutes the first time: after the checks
    if not pinned:
        print(numerics.unpinned(), file=sys.stderr)
    if args.protocol == "ranking":
        ranked = ranking(graphs, ranking_groups(data), cfg=cfg, gbdt=gbdt, methods=methods)
        if args.json:
            print(json.dumps({k: v.to_dict() for k, v in ranked.items()}, indent=1))
        else:
            print(format_ranking_table(f"Ranking configs on held-out groups ({data.name}, seed {cfg.seed})",
                                       ranked))
        return 0
    if args.protocol == "leave-one-gpu-out":
        rows = leave_one_gpu_out(graphs, model_workloads(data), cfg=cfg, gbdt=gbdt, methods=methods,
                                 gpus=args.gpus.split(",") if args.gpus else None, shots=shots)
        title = f"Leave one GPU out ({data.name}, seed {cfg.seed})"
    else:
        rows = leave_one_model_out(graphs, model_workloads(data), cfg=cfg, gbdt=gbdt,
                                   methods=methods)
        title = f"Leave one model family out ({data.name}, seed {cfg.seed})"
    if args.json:
        print(json.dumps({k: {"kernels": v.n, "kernel_mape": v.mape, "models": v.models,
                              "model_mape": v.model_mape, "shot_kernel_mape": v.shot_mape,
                              "shot_model_mape": v.shot_model_mape} for k, v in rows.items()},
                         indent=1))
    else:
        print(format_table(title, rows))
    return 0


def _calibrate(args) -> int:
    from costmodel.data.schema import RELEASES_DIR
    from costmodel.hardware import load_profile
    from costmodel.models import calibration as cal
    from costmodel.models.evaluate import fit_calibration
    from costmodel.models.registry import load_cost_model

    data = Path(args.data) if args.data else _newest_release(RELEASES_DIR)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no folder {out.parent}")
    model = load_cost_model(args.cost_model)  # a bad model is said before anything is timed
    if args.source:
        timed = cal.Calibration.load(args.source)
    else:
        if args.runner == "fake":
            if not args.target:
                raise UserError("--runner fake times a GPU that is not there: name it with --target")
            from costmodel.measure.fake import FakeRunner

            be = FakeRunner(hardware=load_profile(args.target).name, seed=args.seed)
        else:
            from costmodel.measure import runner

            be = runner(args.runner)
        found = be.profile()
        if found is None:
            raise UserError(f"this {be.hardware} matches no hardware profile (costmodel targets): "
                            "add one under costmodel/hardware/profiles, then calibrate")
        if args.target and load_profile(args.target).name != found.name:
            raise UserError(f"--target {args.target} is not the machine the {args.runner} runner "
                            f"times ({found.name}): leave --target out, or run this there")
        from costmodel.measure.gemms import timed as time_gemms

        timed = time_gemms(be, found, cal.draw_shots(data, args.shots, args.seed), seed=args.seed, release=data)
        timed.save(out)  # the timings first: a fit that fails loses none of them
        print(f"timed {len(timed.shots)} GEMMs on {found.name}; saved to {out}", file=sys.stderr)
    fitted = fit_calibration(model, timed, data)
    fitted.save(out)
    a, b = fitted.composition
    print(f"calibrated {model.key} on {fitted.target}: matmuls x {math.exp(fitted.shift):.3f} "
          f"(median of {fitted.fitted['shots']} GEMMs), whole model = {a:.3f} x kernels + "
          f"{b * 1e3:.1f} us x launches; saved {out}")
    if "note" in fitted.made:
        print(f"warning: {fitted.made['note']}", file=sys.stderr)
    return 0


def _serve(args) -> int:
    from costmodel.serve import make_server

    try:
        server = make_server(args.host, args.port, cost_model=args.cost_model, configs=args.configs,
                             calibration=args.calibration)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(f"serving predictions on http://{host}:{port} "
          "(GET /health, /targets; POST /predict, /predict/diagram); Ctrl-C stops", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _measure(args) -> int:
    from costmodel import measure
    from costmodel.data.schema import DATA_DIR

    root = Path(args.root or DATA_DIR)
    if args.command == "measure":
        counts = measure.measure(args.model, target=args.target, batch=args.batch, seq=args.seq,
                                 dtype=args.dtype, budget_s=args.budget, root=root)
        if args.json:
            print(json.dumps(counts, indent=1))
        else:
            print(f"{counts['model']} on {counts['hardware']}: {counts['measured']} measured "
                  f"({counts['failed']} failed), {counts['skipped']} already measured, "
                  f"{counts['remaining']} left for another run, {counts['seconds']:.1f} s")
        return 130 if counts["interrupted"] else 0

    def ints(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(","))
        except ValueError:
            raise UserError(f"expected comma-separated integers, got {text!r}") from None
        if min(values) < 1:
            raise UserError(f"sizes must be at least 1, got {text!r}")
        return values

    counts = measure.collect(args.models.split(",") if args.models else None, target=args.target,
                             batches=ints(args.batches), seqs=ints(args.seqs),
                             dtypes=tuple(args.dtypes.split(",")), budget_s=args.budget, root=root)
    for run in counts["runs"]:
        what = f"{run['model']} {run['batch']}x{run['seq']} {run['dtype']}"
        print(f"{what:<28} " + (f"error: {run['error']}" if "error" in run else
                                f"{run['measured']} measured, {run['failed']} failed, "
                                f"{run['skipped']} skipped, {run['seconds']:.0f} s"))
    print(f"total: {counts['measured']} measured, {counts['failed']} failed, "
          f"{counts['skipped']} skipped")
    return 130 if counts["interrupted"] else 0


def _dataset(args) -> int:
    from costmodel.data import release as rel
    from costmodel.data.schema import DATA_DIR, RELEASES_DIR

    root = Path(getattr(args, "root", None) or DATA_DIR)
    if args.action == "import":
        from costmodel.data.importers import run_import

        counts = run_import(args.source, args.path, root=root)
        print(", ".join(f"{table} {n}" for table, n in counts.items()))
    elif args.action == "release":
        dest = rel.release(args.version, root=root)
        print(f"release {args.version} written to {dest}")
    elif args.action == "verify":
        folder = Path(args.dir) if args.dir else _newest_release(RELEASES_DIR)
        problems = rel.verify(folder)
        for p in problems:
            print(f"{folder}: {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"{folder}: ok")
    else:
        folder = Path(args.dir) if args.dir else root
        if (folder / "manifest.json").is_file() and (problems := rel.verify(folder)):
            raise UserError(f"release {folder} fails verification ({len(problems)} problems, the "
                            f"first: {problems[0]}); run costmodel dataset verify {folder}")
        counts = rel.summary(folder)
        if args.json:
            print(json.dumps(counts, indent=1))
        else:
            for table, n in counts["tables"].items():
                print(f"{table:<13} {n:>9}")
            for key, n in counts["measurements"]["by_source_and_hardware"].items():
                print(f"  {key:<40} {n:>9}")
    return 0


def _newest_release(releases: Path) -> Path:
    found = sorted(p for p in releases.iterdir() if (p / "manifest.json").is_file()) \
        if releases.is_dir() else []
    if not found:
        raise UserError(f"no release under {releases}; make one with costmodel dataset release --version V")
    return max(found, key=lambda p: p.stat().st_mtime)


def _targets() -> int:
    from costmodel.hardware import detect_gpu, list_profiles, load_profile

    present = detect_gpu()
    print(f"{'target':<18} {'kind':<5} {'aliases':<10} {'dtypes':<22} {'TB/s':>6}  name")
    for name in list_profiles():
        hw = load_profile(name)
        mark = "  (present)" if name == present or name == "cpu" else ""
        print(f"{hw.name:<18} {hw.kind:<5} {','.join(hw.aliases):<10} {','.join(hw.dtypes):<22} "
              f"{hw.memory_bandwidth / 1e12:>6.2f}  {hw.display_name}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
