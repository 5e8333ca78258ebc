"""Evaluation protocols: the GNN and its baselines, side by side, on data they did not train on.

Baselines:
- roofline: `costmodel.models.roofline.Roofline`, no training;
- gbdt: `costmodel.models.gbdt`, gradient-boosted trees on flat per-kernel features (the approach
  of TVM's XGBoost cost model), predicting ln(ms) less the roofline's ln(ms), as the GNN does.

Metrics: MAPE (mean of |predicted - measured| / measured), and for ranking Kendall's tau and
top-k error ((best measured among the model's top k - true best) / true best), as in TpuGraphs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from costmodel.data.loader import hardware_profiles
from costmodel.data.schema import now
from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.hardware import load_profile
from costmodel.ir.plan import KernelConfig, eager_partition
from costmodel.models.base import MATMULS, Composition, CostModel, calibration
from costmodel.models.calibration import MIN_SHOTS, Calibration
from costmodel.models.examples import Workload, kernel_class, model_workloads, programs_of, workload_sums
from costmodel.models.features import to_data
from costmodel.models.gbdt import GBDTConfig, GBDTCostModel, roofline_ln
from costmodel.models.gnn import GNNConfig
from costmodel.models.learned import GraphCostModel
from costmodel.models.train import train, training_graphs

def mape(pred_ms: np.ndarray, true_ms: np.ndarray) -> float:
    return float(np.mean(np.abs(pred_ms - true_ms) / true_ms))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two orderings of the same items."""
    n = len(a)
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (a[i] - a[j]) * (b[i] - b[j])
            concordant += s > 0
            discordant += s < 0
    pairs = n * (n - 1) / 2
    return (concordant - discordant) / pairs if pairs else float("nan")


def top_k_error(pred: Sequence[float], true: Sequence[float], k: int) -> float:
    """(best measured among the k predicted fastest - true best) / true best. Where predictions
    tie across the k-th place (a tree model's often do), the expectation over every order of the
    tied configs (`_expected_best`): a tie tells nothing, and breaking it by position would score
    the configs' order, not the model; numpy's default sort broke such ties differently from one
    day's machine to the next, likely by the sort kernel it dispatches to (the report's top-5
    slowdown of TpuGraphs' tiles read 2.6% on 2026-12-07 and 15.0% in a run of 2026-12-08
    before this, Kendall's tau the same to the last digit)."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    k = min(k, len(pred))
    cut = np.sort(pred)[k - 1]
    sure = true[pred < cut]
    tied = true[pred == cut]
    best = _expected_best(tied, k - len(sure), sure.min() if len(sure) else math.inf)
    return (best - true.min()) / true.min()


def _expected_best(values: np.ndarray, k: int, floor: float = math.inf) -> float:
    """The expected min of `floor` and the best of k of `values` drawn without replacement:
    the i-th fastest is the best drawn with probability C(n-i, k-1) / C(n, k)."""
    t = np.sort(np.asarray(values, float))
    n = len(t)
    p = np.array([math.comb(n - i, k - 1) for i in range(1, n + 1)]) / math.comb(n, k)
    return float(np.dot(p, np.minimum(t, floor)))


Parts = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per workload: ln(ms), matmul?, repeats


def workload_parts(fn: Callable[[Sequence[Data]], np.ndarray], workloads: Sequence[Workload]) -> Parts:
    """Per workload: its kernels' ln(ms) by `fn`, which are matmuls (`MATMULS`), and repeats."""
    return [(fn(list(w.graphs)), np.array([kernel_class(g) in MATMULS for g in w.graphs], bool),
             np.asarray(w.repeats, float)) for w in workloads]


def composition_of(parts: Parts, workloads: Sequence[Workload],
                   shifts: Sequence[float] | None = None) -> Composition:
    """The composition fitted on `workloads` (their `workload_parts`), each GPU's own scale
    where they hold enough of its models; with `shifts` (one per workload), each workload's
    matmul kernels scaled by exp(shift) first: its GPU calibrated (`few_shot`, `calibrate`)."""
    return Composition.fit(_totals(parts, shifts or [0.0] * len(workloads)), _launches(workloads),
                           np.array([w.measured_ms for w in workloads]), [w.hardware for w in workloads])


def _totals(parts: Parts, shifts: Sequence[float]) -> np.ndarray:
    return np.array([float(np.exp(ln + shift * mm) @ r) for (ln, mm, r), shift in zip(parts, shifts)])


