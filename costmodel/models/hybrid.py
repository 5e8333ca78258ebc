"""The hybrid: the GNN's and the GBDT's predictions averaged in log space (a geometric mean).

The two learn the same target (the correction to the roofline) from different views of a
kernel: message passing over its graph, and trees over its flat features. Where they disagree
neither is sure, and their mean errs less than either on held-out hardware
(`reports/unseen-hardware.md`). The spread of a prediction is the GNN ensemble's and half
the two models' disagreement, added in quadrature.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from costmodel.hardware import HardwareProfile
from costmodel.ir.diagram import Subdiagram
from costmodel.ir.plan import KernelConfig
from costmodel.models.base import Composition
from costmodel.models.gbdt import GBDTCostModel
from costmodel.models.gnn import GNNCostModel
from costmodel.models.learned import GraphCostModel


class HybridCostModel(GraphCostModel):
    name = "hybrid"

    def __init__(self, gnn: GNNCostModel, gbdt: GBDTCostModel, *,
                 composition: Composition = Composition()) -> None:
        super().__init__(trained_on={**gnn.trained_on, "members": ["gnn", "gbdt"]},
                         composition=composition, hw_range=gnn.hw_range)
        self.gnn, self.gbdt = gnn, gbdt

    def _extrapolation_note(self) -> str:
        return self.gnn._extrapolation_note()

    def hardware_seen(self) -> frozenset[int]:
        return self.gnn.hardware_seen() | self.gbdt.hardware_seen()

    def predict_ln(self, graphs: Sequence[Data]) -> tuple[np.ndarray, np.ndarray]:
        a, spread = self.gnn.predict_ln(graphs)
        b, _ = self.gbdt.predict_ln(graphs)
        return self._mean(a, spread, b)

    def predict_kernels(self, kernels: Sequence[tuple[Subdiagram, KernelConfig | None]],
                        hw: HardwareProfile) -> tuple[np.ndarray, np.ndarray]:
        a, spread = self.gnn.predict_kernels(kernels, hw)
        b, _ = self.gbdt.predict_kernels(kernels, hw)
        return self._mean(a, spread, b)

    @staticmethod
    def _mean(a: np.ndarray, spread: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 0.5 * (a + b), np.sqrt(spread ** 2 + (0.5 * (a - b)) ** 2)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        parts = {}
        for key, model in (("gnn", self.gnn), ("gbdt", self.gbdt)):
            model.save(path.with_suffix(f".{key}.tmp"))
            parts[key] = torch.load(path.with_suffix(f".{key}.tmp"), weights_only=True)
            path.with_suffix(f".{key}.tmp").unlink()
        torch.save({"cost_model": "hybrid", "parts": parts, "composition": asdict(self.composition)}, path)

    @classmethod
    def load(cls, path: str | Path) -> HybridCostModel:
        import tempfile

        doc = torch.load(Path(path), weights_only=True)
        models = {}
        with tempfile.TemporaryDirectory() as tmp:
            for key, kind in (("gnn", GNNCostModel), ("gbdt", GBDTCostModel)):
                torch.save(doc["parts"][key], Path(tmp) / f"{key}.pt")
                models[key] = kind.load(Path(tmp) / f"{key}.pt")
        return cls(models["gnn"], models["gbdt"], composition=Composition(**doc["composition"]))
