"""The learned cost model: a graph neural network over a kernel's graph.

It predicts ln(runtime ms) of a kernel (`costmodel.models.features.to_data`) as the roofline's ln(ms)
plus a learned correction: the network sees the kernel's graph (message passing over its
vertices and boundary tensors), the hardware descriptors, the kernel config and the roofline
terms, and learns how far below peak real kernels run. Predicting the ratio to the roofline
rather than the raw time keeps predictions on unseen hardware anchored to that hardware's
physics. An ensemble of independently seeded members gives each prediction a spread.

Two guards keep it from extrapolating wildly on hardware unlike its training GPUs
(reports/leave-one-gpu-out.md measured both):
- the hardware descriptors are clamped to the training range, so the network sees the nearest
  hardware it knows, while the roofline terms still carry the target's own peaks and bandwidth;
- the correction, ln(ms / roofline ms), is bounded to [-2.5, 4.0] (`GNNConfig.correction`),
  a little wider than every kernel of release 0.1: those lie in [-2.18, 3.90], and on the five
  NeuSight GPUs the 1st to 99th percentiles lie in [0.01, 2.44] (the snippet in
  reports/leave-one-gpu-out.md). No prediction leaves the band.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import (
    GINEConv,
    SAGEConv,
    global_add_pool,
    global_max_pool,
    global_mean_pool,
)

from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile
from costmodel.ir.diagram import Subdiagram
from costmodel.ir.plan import KernelConfig
from costmodel.models import features
from costmodel.models.base import Composition
from costmodel.models.learned import GraphCostModel

CONVS = ("gine", "sage")


@dataclass(frozen=True)
class GNNConfig:
    """Frozen training arguments; their hash (with the data's fingerprint) names the checkpoint
    (`train.checkpoint_name`)."""

    conv: str = "sage"  # message passing layer, chosen by measurement (reports/gnn-architecture.md)
    hidden: int = 64
    layers: int = 3
    epochs: int = 12  # with 3 members: the shipped checkpoint trains in under 15 min on 2 cores
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    rank_weight: float = 0.5  # pairwise ranking loss among configs of one kernel on one machine
    members: int = 3  # ensemble size: the spread of their predictions is the uncertainty
    # Hardware inputs: "all" descriptors, or "physical" ones only (peaks, bandwidth, ridge,
    # units, caches, clock, power): flags that only one GPU has let the head tell GPUs apart
    # instead of learning physics (DESIGN: prefer physically meaningful quantities).
    # "ratios": per-SM figures and ratios between peaks, which a new GPU interpolates within.
    # With "time" weights it scored 19.9% mean whole-model MAPE over the five leave-one-GPU-out
    # folds (seed 0) against 20.9% for these defaults, but trained on the whole release it
    # priced gpt2 1x128 slower on an H100 than on an A100: kept as an option (README).
    hardware: str = "all"  # or "physical", "ratios", "minimal", "none" (features.HARDWARE)
    # Standardised descriptors clamped to the training range (Normaliser.lo/hi).
    clamp_hardware: bool = True
    # Bounds of ln(measured / roofline) the head's output is squashed into (a sigmoid), or None.
    correction: tuple[float, float] | None = (-2.5, 4.0)
    # Sample weights of the regression: "none", or "time": a kernel weighs (ms / median)^0.5,
    # so the kernels that make up a whole model's time count for more than the many tiny ones.
    weight: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.correction is not None:  # JSON gives a list back
            object.__setattr__(self, "correction", tuple(float(x) for x in self.correction))


class KernelGNN(nn.Module):
    """One ensemble member. Input: a batch of kernel graphs; output: ln(ms), one per graph."""

    def __init__(self, cfg: GNNConfig, hw_dim: int, config_dim: int = features.CONFIG_DIM) -> None:
        super().__init__()
        h = cfg.hidden
        self.encode = nn.Sequential(nn.Linear(features.NODE_DIM, h), nn.ReLU(), nn.Linear(h, h))
        self.convs = nn.ModuleList(self._conv(cfg.conv, h) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(cfg.layers))
        self.config_dim = config_dim  # checkpoints from before the XLA configs read the first 8
        context = hw_dim + config_dim + features.ROOFLINE_DIM
        self.head = nn.Sequential(nn.Linear(3 * h + context, 2 * h), nn.ReLU(),
                                  nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.correction = cfg.correction

    @staticmethod
    def _conv(kind: str, h: int) -> nn.Module:
        if kind == "gine":
            return GINEConv(nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h)),
                            edge_dim=features.EDGE_DIM)
        if kind == "sage":
            return SAGEConv(h, h)
        raise ValueError(f"unknown conv {kind!r}; valid: {', '.join(CONVS)}")

    def forward(self, data: Batch, hw: torch.Tensor) -> torch.Tensor:
        x = self.encode(data.x)  # (N, h)
        for conv, norm in zip(self.convs, self.norms):
            if isinstance(conv, GINEConv):
                update = conv(x, data.edge_index, data.edge_attr)
            else:
                update = conv(x, data.edge_index)
            x = norm(x + torch.relu(update))
        g = torch.cat([global_add_pool(x, data.batch) / 8.0, global_mean_pool(x, data.batch),
                       global_max_pool(x, data.batch)], dim=1)  # (G, 3h)
        z = torch.cat([g, hw, data.config[:, :self.config_dim], data.roofline], dim=1)
        c = self.head(z).squeeze(-1)
        if self.correction is not None:
            lo, hi = self.correction
            c = lo + (hi - lo) * torch.sigmoid(c)
        return features.roofline_ln_ms(data) + c


@dataclass(frozen=True)
class Normaliser:
    """Selects the hardware descriptors a model sees and standardises them with the training
    set's statistics; with `lo`/`hi` (the standardised training range), clamps them to it."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    columns: tuple[int, ...] = ()  # () = every descriptor
    lo: tuple[float, ...] = ()  # () = no clamping (checkpoints made before it)
    hi: tuple[float, ...] = ()

    @classmethod
    def fit(cls, hw: torch.Tensor, columns: tuple[int, ...] = (), *, clamp: bool = False) -> Normaliser:
        hw = hw[:, list(columns)] if columns else hw
        std = hw.std(dim=0)
        out = cls(tuple(hw.mean(dim=0).tolist()), tuple(torch.where(std > 1e-6, std, 1.0).tolist()),
                  tuple(columns))
        if not clamp:
            return out
        z = (hw - torch.tensor(out.mean)) / torch.tensor(out.std)
        return dataclasses.replace(out, lo=tuple(z.min(dim=0).values.tolist()),
                                   hi=tuple(z.max(dim=0).values.tolist()))

    def __call__(self, hw: torch.Tensor) -> torch.Tensor:
        hw = hw[:, list(self.columns)] if self.columns else hw
        z = (hw - torch.tensor(self.mean)) / torch.tensor(self.std)
        if self.lo:
            z = torch.clamp(z, torch.tensor(self.lo), torch.tensor(self.hi))
        return z


class GNNCostModel(GraphCostModel):
    """The ensemble as a `CostModel`: predictions are the members' mean in log space, their
    spread the std over members."""

    name = "gnn"

    def __init__(self, config: GNNConfig, members: Sequence[KernelGNN], normaliser: Normaliser,
                 *, trained_on: dict | None = None, composition: Composition = Composition(),
                 hw_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> None:
        super().__init__(trained_on=trained_on, composition=composition, hw_range=hw_range)
        self.config = config
        self.members = list(members)
        self.normaliser = normaliser
        for m in self.members:
            m.eval()

    def _extrapolation_note(self) -> str:
        return (" (the network sees the nearest descriptors it was trained on, the roofline terms "
                "the target's own)") if self.normaliser.lo else ""

    def predict_ln(self, graphs: Sequence[Data], batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over the ensemble of ln(ms), one per graph."""
        return self._predict_batches(Batch.from_data_list(list(graphs[start:start + batch_size]))
                                     for start in range(0, len(graphs), batch_size))

    def predict_kernels(self, kernels: Sequence[tuple[Subdiagram, KernelConfig | None]],
                        hw: HardwareProfile, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """As `predict_ln` of their graphs, batched straight from the kernels (`features.to_batch`)."""
        return self._predict_batches(features.to_batch(kernels[start:start + batch_size], hw)
                                     for start in range(0, len(kernels), batch_size))

    @torch.no_grad()
    def _predict_batches(self, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
        means, stds = [], []
        for batch in batches:
            hw = self.normaliser(batch.hw)
            preds = torch.stack([m(batch, hw) for m in self.members])  # (M, G)
            means.append(preds.mean(0))
            stds.append(preds.std(0) if len(self.members) > 1 else torch.zeros_like(preds[0]))
        if not means:
            return np.zeros(0), np.zeros(0)
        return torch.cat(means).double().numpy(), torch.cat(stds).double().numpy()

    def save(self, path: str | Path) -> None:
        torch.save({"cost_model": "gnn", "config": asdict(self.config),
                    "hw_dim": self.members[0].head[0].in_features - 3 * self.config.hidden
                    - self.members[0].config_dim - features.ROOFLINE_DIM,
                    "config_dim": self.members[0].config_dim,
                    "features_version": features_version(),
                    "members": [m.state_dict() for m in self.members],
                    "normaliser": asdict(self.normaliser), "trained_on": self.trained_on,
                    "composition": asdict(self.composition),
                    "hw_range": None if self.hw_range is None else [list(r) for r in self.hw_range]},
                   Path(path))

    @classmethod
    def load(cls, path: str | Path) -> GNNCostModel:
        doc = torch.load(Path(path), weights_only=True)
        if not _loadable(doc.get("features_version", "")):
            raise UserError(f"{path} was trained on features of sizes {doc.get('features_version')}, "
                            f"these are {features_version()}: it cannot load; retrain it "
                            "(costmodel train)")
        # Checkpoints from before the guards have no such keys: they ran unguarded.
        cfg = GNNConfig(**{"clamp_hardware": False, "correction": None, **doc["config"]})
        members = []
        for state in doc["members"]:
            m = KernelGNN(cfg, doc["hw_dim"], doc.get("config_dim", features.KERNEL_CONFIG_DIM))
            m.load_state_dict(state)
            members.append(m)
        norm = Normaliser(**{k: tuple(v) for k, v in doc["normaliser"].items()})
        if not norm.columns:  # "every descriptor" when it was saved: those, not ones added since
            norm = dataclasses.replace(norm, columns=tuple(range(len(norm.mean))))
        rng = doc.get("hw_range")
        return cls(cfg, members, norm, trained_on=doc["trained_on"],
                   composition=Composition(**doc.get("composition", {})),
                   hw_range=None if rng is None else (tuple(rng[0]), tuple(rng[1])))


def _loadable(version: str) -> bool:
    """Whether a checkpoint's feature sizes can run here: the same node, edge and roofline
    sizes, and at most this many config numbers (older ones read the first of them)."""
    parts = version.split(":")
    now = features_version().split(":")
    return len(parts) == 4 and parts[:2] == now[:2] and parts[3] == now[3] and int(parts[2]) <= int(now[2])


def features_version() -> str:
    """The feature sizes a checkpoint's tensors are shaped for (a different layout cannot load;
    a different meaning of the same sizes is `features.code_hash`'s to catch)."""
    return f"{features.NODE_DIM}:{features.EDGE_DIM}:{features.CONFIG_DIM}:{features.ROOFLINE_DIM}"
