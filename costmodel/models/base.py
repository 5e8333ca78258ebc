"""The cost-model contract: price kernels (subdiagrams with a kernel config) on a hardware
target, in milliseconds, and the values a price comes back as.

`CostModel` is the plug-in point: `predict / update / save / load` (the TVM meta_schedule life
cycle). Implementations live beside it (`roofline`, `gnn`, `gbdt`); `registry` resolves a name.
This module imports none of them.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.ir.plan import KernelConfig, Plan

@dataclass(frozen=True)
class KernelCost:
    subdiagram: Subdiagram
    config: KernelConfig | None
    ms: float
    spread: float = 0.0  # the prediction's uncertainty: std of ln(ms) over an ensemble


@dataclass(frozen=True)
class PlanCost:
    """The price of a plan: one entry per kernel, what running them back to back adds (learned
    from whole-model measurements; 0 for the roofline), and the total in milliseconds."""

    target: str
    cost_model: str
    kernels: tuple[KernelCost, ...]
    overhead_ms: float = 0.0
    warnings: tuple[str, ...] = ()  # e.g. a target far outside the hardware a model learned from
    composition: tuple[float, float, str] = (1.0, 0.0, "none")  # `Composition.terms`; "none": no fit

    @property
    def kernels_ms(self) -> float:
        return float(sum(k.ms for k in self.kernels))

    @property
    def total_ms(self) -> float:
        return self.kernels_ms + self.overhead_ms


MIN_OWN = 3  # whole models a target needs measured for a scale of its own (more than its one parameter)
MIN_MEDIAN = 3  # targets with their own scale for their median to price the others (robust to one odd one)


def _fit_ab(totals: np.ndarray, launches: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """a and b of `Composition` by relative least squares (each workload counts the same whatever
    its size), both at least 0: where the joint fit gives one below 0, the other is fitted alone.
    Clipping it to 0 and keeping the other's joint value would leave a fit of neither."""
    if len(measured) < 2:
        return 1.0, 0.0
    X = np.stack([totals, launches], axis=1) / measured[:, None]
    ones = np.ones(len(measured))
    (a, b), *_ = np.linalg.lstsq(X, ones, rcond=None)
    if b < 0:
        a, b = float(X[:, 0] @ ones / (X[:, 0] @ X[:, 0])), 0.0
    elif a < 0:
        a, b = 0.0, float(X[:, 1] @ ones / (X[:, 1] @ X[:, 1]))
    return max(float(a), 0.0), max(float(b), 0.0)


def _fit_scale(totals: np.ndarray, launches: np.ndarray, measured: np.ndarray, b: float) -> float:
    """a of `a * totals + b * launches` with b given, by relative least squares, at least 0."""
    x = totals / measured
    return max(float(x @ (1 - b * launches / measured) / (x @ x)), 0.0)


MATMULS = ("matmul", "conv")  # the kernel classes a calibration on matmuls scales (`calibration`)


def is_matmul(sub) -> bool:
    """Whether a kernel is one matmul or conv vertex (`MATMULS`), as `examples.kernel_class`
    tells a kernel graph's class: what a calibration and a GBDT's levels scale; a fused kernel is not."""
    return len(sub.vertices) == 1 and sub.vertices[0].kind in MATMULS


def calibration(predicted_ln: np.ndarray, measured_ln: np.ndarray) -> float:
    """ln of the scale that takes a model's kernel times on one target to that target's own: the
    median of measured less predicted ln(ms) over a few of its kernels timed there (a handful
    of GEMMs), so one odd timing moves it little. What a machine does under load (its clocks,
    its harness) that no descriptor tells, learnt from the machine itself."""
    if len(predicted_ln) != len(measured_ln) or not len(measured_ln):
        raise ValueError(f"{len(predicted_ln)} predictions for {len(measured_ln)} measured kernels")
    return float(np.median(np.asarray(measured_ln, float) - np.asarray(predicted_ln, float)))