def _launches(workloads: Sequence[Workload]) -> np.ndarray:
    return np.array([float(sum(w.repeats)) for w in workloads])


def composed_mape(train: Parts, test: Parts, train_w: Sequence[Workload], test_w: Sequence[Workload],
                  train_shift: Sequence[float] | None = None, test_shift: float = 0.0) -> float:
    """Whole-model MAPE on `test_w`, the composition fitted on `train_w` (`composition_of`);
    with shifts (`few_shot`), each side's matmul kernels scaled by exp(shift) first
    (`train_shift`: one per training workload)."""
    if not test_w:
        return float("nan")
    comp = composition_of(train, train_w, train_shift)
    predicted = comp(_totals(test, [test_shift] * len(test_w)), _launches(test_w), [w.hardware for w in test_w])
    return mape(predicted, np.array([w.measured_ms for w in test_w]))


def model_mape(ln_fn: Callable[[Sequence[Data]], np.ndarray], train_w: Sequence[Workload],
               test_w: Sequence[Workload]) -> float:
    """Whole-model MAPE on `test_w` of `ln_fn`'s kernel times, composed as fitted on `train_w`."""
    if not test_w:
        return float("nan")
    return composed_mape(workload_parts(ln_fn, train_w), workload_parts(ln_fn, test_w), train_w, test_w)


def measured_ln(graphs: Sequence[Data]) -> np.ndarray:
    """Each kernel's measured ln(ms): a perfect kernel model, for `composition_floor`."""
    return np.array([float(g.y[0]) for g in graphs])


def summed_mape(test_w: Sequence[Workload]) -> float:
    """Whole-model MAPE of the kernel rows as measured, summed as they are (no composition fit):
    how far a model's kernels, timed one by one, are from its run."""
    if not test_w:
        return float("nan")
    totals, _, measured = workload_sums(measured_ln, test_w)
    return mape(totals, measured)


def composition_floor(graphs: Sequence[Data], workloads: Sequence[Workload]) -> dict[str, dict[str, float]]:
    """Whole-model MAPE of each fold were every kernel priced at its measured time, composed as
    the methods' are (fitted on the fold's training models): leave one GPU out ("logo") and leave
    one model family out ("lomo"). What the composition and the data's own kernel rows allow:
    where a GPU's kernels, measured one by one, add up to more or less than its whole models, no
    kernel model scored on those rows gets below it. Beside each, "logo_sum" and "lomo_sum": the
    same rows summed as they are (`summed_mape`), which tells a fold whose own rows disagree with
    its runs from one whose fit is pulled by other folds' rows."""
    gpus = sorted({w.hardware for w in workloads} & set(by_hardware(graphs)))
    logo = {g: ([w for w in workloads if w.hardware != g], [w for w in workloads if w.hardware == g])
            for g in gpus}
    lomo = {family: (fold[2], fold[3]) for family, fold in model_family_folds(graphs, workloads)}
    return {"logo": {g: model_mape(measured_ln, *f) for g, f in logo.items()},
            "lomo": {g: model_mape(measured_ln, *f) for g, f in lomo.items()},
            "logo_sum": {g: summed_mape(f[1]) for g, f in logo.items()},
            "lomo_sum": {g: summed_mape(f[1]) for g, f in lomo.items()}}


@dataclass(frozen=True)
class Scores:
    mape: dict[str, float]  # method -> kernel MAPE
    n: int  # kernels scored
    model_mape: dict[str, float]  # method -> whole-model MAPE
    models: int  # whole models scored
    # A few of the held-out GPU's own kernels timed (`few_shot`): shots -> method -> MAPE
    shot_mape: dict[str, dict[str, float]] = field(default_factory=dict)  # the other kernels
    shot_model_mape: dict[str, dict[str, float]] = field(default_factory=dict)  # whole models


METHODS = ("gnn", "gbdt", "hybrid", "roofline")  # hybrid: the GNN's and the GBDT's mean ln(ms)
SHOTS = (8, 32)  # a held-out GPU's own matmuls its user times (`few_shot`): a handful, a few more
DRAWS = 5  # draws of the shots per fold, their scores averaged


def ln_function(model: CostModel):
    """`model`'s ln(ms) of kernel graphs, as the protocols price them (`fit_methods`, `fit_calibration`)."""
    if isinstance(model, GraphCostModel):
        return lambda gs: model.predict_ln(gs)[0]
    if model.name == "roofline":
        return roofline_ln
    raise UserError(f"the {model.name} cost model cannot be calibrated: it prices no kernel graphs")


