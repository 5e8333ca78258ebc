"""Evaluation protocols: the GNN and its baselines, side by side, on data they did not train on.

Baselines:
- roofline: `costmodel.cost.Roofline`, no training;
- gbdt: gradient-boosted trees on flat per-kernel features (the approach of TVM's XGBoost cost
  model): the sum and max of the kernel's node features, the hardware descriptors, the config and
  the roofline terms, predicting ln(ms) less the roofline's ln(ms), as the GNN does.

Metrics: MAPE (mean of |predicted - measured| / measured), and for ranking Kendall's tau and
top-k error ((best measured among the model's top k - true best) / true best), as in TpuGraphs.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from costmodel.cost import Composition
from costmodel.dataset import read_table
from costmodel.diagram import Subdiagram
from costmodel.features import to_data
from costmodel.gnn import GNNConfig, roofline_ln_ms
from costmodel.loader import hardware_profiles
from costmodel.train import train

# Vertices of a repeated transformer block (NeuSight's graphs hold block 0 of `num_layer`).
LAYER = re.compile(r"\.(layer|layers|h|block|blocks)\.\d+(\.|$)")


def flat_features(graphs: Sequence[Data]) -> np.ndarray:
    """One row per kernel: node features summed and maxed, hardware, config, roofline terms."""
    rows = [torch.cat([g.x.sum(0), g.x.max(0).values, g.hw[0], g.config[0], g.roofline[0]])
            for g in graphs]
    return torch.stack(rows).numpy() if rows else np.zeros((0, 0))


def roofline_ln(graphs: Sequence[Data]) -> np.ndarray:
    return np.array([float(roofline_ln_ms(g)[0]) for g in graphs])


class GBDT:
    """Gradient-boosted trees on flat features, predicting the correction to the roofline."""

    name = "gbdt"

    def __init__(self, *, seed: int = 0, max_iter: int = 300) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.model = HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.1,
                                                   random_state=seed)

    def fit(self, graphs: Sequence[Data]) -> GBDT:
        y = np.array([float(g.y[0]) for g in graphs]) - roofline_ln(graphs)
        self.model.fit(flat_features(graphs), y)
        return self

    def predict_ln(self, graphs: Sequence[Data]) -> np.ndarray:
        return roofline_ln(graphs) + self.model.predict(flat_features(graphs))


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
    """(best measured among the k predicted fastest - true best) / true best."""
    order = np.argsort(pred)[:k]
    best = min(true)
    return (min(true[i] for i in order) - best) / best


@dataclass(frozen=True)
class Workload:
    """A whole model measured end to end (NeuSight's e2e latency) and the kernels of its graph:
    `graphs[i]` runs `repeats[i]` times (once, or once per transformer block)."""

    name: str
    hardware: str
    measured_ms: float
    graphs: tuple[Data, ...]
    repeats: tuple[int, ...]
    diagram_hash: str = ""

    @property
    def family(self) -> str:
        """The model family: NeuSight's workload name up to its first '-' (bert_large, gpt3_xl)."""
        return self.name.split("-")[0]


def model_workloads(data: str | Path) -> list[Workload]:
    """Eager whole-model measurements whose graph is in the data, each with the kernels of its
    graph: one per compute vertex (the per-vertex kernel rows measured on that GPU name them),
    repeated `num_layer` times for vertices of the transformer block. Fused runs are left out:
    their kernels are not the graph's."""
    m = read_table("measurements", data)
    m = m[m["diagram_hash"].notna()]
    extra = m["extra_json"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
    models = m[(m["scope"] == "model") & m["runtime_ms"].notna() & ~extra.map(lambda e: bool(e.get("fusion")))]
    nodes = m[(m["scope"] == "kernel") & extra.map(lambda e: "fx_node" in e)]
    node_of = extra[nodes.index].map(lambda e: e["fx_node"])
    v = read_table("vertices", data, columns=["diagram_hash", "vertex", "kind", "module", "source"])
    vertex = {(r.diagram_hash, r.vertex): (r.kind, r.module) for r in v.itertuples()}
    subs = read_table("subdiagrams", data, columns=["subdiagram_hash", "diagram_hash", "subdiagram_json"])
    records = dict(zip(subs["subdiagram_hash"], subs["subdiagram_json"]))
    profiles = hardware_profiles(data)
    kernels: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for row, node in zip(nodes.itertuples(), node_of):
        kind, module = vertex.get((row.diagram_hash, node), ("free", ""))
        if kind != "free" and row.subdiagram_hash in records:
            kernels[(row.diagram_hash, row.hardware)].append((row.subdiagram_hash, module))
    built: dict[str, Subdiagram] = {}
    out = []
    for row in models.itertuples():
        info = json.loads(row.extra_json)
        hw = profiles.get(row.hardware)
        here = kernels.get((row.diagram_hash, row.hardware))
        if hw is None or not here:
            continue
        layers = int(info.get("num_layer") or 1)
        graphs = []
        for h, _ in here:
            if h not in built:
                built[h] = Subdiagram.from_record(json.loads(records[h]))
            graphs.append(to_data(built[h], hw))
        out.append(Workload(info.get("workload", row.diagram_hash), row.hardware, row.runtime_ms,
                            tuple(graphs), tuple(layers if LAYER.search(mod) else 1 for _, mod in here),
                            row.diagram_hash))
    return out


def workload_sums(ln_fn: Callable[[Sequence[Data]], np.ndarray],
                   workloads: Sequence[Workload]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    totals, launches, measured = [], [], []
    for w in workloads:
        ms = np.exp(ln_fn(list(w.graphs)))
        totals.append(float(np.dot(ms, w.repeats)))
        launches.append(float(sum(w.repeats)))
        measured.append(w.measured_ms)
    return np.array(totals), np.array(launches), np.array(measured)


def model_mape(ln_fn: Callable[[Sequence[Data]], np.ndarray], train_w: Sequence[Workload],
               test_w: Sequence[Workload]) -> float:
    """Whole-model MAPE on `test_w`, with the composition fitted on `train_w`."""
    if not test_w:
        return float("nan")
    comp = Composition.fit(*workload_sums(ln_fn, train_w))
    totals, launches, measured = workload_sums(ln_fn, test_w)
    return mape(comp(totals, launches), measured)


@dataclass(frozen=True)
class Scores:
    mape: dict[str, float]  # method -> kernel MAPE
    n: int  # kernels scored
    model_mape: dict[str, float]  # method -> whole-model MAPE
    models: int  # whole models scored


def score_fold(train_graphs: Sequence[Data], test_graphs: Sequence[Data],
               train_w: Sequence[Workload], test_w: Sequence[Workload], *,
               cfg: GNNConfig, progress: bool = False) -> Scores:
    """Train the GNN and the GBDT on one side, score them and the roofline on the other."""
    true = np.exp([float(g.y[0]) for g in test_graphs])
    gnn = train(train_graphs, cfg, progress=progress)
    gbdt = GBDT(seed=cfg.seed).fit(train_graphs)
    methods = {"gnn": lambda gs: gnn.predict_ln(gs)[0], "gbdt": gbdt.predict_ln, "roofline": roofline_ln}
    return Scores({k: mape(np.exp(f(test_graphs)), true) for k, f in methods.items()}, len(test_graphs),
                  {k: model_mape(f, train_w, test_w) for k, f in methods.items()}, len(test_w))


def by_hardware(graphs: Sequence[Data]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(graphs):
        out[g.hardware].append(i)
    return dict(out)


def leave_one_gpu_out(graphs: Sequence[Data], workloads: Sequence[Workload], *, cfg: GNNConfig,
                      gpus: Sequence[str] | None = None, progress: bool = True) -> dict[str, Scores]:
    """Per GPU: train on every other machine's kernels (and fit the whole-model composition on
    every other GPU's models), score this GPU's kernels and whole models."""
    groups = by_hardware(graphs)
    gpus = list(gpus or sorted(h for h in groups if not h.startswith(("cpu", "tpu"))))
    out = {}
    for gpu in gpus:
        held = set(groups[gpu])
        train_set = [g for i, g in enumerate(graphs) if i not in held]
        test_set = [graphs[i] for i in sorted(held)]
        out[gpu] = score_fold(train_set, test_set, [w for w in workloads if w.hardware != gpu],
                              [w for w in workloads if w.hardware == gpu], cfg=cfg, progress=progress)
    return out


def leave_one_model_out(graphs: Sequence[Data], workloads: Sequence[Workload], *, cfg: GNNConfig,
                        progress: bool = True) -> dict[str, Scores]:
    """Per model family: train without any kernel measured in that family's graphs (kernel
    micro-benchmarks stay: they belong to no model) and fit the composition on the other
    families; score the family's whole models on every GPU, and its kernels."""
    out = {}
    for family in sorted({w.family for w in workloads}):
        held = {w.diagram_hash for w in workloads if w.family == family}
        train_set = [g for g in graphs if g.diagram_hash not in held]
        test_set = [g for g in graphs if g.diagram_hash in held]
        out[family] = score_fold(train_set, test_set, [w for w in workloads if w.family != family],
                                 [w for w in workloads if w.family == family], cfg=cfg, progress=progress)
    return out


def format_table(title: str, rows: dict[str, Scores]) -> str:
    methods = ("gnn", "gbdt", "roofline")

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"

    lines = [title, "", "| held out | kernels | " + " | ".join(f"{m} kernel MAPE" for m in methods)
             + " | models | " + " | ".join(f"{m} model MAPE" for m in methods) + " |",
             "|---|---:|" + "---:|" * len(methods) + "---:|" + "---:|" * len(methods)]
    for name, s in rows.items():
        lines.append(f"| {name} | {s.n} | " + " | ".join(pct(s.mape[m]) for m in methods)
                     + f" | {s.models} | " + " | ".join(pct(s.model_mape[m]) for m in methods) + " |")
    return "\n".join(lines)