@dataclass(frozen=True)
class Composition:
    """Whole-model time from kernel times: a * sum(kernel ms) + b * kernels launched, fitted on
    measured whole models (what eager execution costs between and around kernels). `fit` given
    each workload's target also fits, for each target with at least `MIN_OWN` models, a scale of
    its own with the pooled b (`own`: name -> a), which that target's prices then use. One
    parameter per target, not two: a and b fitted on one target's few models come out with b = 0
    (big models cannot tell per-launch cost from scale) and then price small, launch-bound
    models out of order across GPUs (README, "Unseen hardware"; `benchmarks/composition.py`
    compares the ways). A target with no scale of its own takes the median of the targets' own
    scales where `MIN_MEDIAN` or more have one (`unseen`: each GPU counts once, however many
    models it has, and one GPU whose kernel rows disagree with its runs moves it little), else
    the pooled a."""

    a: float = 1.0
    b: float = 0.0
    own: dict[str, float] = field(default_factory=dict, hash=False)

    @classmethod
    def fit(cls, totals: np.ndarray, launches: np.ndarray, measured: np.ndarray,
            hardware: Sequence[str] = ()) -> Composition:
        """The fit over every workload, and, where `hardware` names each workload's target, each
        target's own scale (`_fit_scale`) where it has `MIN_OWN` workloads or more."""
        a, b = _fit_ab(totals, launches, measured)
        names = np.asarray(hardware, dtype=object)
        own = {}
        for name in sorted(set(hardware)):
            same = names == name
            if same.sum() >= MIN_OWN:
                own[name] = _fit_scale(totals[same], launches[same], measured[same], b)
        return cls(a, b, own)

    @property
    def unseen(self) -> tuple[float, str]:
        """The scale a target without its own takes, and its name: "median" of the own scales
        (`MIN_MEDIAN` of them or more), else "pooled". Leave one GPU out chose it (2026-12-08,
        README "Unseen hardware"): the GBDT's whole-model MAPE, mean of the five folds and of
        seeds 0-2, 12.1% against 13.4% with the pooled a."""
        if len(self.own) >= MIN_MEDIAN:
            return float(np.median(list(self.own.values()))), "median"
        return self.a, "pooled"

    def terms(self, target: str = "") -> tuple[float, float, str]:
        """a, b (ms a launch) and which fit the target named `target` takes: "own", or `unseen`'s
        ("median" or "pooled")."""
        if target in self.own:
            return self.own[target], self.b, "own"
        a, how = self.unseen
        return a, self.b, how

    def __call__(self, totals: np.ndarray, launches: np.ndarray,
                 hardware: Sequence[str] = ()) -> np.ndarray:
        """Whole-model ms; `hardware`, when given, names each row's target."""
        a, b = np.full(len(totals), self.unseen[0]), np.full(len(totals), self.b)
        for i, name in enumerate(hardware):
            a[i], b[i], _ = self.terms(name)
        return a * totals + b * launches


class CostModel(abc.ABC):
    """Predicts kernel runtimes on a target.

    Invariants every implementation keeps (tests/costmodel/test_cost.py checks them):
    - `predict` returns a float64 array with one finite, positive time in milliseconds per
      subdiagram, in the order given; it changes no state, so equal inputs give equal outputs;
    - `configs`, when given, has one entry per subdiagram (None: the library's own choice);
    - `save` then `load` gives a model with equal predictions.
    """

    name: str = "abstract"
    identity: str = ""  # which weights: set by the registry from a checkpoint's bytes

    @property
    def key(self) -> str:
        """The model and its weights, for names of what it made (a study): `identity`, else
        `name`."""
        return self.identity or self.name

    @abc.abstractmethod
    def predict(self, subdiagrams: Sequence[Subdiagram], target: HardwareProfile | str,
                configs: Sequence[KernelConfig | None] | None = None) -> np.ndarray:
        """Milliseconds per subdiagram."""

    @staticmethod
    def _configs(subdiagrams: Sequence[Subdiagram],
                 configs: Sequence[KernelConfig | None] | None) -> list[KernelConfig | None]:
        """`configs` checked to line up with `subdiagrams` (None: the library's choice for all)."""
        out = list(configs) if configs is not None else [None] * len(subdiagrams)
        if len(out) != len(subdiagrams):
            raise ValueError(f"{len(out)} configs for {len(subdiagrams)} subdiagrams")
        return out

    def plan_total(self, kernels_ms: float, launches: int, target: str = "") -> float:
        """Whole-plan time on the target named `target` from the sum of its kernel times and the
        kernels launched (a learned model adds what eager execution costs between kernels; the
        roofline adds nothing)."""
        return kernels_ms

    def update(self, examples: Sequence) -> None:
        """Learn from measured (subdiagram, target, config, ms) examples."""
        raise NotImplementedError(f"the {self.name} cost model does not learn")

    @abc.abstractmethod
    def save(self, path: str | Path) -> None: ...

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | Path) -> CostModel: ...

    def predict_model(self, model: str, batch: int, seq: int, target: HardwareProfile | str,
                      dtype: str = "fp32", plan: Plan | None = None, *,
                      attention: str = "sdpa") -> PlanCost:
        """Capture a zoo model or Hugging Face config.json (attention "sdpa" or "eager") and
        price `plan` (default eager)."""
        from costmodel.ir.zoo import capture_model  # torch.export: loaded when first needed

        return self.predict_plan(capture_model(model, batch, seq, dtype, attention=attention),
                                 target, plan)

    def predict_plan(self, diagram: Diagram, target: HardwareProfile | str,
                     plan: Plan | None = None) -> PlanCost:
        """Price `plan` (default: eager, one kernel per op) on `target`."""
        hw = load_profile(target) if isinstance(target, str) else target
        kernels = (plan or Plan()).kernels(diagram)
        ms = self.predict([k.subdiagram for k in kernels], hw, [k.config for k in kernels])
        return PlanCost(hw.name, self.name, tuple(
            KernelCost(k.subdiagram, k.config, float(t)) for k, t in zip(kernels, ms)))