def fit_methods(graphs: Sequence[Data], cfg: GNNConfig, methods: Sequence[str] = METHODS, *,
                gbdt: GBDTConfig | None = None,
                progress: bool = False) -> dict[str, Callable[[Sequence[Data]], np.ndarray]]:
    """Each method trained on `graphs` (the roofline trains on nothing), as ln(ms) per graph: the
    GNN by `cfg`, the GBDT by `gbdt` (default: its own defaults, with `cfg`'s seed)."""
    out: dict[str, Callable[[Sequence[Data]], np.ndarray]] = {}
    if "gnn" in methods:
        out["gnn"] = ln_function(train(graphs, cfg, progress=progress))
    if "gbdt" in methods:
        out["gbdt"] = ln_function(GBDTCostModel.fit(graphs, gbdt or GBDTConfig(seed=cfg.seed)))
    if "hybrid" in methods:
        if "gnn" not in out or "gbdt" not in out:
            raise ValueError("the hybrid is the GNN's and the GBDT's mean: score both with it")
        gnn_ln, gbdt_ln = out["gnn"], out["gbdt"]
        out["hybrid"] = lambda gs: 0.5 * (gnn_ln(gs) + gbdt_ln(gs))
    if "roofline" in methods:
        out["roofline"] = roofline_ln
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; valid: {', '.join(METHODS)}")
    return out


def shot_pool(test_graphs: Sequence[Data], test_w: Sequence[Workload]) -> list[int]:
    """Which of a held-out GPU's kernels its user could time as shots: one-op matmuls of no
    model (micro-benchmarks, so no held-out model's own kernel is seen), measured by the source
    that measured its whole models (the same machine in the same state, the same harness)."""
    models = {w.diagram_hash for w in test_w}
    hashes = [getattr(g, "diagram_hash", "") for g in test_graphs]
    sources = [getattr(g, "source", "") for g in test_graphs]
    measured_models = {src for src, h in zip(sources, hashes) if h in models}
    return [i for i, g in enumerate(test_graphs) if not hashes[i] and sources[i] in measured_models
            and kernel_class(g) == "matmul"]


def _shot_orders(graphs: Sequence[Data], workloads: Sequence[Workload], seed: int,
                 draws: int, most: int) -> list[list[Data]]:
    """`draws` draws of up to `most` shots from one GPU's `shot_pool`, in the order a user of
    that GPU would time them (the first k are the k shots). They depend on `seed` and the GPU's
    name alone: the same shots whether the GPU is held out or trained on, whichever folds run."""
    pool = np.array(shot_pool(graphs, workloads))
    if not len(pool):
        return []
    rng = np.random.default_rng([seed, zlib.crc32(graphs[0].hardware.encode())])
    return [[graphs[i] for i in rng.permutation(pool)[:most]] for _ in range(draws)]


def shot_orders(graphs: Sequence[Data], workloads: Sequence[Workload], seed: int, draws: int,
                most: int) -> dict[str, list[list[Data]]]:
    """Each GPU with whole models in `workloads` and kernels in `graphs`: its `_shot_orders`."""
    by_gpu = defaultdict(list)
    for g in graphs:
        by_gpu[g.hardware].append(g)
    return {gpu: _shot_orders(by_gpu[gpu], [w for w in workloads if w.hardware == gpu], seed, draws, most)
            for gpu in sorted({w.hardware for w in workloads}) if by_gpu.get(gpu)}


