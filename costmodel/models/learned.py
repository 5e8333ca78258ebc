"""What every learned cost model shares: it predicts ln(ms) of kernel graphs
(`features.to_data`), adds how eager execution composes kernels into a whole model, and says
when a target lies outside the hardware it learned from or its checkpoint was made with other
features.

A subclass implements `predict_ln(graphs) -> (mean, std)` and `save`/`load`; this base gives it
`predict`, `predict_plan` (kernel times with their spread, the composition's overhead and the
warnings) and the checks.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
from torch_geometric.data import Data

from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.ir.plan import KernelConfig, Plan
from costmodel.models import features
from costmodel.models.base import Composition, CostModel, KernelCost, PlanCost


class GraphCostModel(CostModel):
    """A cost model learned on kernel graphs. `trained_on` says what it saw (hardware names,
    the data's fingerprint, the feature code's hash); `hw_range` is the (min, max) of each
    hardware descriptor over its training hardware."""

    def __init__(self, *, trained_on: dict | None = None, composition: Composition = Composition(),
                 hw_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> None:
        self.trained_on = dict(trained_on or {})
        self.composition = composition
        self.hw_range = hw_range

    @abc.abstractmethod
    def predict_ln(self, graphs: Sequence[Data]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, spread) of ln(ms), one per graph; spread 0 where the model has none."""

    def predict(self, subdiagrams: Sequence[Subdiagram], target: HardwareProfile | str,
                configs: Sequence[KernelConfig | None] | None = None) -> np.ndarray:
        hw = load_profile(target) if isinstance(target, str) else target
        mean, _ = self._predict_ln(list(zip(subdiagrams, self._configs(subdiagrams, configs))), hw)
        return np.exp(mean)

    def _predict_ln(self, kernels: Sequence[tuple[Subdiagram, KernelConfig | None]],
                    hw: HardwareProfile) -> tuple[np.ndarray, np.ndarray]:
        """`predict_ln` of (subdiagram, config) pairs, each distinct pair featurised and priced
        once: a model's repeated layers are one kernel (same `features.graph_key`, same graph)."""
        slot: dict[tuple, int] = {}
        unique: list[tuple[Subdiagram, KernelConfig | None]] = []
        inverse = np.empty(len(kernels), dtype=np.int64)
        for i, (sub, config) in enumerate(kernels):
            key = (features.graph_key(sub), config)
            if key not in slot:
                slot[key] = len(unique)
                unique.append((sub, config))
            inverse[i] = slot[key]
        mean, std = self.predict_kernels(unique, hw)
        return mean[inverse], std[inverse]

    def predict_kernels(self, kernels: Sequence[tuple[Subdiagram, KernelConfig | None]],
                        hw: HardwareProfile) -> tuple[np.ndarray, np.ndarray]:
        """`predict_ln` of the kernels' graphs on `hw`; a model that needs less than the graph
        (the GBDT: its flat rows) overrides it."""
        return self.predict_ln([features.to_data(s, hw, c) for s, c in kernels])

    def plan_total(self, kernels_ms: float, launches: int, target: str = "") -> float:
        return float(self.composition(np.array([kernels_ms]), np.array([float(launches)]), [target])[0])

    def predict_plan(self, diagram: Diagram, target: HardwareProfile | str,
                     plan: Plan | None = None) -> PlanCost:
        """Kernel times with their spread, plus the learned cost of running them back to back;
        a target outside the training hardware, or features other than the checkpoint's, are
        said in `warnings`."""
        hw = load_profile(target) if isinstance(target, str) else target
        kernels = (plan or Plan()).kernels(diagram)
        mean, std = self._predict_ln([(k.subdiagram, k.config) for k in kernels], hw)
        ms = np.exp(mean)
        total = self.plan_total(float(ms.sum()), (plan or Plan()).launches(len(ms)), hw.name)
        return PlanCost(hw.name, self.name, tuple(
            KernelCost(k.subdiagram, k.config, float(t), float(s)) for k, t, s in zip(kernels, ms, std)),
            total - float(ms.sum()), self.warnings(hw), self.composition.terms(hw.name))

    def warnings(self, hw: HardwareProfile) -> tuple[str, ...]:
        out = []
        outside = self.extrapolation(hw)
        if outside:
            out.append(f"{hw.name} lies outside the hardware this model was trained on "
                       f"({', '.join(self.trained_on.get('hardware', []))}) in: {', '.join(outside)}; "
                       "the prediction extrapolates" + self._extrapolation_note())
        if (stale := self.feature_mismatch()):
            out.append(stale)
        return tuple(out)

    def _extrapolation_note(self) -> str:
        return ""

    def feature_mismatch(self) -> str:
        """One line when this model was trained with other feature code than this one's
        (or before checkpoints recorded it); "" when they agree."""
        trained = self.trained_on.get("features_hash")
        if trained == features.code_hash():
            return ""
        if trained is None:
            return ("this checkpoint does not record the feature code it was trained with (it "
                    "predates the record); if the features changed since, retrain it "
                    "(costmodel train)")
        return (f"this checkpoint was trained with feature code {trained}, these features are "
                f"{features.code_hash()}: its predictions may be off; retrain it (costmodel train)")

    def hardware_seen(self) -> frozenset[int]:
        """Indices of the hardware descriptors this model reads (`features.hardware_columns`)."""
        return frozenset(features.hardware_columns(self.config.hardware))  # type: ignore[attr-defined]

    def extrapolation(self, hw: HardwareProfile) -> list[str]:
        """Descriptors this model reads whose value for `hw` lies outside the training hardware's
        range by more than 10% of that range (5% of the value where the range is a point): what
        the model never saw. Figures the profile lacks are not counted (a missing figure is not
        an extrapolation), nor descriptors the model does not read."""
        if self.hw_range is None:
            return []
        desc = hw.descriptor()
        seen = self.hardware_seen()
        out = []
        for i, ((key, value), lo, hi) in enumerate(zip(desc.items(), *self.hw_range)):
            if i not in seen:
                continue
            bare = key.removeprefix("log10_")
            if key.startswith("has_") or desc.get(f"has_{bare}", 1.0) == 0.0:
                continue
            margin = 0.1 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-9)
            if value < lo - margin or value > hi + margin:
                out.append(key)
        return out
