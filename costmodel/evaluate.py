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

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from costmodel.gnn import GNNConfig, roofline_ln_ms
from costmodel.train import train


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
class Scores:
    mape: dict[str, float]  # method -> MAPE
    n: int


def score_kernels(train_graphs: Sequence[Data], test_graphs: Sequence[Data], *,
                  cfg: GNNConfig, progress: bool = False) -> tuple[Scores, object]:
    """Train the GNN and the GBDT on one set, score them and the roofline on the other."""
    true = np.exp([float(g.y[0]) for g in test_graphs])
    gnn = train(train_graphs, cfg, progress=progress)
    gnn_ln, _ = gnn.predict_ln(list(test_graphs))
    gbdt = GBDT(seed=cfg.seed).fit(train_graphs)
    out = {"gnn": mape(np.exp(gnn_ln), true),
           "gbdt": mape(np.exp(gbdt.predict_ln(test_graphs)), true),
           "roofline": mape(np.exp(roofline_ln(test_graphs)), true)}
    return Scores(out, len(test_graphs)), gnn


def by_hardware(graphs: Sequence[Data]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(graphs):
        out[g.hardware].append(i)
    return dict(out)


def leave_one_gpu_out(graphs: Sequence[Data], *, cfg: GNNConfig, gpus: Sequence[str] | None = None,
                      progress: bool = True) -> dict[str, Scores]:
    """Per GPU: train on every other machine's kernels, score on this GPU's kernels."""
    groups = by_hardware(graphs)
    gpus = list(gpus or sorted(h for h in groups if not h.startswith(("cpu", "tpu"))))
    out = {}
    for gpu in gpus:
        held = set(groups[gpu])
        train_set = [g for i, g in enumerate(graphs) if i not in held]
        test_set = [graphs[i] for i in sorted(held)]
        out[gpu], _ = score_kernels(train_set, test_set, cfg=cfg, progress=progress)
    return out


def format_table(title: str, rows: dict[str, Scores]) -> str:
    methods = ("gnn", "gbdt", "roofline")
    lines = [title, "", f"| held out | kernels | {' | '.join(m + ' MAPE' for m in methods)} |",
             "|---|---:|" + "---:|" * len(methods)]
    for name, s in rows.items():
        lines.append(f"| {name} | {s.n} | " + " | ".join(f"{100 * s.mape[m]:.1f}%" for m in methods) + " |")
    return "\n".join(lines)


def log_ratio(pred_ms: float, true_ms: float) -> float:
    return math.log(pred_ms / true_ms)