def few_shot(fns: dict[str, Callable[[Sequence[Data]], np.ndarray]], pred_ln: dict[str, np.ndarray],
             parts: dict[str, tuple[Parts, Parts]], train_graphs: Sequence[Data],
             test_graphs: Sequence[Data], train_w: Sequence[Workload], test_w: Sequence[Workload], *,
             shots: Sequence[int] = SHOTS, draws: int = DRAWS,
             seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Each method (`fns`; `pred_ln`, its ln(ms) of `test_graphs`; `parts`, its `workload_parts`
    of `train_w` and `test_w`) with k of the held-out GPU's matmuls timed, for each k in `shots`
    (`_shot_orders`): its matmul kernels' times on that GPU scaled by their `calibration` on the
    shots (other kernels are not matmul-bound and keep their price), scored on the GPU's other
    kernels and on its whole models. Every training GPU is calibrated the same way by k of its
    own before the composition is fitted, so a scale the composition learnt for uncalibrated
    prices is not applied twice. The mean over `draws` draws, the same shots for every method. A
    k larger than the held-out GPU's pool is left out."""
    measured = measured_ln(test_graphs)
    mm = np.array([kernel_class(g) in MATMULS for g in test_graphs], bool)
    test_orders = _shot_orders(test_graphs, test_w, seed, draws, max(shots))
    held = {id(g): i for i, g in enumerate(test_graphs)}
    train_orders = shot_orders(train_graphs, train_w, seed, draws, max(shots))
    kernel: dict[str, dict[str, float]] = {}
    model: dict[str, dict[str, float]] = {}
    for m, fn in fns.items():
        shot_ln = {gpu: [fn(order) for order in orders] for gpu, orders in train_orders.items()}
        for k in shots:
            if not test_orders or k > len(test_orders[0]):
                continue
            per_kernel, per_model = [], []
            for d, order in enumerate(test_orders):
                idx = np.array([held[id(g)] for g in order[:k]])
                shift = calibration(pred_ln[m][idx], measured[idx])
                rest = np.ones(len(test_graphs), bool)
                rest[idx] = False
                per_kernel.append(mape(np.exp(pred_ln[m][rest] + shift * mm[rest]), np.exp(measured[rest])))
                own = {gpu: calibration(shot_ln[gpu][d][:k], measured_ln(train_orders[gpu][d][:k]))
                       for gpu in train_orders}
                per_model.append(composed_mape(*parts[m], train_w, test_w,
                                               [own.get(w.hardware, 0.0) for w in train_w], shift))
            kernel.setdefault(str(k), {})[m] = float(np.mean(per_kernel))
            model.setdefault(str(k), {})[m] = float(np.mean(per_model))
    return kernel, model


def score_fold(train_graphs: Sequence[Data], test_graphs: Sequence[Data],
               train_w: Sequence[Workload], test_w: Sequence[Workload], *,
               cfg: GNNConfig, gbdt: GBDTConfig | None = None, methods: Sequence[str] = METHODS,
               shots: Sequence[int] = (), progress: bool = False) -> Scores:
    """Train the learned methods on one side, score them and the roofline on the other; with
    `shots`, also with a few of the held-out side's kernels timed (`few_shot`). Each method
    prices the fold's kernels and workloads once."""
    true = np.exp(measured_ln(test_graphs))
    fns = fit_methods(train_graphs, cfg, methods, gbdt=gbdt, progress=progress)
    pred = {k: f(test_graphs) for k, f in fns.items()}
    parts = {k: (workload_parts(f, train_w), workload_parts(f, test_w)) for k, f in fns.items()}
    whole = {k: composed_mape(*parts[k], train_w, test_w) for k in fns}
    kernel, model = few_shot(fns, pred, parts, train_graphs, test_graphs, train_w, test_w,
                             shots=shots, seed=cfg.seed) if shots else ({}, {})
    return Scores({k: mape(np.exp(p), true) for k, p in pred.items()}, len(test_graphs), whole,
                  len(test_w), kernel, model)


def _note(progress: bool, text: str) -> None:
    """A line on stderr for a long protocol's progress (a fold trains for minutes)."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def by_hardware(graphs: Sequence[Data]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(graphs):
        out[g.hardware].append(i)
    return dict(out)


def leave_one_gpu_out(graphs: Sequence[Data], workloads: Sequence[Workload], *, cfg: GNNConfig,
                      gbdt: GBDTConfig | None = None, gpus: Sequence[str] | None = None,
                      methods: Sequence[str] = METHODS, shots: Sequence[int] = SHOTS,
                      progress: bool = True) -> dict[str, Scores]:
    """Per GPU (default: every GPU with whole-model measurements): train on every other
    machine's kernels (and fit the whole-model composition on every other GPU's models), score
    this GPU's kernels and whole models, and again with `shots` of its own matmuls timed
    (`few_shot`; () for none). Each fold's training starts from the config's seed, so a fold
    scores the same whichever folds run with it."""
    groups = by_hardware(graphs)
    gpus = list(gpus or sorted({w.hardware for w in workloads} & set(groups)))
    missing = [g for g in gpus if g not in groups]
    if missing:
        raise UserError(f"no kernels measured on {', '.join(missing)}; hardware in the data: "
                        f"{', '.join(sorted(groups))}")
    out = {}
    for i, gpu in enumerate(gpus, 1):
        _note(progress, f"fold {i}/{len(gpus)}: {gpu} held out")
        held = set(groups[gpu])
        train_set = [g for i, g in enumerate(graphs) if i not in held]
        test_set = [graphs[i] for i in sorted(held)]
        out[gpu] = score_fold(train_set, test_set, [w for w in workloads if w.hardware != gpu],
                              [w for w in workloads if w.hardware == gpu], cfg=cfg, gbdt=gbdt,
                              methods=methods, shots=shots, progress=progress)
    return out


def leave_one_model_out(graphs: Sequence[Data], workloads: Sequence[Workload], *, cfg: GNNConfig,
                        gbdt: GBDTConfig | None = None, methods: Sequence[str] = METHODS,
                        progress: bool = True) -> dict[str, Scores]:
    """Per model family: train without any kernel measured in that family's graphs (kernel
    micro-benchmarks stay: they belong to no model) and fit the composition on the other
    families; score the family's whole models on every GPU, and its kernels."""
    folds = list(model_family_folds(graphs, workloads))
    out = {}
    for i, (family, fold) in enumerate(folds, 1):
        _note(progress, f"fold {i}/{len(folds)}: {family} held out")
        out[family] = score_fold(*fold, cfg=cfg, gbdt=gbdt, methods=methods, progress=progress)
    return out


