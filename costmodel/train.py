"""Training the GNN cost model: regression on ln(ms) plus a ranking loss among configs.

Batches are built from whole groups (one kernel on one machine, all its measured configs), so
the ranking loss always has pairs to compare: a tuner needs the order of configs right more
than their absolute times.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data
from tqdm import tqdm

from costmodel.gnn import GNNConfig, GNNCostModel, KernelGNN, Normaliser, hardware_columns


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
                loss = torch.nn.functional.mse_loss(pred, batch.y)
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
    return GNNCostModel(cfg, members, normaliser, trained_on=trained_on, hw_range=hw_range)


def training_graphs(data: str | Path, cache: str | Path, *, progress: bool = True) -> list[Data]:
    """Kernel examples of a release (or the working data), without kernels that launch nothing:
    NeuSight timed view and dropout nodes alone, and what it measured there (about 0.01 ms) is
    Python and launch overhead, not kernel time."""
    from costmodel.features import NODE_TYPES, OP_KINDS
    from costmodel.loader import KernelDataset

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


def checkpoint_name(cfg: GNNConfig, data_fingerprint: str) -> str:
    """Named by the frozen training arguments and the data they saw."""
    return f"gnn-{cfg.digest()}-{data_fingerprint[:12]}.pt"
