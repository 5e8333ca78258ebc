"""Training the learned cost models and saving their checkpoints.

The GNN: regression on ln(ms) plus a ranking loss among configs. Batches are built from whole
groups (one kernel on one machine, all its measured configs), so the ranking loss always has
pairs to compare: a tuner needs the order of configs right more than their absolute times.
The GBDT: `GBDTCostModel.fit`. Both then fit how their kernel times compose into whole models
(`fit_composition`) on the whole-model measurements in the data.
"""
from __future__ import annotations

import hashlib
import json
import platform
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data
from tqdm import tqdm

from costmodel.data.loader import fingerprint
from costmodel.data.schema import DATASETS_DIR
from costmodel.data.shards import table_files
from costmodel.errors import UserError
from costmodel.models import features, numerics
from costmodel.models.base import Composition
from costmodel.models.examples import KernelDataset, model_workloads, workload_sums
from costmodel.models.gbdt import GBDTConfig, GBDTCostModel
from costmodel.models.features import hardware_columns, sample_weights
from costmodel.models.gnn import GNNConfig, GNNCostModel, KernelGNN, Normaliser
from costmodel.models.learned import GraphCostModel


def group_batches(graphs: Sequence[Data], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Indices in batches of about `batch_size`, each group (kernel hash, hardware) kept whole."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, g in enumerate(graphs):
        groups[(g.kernel_hash, g.hardware)].append(i)
    order = list(groups.values())
    rng.shuffle(order)
    batch: list[int] = []
    for members in order:
        batch.extend(members)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def ranking_loss(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Logistic pairwise loss over pairs of one group whose measured times differ by over 2%."""
    same = group[:, None] == group[None, :]
    diff = y[:, None] - y[None, :]
    pairs = same & (diff > 0.02)  # i measured slower than j
    if not bool(pairs.any()):
        return pred.new_zeros(())
    margin = pred[:, None] - pred[None, :]
    return torch.nn.functional.softplus(-margin[pairs]).mean()


def train(graphs: Sequence[Data], cfg: GNNConfig = GNNConfig(), *, progress: bool = True,
          trained_on: dict | None = None) -> GNNCostModel:
    """Train the ensemble on `graphs` (each with y = ln ms, kernel_hash and hardware). The same
    graphs, config and machine give the same weights."""
    if not graphs:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    normaliser = Normaliser.fit(torch.cat([g.hw for g in graphs]), hardware_columns(cfg.hardware),
                                clamp=cfg.clamp_hardware)
    hw_dim = len(normaliser.mean)
    group_ids: dict[tuple[str, str], int] = {}
    gid = torch.tensor([group_ids.setdefault((g.kernel_hash, g.hardware), len(group_ids))
                        for g in graphs])
    weight = sample_weights(torch.cat([g.y for g in graphs]), cfg.weight)
    members = []
    steps = cfg.members * cfg.epochs
    bar = tqdm(total=steps, desc="train", unit="epoch", disable=not progress)
    for k in range(cfg.members):
        seed = cfg.seed * 1000 + k
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = KernelGNN(cfg, hw_dim)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        for epoch in range(cfg.epochs):
            model.train()
            total, n = 0.0, 0
            for idx in group_batches(graphs, cfg.batch_size, rng):
                batch = Batch.from_data_list([graphs[i] for i in idx])
                pred = model(batch, normaliser(batch.hw))
                loss = (weight[idx] * (pred - batch.y) ** 2).mean()
                if cfg.rank_weight:
                    loss = loss + cfg.rank_weight * ranking_loss(pred, batch.y, gid[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            sched.step()
            bar.update(1)
            bar.set_postfix(member=k, loss=f"{total / n:.4f}")
        members.append(model)
    bar.close()
    hw = torch.cat([g.hw for g in graphs])
    hw_range = (tuple(hw.min(0).values.tolist()), tuple(hw.max(0).values.tolist()))
    return GNNCostModel(cfg, members, normaliser, hw_range=hw_range,
                        trained_on={"features_hash": features.code_hash(), **(trained_on or {})})


def fit_composition(model: GraphCostModel, data: str | Path) -> Composition:
    """How `model`'s kernel times add up to the whole-model times measured in `data`, with each
    GPU's own scale where it has enough of them (`Composition.fit`)."""
    workloads = model_workloads(data)
    return Composition.fit(*workload_sums(lambda gs: model.predict_ln(gs)[0], workloads),
                           [w.hardware for w in workloads])


def environment() -> dict[str, str]:
    """The versions and CPU kernels (`numerics`) a training's weights depend on, which a
    checkpoint records: the same data, config and seed in another set-up can train other weights
    (a GNN retrained in a fresh install on 2026-12-03 did: README), so a checkpoint says what it
    was made with."""
    from importlib import metadata

    return {"python": platform.python_version(),
            **{p: metadata.version(p) for p in ("torch", "torch_geometric", "numpy", "scikit-learn")},
            "cpu": numerics.described()}


def train_checkpoint(kind: str, data: Path, cfg: GNNConfig | GBDTConfig, out: Path, *,
                     gbdt: GBDTConfig | None = None, make_default: bool = False,
                     progress: bool = True) -> tuple[GraphCostModel, Path, float]:
    """Train a `kind` ("gnn", "gbdt" or "hybrid": the GNN by `cfg`, the GBDT by `gbdt`, default
    its own defaults with `cfg`'s seed) model on the release at `data`, fit its composition,
    save it in `out` (named by its config and the data) and, with `make_default`, make it the
    one that kind loads. Returns the model, its path and the seconds training took."""
    from costmodel.models.registry import set_default

    graphs = training_graphs(data, DATASETS_DIR / "cache", progress=progress)
    start = time.perf_counter()
    trained_on = {"data": data.name, "fingerprint": fingerprint(data),
                  "hardware": sorted({g.hardware for g in graphs}), "examples": len(graphs),
                  "features_hash": features.code_hash(), "environment": environment()}
    if kind == "gnn":
        model: GraphCostModel = train(graphs, cfg, progress=progress, trained_on=trained_on)
    elif kind == "gbdt":
        model = GBDTCostModel.fit(graphs, cfg, trained_on=trained_on)
    else:  # the hybrid: both
        from costmodel.models.hybrid import HybridCostModel

        gnn = train(graphs, cfg, progress=progress, trained_on=trained_on)
        trees = GBDTCostModel.fit(graphs, gbdt or GBDTConfig(seed=cfg.seed), trained_on=trained_on)
        gnn.composition, trees.composition = fit_composition(gnn, data), fit_composition(trees, data)
        model = HybridCostModel(gnn, trees)
    model.composition = fit_composition(model, data)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    path = out / checkpoint_name(kind, cfg, fingerprint(data))
    model.save(path)
    if make_default:
        set_default(kind, path)
    return model, path, seconds


def training_graphs(data: str | Path, cache: str | Path, *, progress: bool = True) -> list[Data]:
    """Kernel examples of a release (or the working data), without kernels that launch nothing:
    NeuSight timed view and dropout nodes alone, and what it measured there (about 0.01 ms) is
    Python and launch overhead, not kernel time."""
    from costmodel.models.features import NODE_TYPES, OP_KINDS

    if not table_files("measurements", data):
        raise UserError(f"{data} holds no measurements table (no such folder, or not a dataset); "
                        f"give a release folder (datasets/releases/0.1) or the working data (datasets/data)")
    if (Path(data) / "manifest.json").is_file():  # a release: trained on only if it is intact
        from costmodel.data.release import verify

        problems = verify(data)
        if problems:
            raise UserError(f"release {data} fails verification ({len(problems)} problems, the "
                            f"first: {problems[0]}); run costmodel dataset verify {data}")
    free = len(NODE_TYPES) + OP_KINDS.index("free")
    vertex = NODE_TYPES.index("vertex")
    dataset = KernelDataset(cache, data=data, progress=progress)
    out = []
    for g in dataset:
        is_vertex = g.x[:, vertex] > 0
        if bool((g.x[is_vertex, free] > 0).all()):
            continue
        out.append(g)
    return out


def checkpoint_name(kind: str, cfg: GNNConfig | GBDTConfig, data_fingerprint: str) -> str:
    """Named by the kind, its frozen training arguments and the data they saw."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{digest}-{data_fingerprint[:12]}.pt"