def model_family_folds(graphs: Sequence[Data], workloads: Sequence[Workload]):
    """Per model family, in name order: (family, (training kernels, held-out kernels, training
    workloads, held-out workloads)), the family's graphs' kernels held out."""
    for family in sorted({w.family for w in workloads}):
        held = {w.diagram_hash for w in workloads if w.family == family}
        yield family, ([g for g in graphs if g.diagram_hash not in held],
                       [g for g in graphs if g.diagram_hash in held],
                       [w for w in workloads if w.family != family],
                       [w for w in workloads if w.family == family])


def format_table(title: str, rows: dict[str, Scores]) -> str:
    methods = [m for m in METHODS if all(m in s.mape for s in rows.values())]

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"

    lines = [title, "", "| held out | kernels | " + " | ".join(f"{m} kernel MAPE" for m in methods)
             + " | models | " + " | ".join(f"{m} model MAPE" for m in methods) + " |",
             "|---|---:|" + "---:|" * len(methods) + "---:|" + "---:|" * len(methods)]
    for name, s in rows.items():
        lines.append(f"| {name} | {s.n} | " + " | ".join(pct(s.mape[m]) for m in methods)
                     + f" | {s.models} | " + " | ".join(pct(s.model_mape[m]) for m in methods) + " |")
    shot_rows = [(name, k, s) for name, s in rows.items() for k in s.shot_model_mape]
    if shot_rows:
        lines += ["", f"With a few of the held-out GPU's own matmuls timed (`few_shot`, mean of {DRAWS} "
                  "draws): kernel MAPE on its other kernels, whole-model MAPE", "",
                  "| held out | shots | " + " | ".join(f"{m} kernel MAPE" for m in methods) + " | "
                  + " | ".join(f"{m} model MAPE" for m in methods) + " |",
                  "|---|---:|" + "---:|" * (2 * len(methods))]
        for name, k, s in shot_rows:
            lines.append(f"| {name} | {k} | " + " | ".join(pct(s.shot_mape[k][m]) for m in methods)
                         + " | " + " | ".join(pct(s.shot_model_mape[k][m]) for m in methods) + " |")
    return "\n".join(lines)


# Ranking: does a model order the configs of one kernel on one machine as they measured?

EAGER = {"compiler": "eager", "fused": False}  # the library's own kernel, or ops one after another
FUSED = {"compiler": "inductor", "fused": True}  # one torch.compile'd kernel for a fusion group


@dataclass(frozen=True)
class RankGroup:
    """The configs a tuner chooses among for one kernel (or one set of ops) on one machine.

    `kernels[i]` are the kernels config i launches: a model's time for the config is the sum of
    its predicted ms over them (a fusion group unfused is its ops' eager kernels; a TpuGraphs
    configuration, the program's graph with that configuration). Empty when the data has no
    graph for them: only the random-order reference is scored then. `exclude`: kernel hashes that a model
    scored on this group must not have trained on, on `hardware`. `key` is what the split hashes."""

    family: str
    key: str
    hardware: str
    configs: tuple[str, ...]
    measured_ms: tuple[float, ...]
    kernels: tuple[tuple[Data, ...], ...] = ()
    exclude: frozenset[str] = frozenset()


def fusion_members(sub: Subdiagram) -> tuple[Subdiagram, ...]:
    """The eager kernels of a fusion group: one per compute op, cut as from the whole diagram
    (a kernel's hash depends only on its ops and what they read, so it is the measured one)."""
    # The group's inputs were produced outside it: without their producers they are plain inputs.
    props = (*(dataclasses.replace(p, producer=None) for p in sub.inputs), *sub.outputs, *sub.internal)
    mini = Diagram("group", sub.vertices, props, tuple(p.name for p in sub.inputs),
                   tuple(p.name for p in sub.outputs))
    return eager_partition(mini)


def ranking_groups(data: str | Path) -> list[RankGroup]:
    """Every set of configs measured for one kernel on one machine, in three families:
    - "fusion / HW": a fusion group measured fused (inductor) and unfused (its ops run eagerly
      one after another, timed together); the model prices unfused as the sum of its ops' eager
      kernels, fused as the group's kernel;
    - "tiles / HW": a matmul measured with two or more tile configs (and the library's own
      kernel where measured);
    - "SOURCE COLLECTION / HW": config-scope measurements of a whole program (TpuGraphs layouts
      and tiles): the program's graph with each configuration (`features.xla_vector`).
    A config measured more than once (other software) counts by its median."""
    m = read_table("measurements", data, columns=[
        "measurement_id", "scope", "subdiagram_hash", "diagram_hash", "hardware", "kernel_config_json",
        "runtime_ms", "error", "source"])
    m = m[m["runtime_ms"].notna() & m["error"].isna() & (m["runtime_ms"] > 0)
          & m["kernel_config_json"].notna()]
    subs = read_table("subdiagrams", data, columns=["subdiagram_hash", "subdiagram_json"])
    records = dict(zip(subs["subdiagram_hash"], subs["subdiagram_json"]))
    profiles = hardware_profiles(data)
    eager, fused = json.dumps(EAGER, sort_keys=True), json.dumps(FUSED, sort_keys=True)

    out: list[RankGroup] = []
    kernels = m[(m["scope"] == "kernel") & m["subdiagram_hash"].notna()]
    kernels = kernels.assign(config=kernels["kernel_config_json"].map(
        lambda c: json.dumps(json.loads(c), sort_keys=True)))
    by_kernel: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (h, hw_name, c), ms in kernels.groupby(["subdiagram_hash", "hardware", "config"])["runtime_ms"].median().items():
        by_kernel[(h, hw_name)][c] = ms
    for (h, hw_name), runs in sorted(by_kernel.items()):
        hw = profiles.get(hw_name)
        tiles = {c: t for c in runs if (t := KernelConfig.from_record(c)) is not None}
        is_fusion = fused in runs and eager in runs
        is_tiles = bool(tiles) and len(tiles) + (eager in runs) >= 2
        if hw is None or h not in records or not (is_fusion or is_tiles):
            continue
        sub = Subdiagram.from_record(json.loads(records[h]))
        if is_fusion:
            members = fusion_members(sub)
            out.append(RankGroup(f"fusion / {hw_name}", h, hw_name, ("unfused", "fused"),
                                 (runs[eager], runs[fused]),
                                 (tuple(to_data(k, hw) for k in members), (to_data(sub, hw),)),
                                 frozenset({h, *(k.hash for k in members)})))
        if is_tiles:
            names = ([eager] if eager in runs else []) + sorted(tiles)
            out.append(RankGroup(f"tiles / {hw_name}", h, hw_name, tuple(names),
                                 tuple(runs[c] for c in names),
                                 tuple((to_data(sub, hw, tiles.get(c)),) for c in names), frozenset({h})))
    programs = m[m["scope"] == "config"]
    by_program: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for (src, h, hw_name, c), ms in programs.groupby(
            ["source", "diagram_hash", "hardware", "kernel_config_json"])["runtime_ms"].median().items():
        family = f"{src} {json.loads(c).get('collection', 'config')} / {hw_name}"
        by_program[(family, h, hw_name)][c] = ms
    programs_needed = {h for (_, h, _), runs in by_program.items() if len(runs) >= 2}
    graphs_of = programs_of(data, programs_needed)
    for (family, h, hw_name), runs in sorted(by_program.items()):
        if len(runs) < 2:
            continue
        names = sorted(runs)
        hw, sub = profiles.get(hw_name), graphs_of.get(h)
        kernels = () if hw is None or sub is None else tuple(
            (to_data(sub, hw, xla=json.loads(c)),) for c in names)
        out.append(RankGroup(family, h, hw_name, tuple(names), tuple(runs[c] for c in names),
                             kernels, frozenset({sub.hash}) if sub is not None else frozenset()))
    return out


def split_groups(groups: Sequence[RankGroup], seed: int = 0) -> tuple[list[RankGroup], list[RankGroup]]:
    """(training, held-out) halves of each family, by a seeded hash of each group's key: the
    first ceil(n/2) keys in that order are held out. The same seed gives the same split."""
    families: dict[str, list[RankGroup]] = defaultdict(list)
    for g in groups:
        families[g.family].append(g)
    train_half, held = [], []
    for members in families.values():
        keys = sorted({g.key for g in members}, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())
        out = set(keys[:math.ceil(len(keys) / 2)])
        for g in members:
            (held if g.key in out else train_half).append(g)
    return train_half, held


def random_top_k_error(true: Sequence[float], k: int) -> float:
    """The expected top-k error of a uniformly random order: the best of k configs drawn
    without replacement is the i-th fastest with probability C(n-i, k-1) / C(n, k)."""
    t = np.asarray(true, dtype=float)
    return (_expected_best(t, min(k, len(t))) - t.min()) / t.min()


@dataclass(frozen=True)
class RankScores:
    groups: int  # groups scored
    configs: tuple[int, int, float]  # configs per group: min, max, mean
    kendall_tau: dict[str, float]  # method -> mean over groups; nan: the method cannot rank them
    top1: dict[str, float]  # method -> mean top-1 error (fraction); "random": its expectation
    top5: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-ready; a score no method has (nan) is null."""
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: None if math.isnan(v) else v for k, v in d.items()}

        return {"groups": self.groups, "configs_min": self.configs[0], "configs_max": self.configs[1],
                "configs_mean": self.configs[2], "kendall_tau": clean(self.kendall_tau),
                "top1_error": clean(self.top1), "top5_error": clean(self.top5)}


def score_ranking(groups: Sequence[RankGroup],
                  methods: dict[str, Callable[[Sequence[Data]], np.ndarray]]) -> dict[str, RankScores]:
    """Per family: Kendall's tau between each method's predicted and the measured times of a
    group's configs, and top-1 and top-5 error, averaged over the groups; with the expected
    top-k error of a random order for reference. `methods` give ln(ms) per kernel graph."""
    families: dict[str, list[RankGroup]] = defaultdict(list)
    for g in groups:
        families[g.family].append(g)
    out = {}
    for family, members in sorted(families.items()):
        scorable = [g for g in members if g.kernels]
        preds: dict[str, list[np.ndarray]] = {}
        if scorable:
            graphs = [k for g in scorable for ks in g.kernels for k in ks]
            for name, fn in methods.items():
                ms, start, per_group = np.exp(fn(graphs)), 0, []
                for g in scorable:
                    sums = []
                    for ks in g.kernels:
                        sums.append(float(ms[start:start + len(ks)].sum()))
                        start += len(ks)
                    per_group.append(np.array(sums))
                preds[name] = per_group
        tau, top1, top5 = {}, {}, {}
        for name in methods:
            p = preds.get(name)
            if p is None or len(scorable) < len(members):
                tau[name] = top1[name] = top5[name] = float("nan")
                continue
            true = [g.measured_ms for g in members]
            tau[name] = float(np.mean([kendall_tau(list(x), list(t)) for x, t in zip(p, true)]))
            top1[name] = float(np.mean([top_k_error(x, t, 1) for x, t in zip(p, true)]))
            top5[name] = float(np.mean([top_k_error(x, t, 5) for x, t in zip(p, true)]))
        top1["random"] = float(np.mean([random_top_k_error(g.measured_ms, 1) for g in members]))
        top5["random"] = float(np.mean([random_top_k_error(g.measured_ms, 5) for g in members]))
        sizes = [len(g.configs) for g in members]
        out[family] = RankScores(len(members), (min(sizes), max(sizes), float(np.mean(sizes))),
                                 tau, top1, top5)
    return out


def ranking(graphs: Sequence[Data], groups: Sequence[RankGroup], *, cfg: GNNConfig,
            gbdt: GBDTConfig | None = None, methods: Sequence[str] = METHODS,
            progress: bool = True) -> dict[str, RankScores]:
    """Hold out half of each family's groups (`split_groups`); train the GNN and the GBDT on
    every kernel measurement except the held-out groups' (their kernels and, for a fusion group,
    its ops' eager kernels, on that machine); score the held-out groups' orders."""
    _, held = split_groups(groups, cfg.seed)
    excluded = {(h, g.hardware) for g in held for h in g.exclude}
    train_set = [g for g in graphs if (g.kernel_hash, g.hardware) not in excluded]
    return score_ranking(held, fit_methods(train_set, cfg, methods, gbdt=gbdt, progress=progress))


def format_ranking_table(title: str, rows: dict[str, RankScores]) -> str:
    methods = [m for m in METHODS if all(m in s.kendall_tau for s in rows.values())]

    def num(x: float, percent: bool = False) -> str:
        if math.isnan(x):
            return "n/a"
        return f"{100 * x:.1f}%" if percent else f"{x:.2f}"

    def sizes(c: tuple[int, int, float]) -> str:
        return str(c[0]) if c[0] == c[1] else f"{c[0]}-{c[1]} (mean {c[2]:.0f})"

    head = (["family", "groups", "configs per group"] + [f"{m} tau" for m in methods]
            + [f"{m} top-1" for m in (*methods, "random")] + [f"{m} top-5" for m in (*methods, "random")])
    lines = [title, "", "| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(head) - 3)]
    for name, s in rows.items():
        cells = ([name, str(s.groups), sizes(s.configs)] + [num(s.kendall_tau[m]) for m in methods]
                 + [num(s.top1[m], True) for m in (*methods, "random")]
                 + [num(s.top5[m], True) for m in (*methods, "random")])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- a calibration fitted as few_shot scores one (`costmodel calibrate`)


def fit_calibration(model: CostModel, cal: Calibration, release: str | Path, *, progress: bool = True) -> Calibration:
    """`cal` (`costmodel calibrate`'s timed GEMMs) fitted for `model` as `few_shot` scores it:
    the shift from its shots, the composition from `release`'s whole models, each training GPU
    calibrated by as many of its own GEMMs as `cal` timed, drawn by `cal`'s seed
    (`costmodel.models.calibration`)."""
    from costmodel.data.schema import DATASETS_DIR

    good = [s for s in cal.shots if not s.get("error") and (s.get("measured_ms") or 0) > 0]
    if len(good) < MIN_SHOTS:
        errors = sorted({s["error"] for s in cal.shots if s.get("error")})
        raise UserError(f"{len(good)} of {len(cal.shots)} GEMMs were timed on {cal.target}, fewer than "
                        f"{MIN_SHOTS}: nothing to calibrate on" + (f" (errors: {'; '.join(errors)[:300]})" if errors else ""))
    hw = load_profile(cal.target)
    subs = [Subdiagram.from_record(s["subdiagram"]) for s in good]
    predicted = np.log(model.predict(subs, hw))
    shift = calibration(predicted, np.log([s["measured_ms"] for s in good]))
    if progress:
        print(f"{len(good)} GEMMs on {hw.name}: measured / predicted, median {np.exp(shift):.3f}; "
              f"the composition refitted on {release} (minutes the first time)", file=sys.stderr)
    graphs = training_graphs(release, DATASETS_DIR / "cache", progress=progress)
    workloads = model_workloads(release)
    fn = ln_function(model)
    own = {gpu: calibration(fn(orders[0]), measured_ln(orders[0]))
           for gpu, orders in shot_orders(graphs, workloads, int(cal.made.get("seed", 0)), 1, len(good)).items()
           if orders}
    comp = composition_of(workload_parts(fn, workloads), workloads, [own.get(w.hardware, 0.0) for w in workloads])
    a, b, how = comp.terms(hw.name)
    fitted = {"release": Path(release).name, "shots": len(good), "date": now(), "composition_fit": how,
              "training_gpus": {gpu: round(float(np.exp(s)), 4) for gpu, s in own.items()}}
    return dataclasses.replace(cal, cost_model=model.key, shift=shift, composition=(a, b), fitted=fitted)
