"""A cost model calibrated on one target: a few GEMMs timed there, and every price the model
gives that target (`costmodel predict`, the service, `autotune`) scaled as they show.

    costmodel calibrate --target h100 --runner cuda --out h100-calibration.json
    costmodel predict --model bert-large --target h100 --calibration h100-calibration.json
    costmodel calibrate --from h100-calibration.json --cost-model gnn --out h100-gnn.json

What leave one GPU out scores as "a few of its own kernels timed" (`evaluate.few_shot`; README,
"Unseen hardware"), for a GPU no release holds:
1. `SHOTS` GEMMs drawn by the seed from the release's GEMM micro-benchmarks (`gemm_pool`: the
   kind of kernel the protocol's shots are), each timed alone on the target by a runner
   (`costmodel.measure.gemms`: `costmodel measure`'s harness, cold inputs on a GPU);
2. the shift, the median ln(measured / predicted) over them (`base.calibration`), scales the
   target's matmul and conv kernels (`base.MATMULS`); other kernels keep their price;
3. the composition (kernels to whole model) is fitted again on the release's whole models with
   every training GPU calibrated the same way by as many of its own micro-benchmarks
   (`evaluate.shot_orders`, the protocol's draw for this seed), so the scale it learnt on
   uncalibrated prices is not applied twice (`evaluate.fit_calibration`).
The file keeps the timings (written before the fit, so a failed fit loses none), the fit and
what made them; `--from` fits another model to the same timings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.ir.plan import KernelConfig, Plan
from costmodel.models.base import CostModel, PlanCost, is_matmul

SHOTS = 32  # GEMMs timed: the larger of the protocol's `evaluate.SHOTS`
MIN_SHOTS = 4  # timed without error, or no calibration: a median of fewer is one kernel's luck
FORMAT = "feyntune-calibration/1"


@dataclass(frozen=True)
class Calibration:
    """One target's timed GEMMs (`shots`: each {"hash", "subdiagram" (its record), "measured_ms",
    "iqr_ms", "repeats", "error"}) and, once fitted for a cost model (`evaluate.fit_calibration`), the shift of its
    matmul kernels' ln(ms) and the composition's a and b (ms a launch) on that target."""

    target: str
    shots: tuple[dict, ...]
    made: dict  # how the shots were timed: runner, device, torch, date, seed, release
    cost_model: str | None = None  # the key (`CostModel.key`) of the model it was fitted for
    shift: float | None = None
    composition: tuple[float, float] | None = None
    fitted: dict = field(default_factory=dict)  # the fit's inputs: release, shots used, date

    @property
    def digest(self) -> str:
        """A short hash of the fit, for names of what a calibrated model made (a study)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """A calibration file, or a UserError that says what is wrong with it."""
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"no calibration file {path}; make one with costmodel calibrate") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"calibration file {path} is not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UserError(f"{path} is not a feyntune calibration (no \"format\": \"{FORMAT}\"); "
                            "make one with costmodel calibrate")
        try:
            comp = doc.get("composition")
            return cls(str(doc["target"]), tuple(dict(s) for s in doc["shots"]), dict(doc["made"]),
                       doc.get("cost_model"), None if doc.get("shift") is None else float(doc["shift"]),
                       None if comp is None else (float(comp[0]), float(comp[1])), dict(doc.get("fitted") or {}))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"calibration file {path} is damaged ({type(e).__name__}: {e}); "
                            "make it again with costmodel calibrate") from None


# -- the shots


def gemm_pool(release: str | Path) -> list[Subdiagram]:
    """The release's GEMM micro-benchmarks, one per distinct kernel, by hash: one-op matmuls
    timed alone (no model) by a source that also timed models, the kind `evaluate.shot_pool`
    draws a GPU's shots from."""
    from costmodel.data.shards import read_table

    m = read_table("measurements", release, columns=["subdiagram_hash", "diagram_hash", "scope", "error", "source"])
    m = m[(m["scope"] == "kernel") & m["error"].isna() & m["subdiagram_hash"].notna()]
    timed_models = set(m.loc[m["diagram_hash"].notna(), "source"])
    alone = set(m.loc[m["diagram_hash"].isna() & m["source"].isin(timed_models), "subdiagram_hash"])
    subs = read_table("subdiagrams", release, columns=["subdiagram_hash", "subdiagram_json"])
    out = {}
    for h, record in zip(subs["subdiagram_hash"], subs["subdiagram_json"]):
        if h in alone and h not in out:
            sub = Subdiagram.from_record(json.loads(record))
            if len(sub.vertices) == 1 and sub.vertices[0].kind == "matmul" and kernel_op(sub) is not None:
                out[h] = sub
    return [out[h] for h in sorted(out)]


def draw_shots(release: str | Path, k: int = SHOTS, seed: int = 0) -> list[Subdiagram]:
    """`k` GEMMs of `gemm_pool`, drawn by `seed` (the same release and seed, the same shots)."""
    pool = gemm_pool(release)
    if not pool:
        raise UserError(f"{release} holds no GEMM micro-benchmarks to draw shots from; give a "
                        "release that has them (datasets/releases/0.1)")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


def kernel_op(sub: Subdiagram):
    """The ATen overload of a one-op kernel (e.g. aten.bmm.default), or None."""
    import torch

    parts = sub.vertices[0].op.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    return getattr(getattr(torch.ops.aten, parts[1], None), parts[2], None)



# -- the calibrated model


class Calibrated(CostModel):
    """`model` with a fitted calibration: on the calibration's target, matmul kernels scaled by
    exp(shift) and the whole model composed with its a and b; any other target as `model`
    prices it. What it does not define (a learned model's `trained_on`, `warnings`) is the
    model's."""

    def __init__(self, model: CostModel, cal: Calibration) -> None:
        if cal.shift is None or cal.composition is None:
            raise UserError(f"the calibration of {cal.target} was timed but not fitted; fit it with "
                            "costmodel calibrate --from FILE --out FILE")
        if cal.cost_model != model.key:
            raise UserError(f"the calibration of {cal.target} was fitted for cost model {cal.cost_model}, "
                            f"not {model.key}; fit it for this one with costmodel calibrate --from FILE "
                            f"--cost-model ... --out NEW")
        self.model, self.calibration = model, cal
        self.name = model.name
        self.identity = f"{model.key}+cal-{cal.digest}"

    def __getattr__(self, name: str):
        if name in ("model", "calibration"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _scale(self, subdiagrams: Sequence[Subdiagram], target: str) -> np.ndarray:
        if target != self.calibration.target:
            return np.ones(len(subdiagrams))
        return np.exp(self.calibration.shift * np.array([is_matmul(s) for s in subdiagrams], float))

    def predict(self, subdiagrams: Sequence[Subdiagram], target: HardwareProfile | str,
                configs: Sequence[KernelConfig | None] | None = None) -> np.ndarray:
        hw = load_profile(target) if isinstance(target, str) else target
        return self.model.predict(subdiagrams, hw, configs) * self._scale(subdiagrams, hw.name)

    def plan_total(self, kernels_ms: float, launches: int, target: str = "") -> float:
        if target != self.calibration.target:
            return self.model.plan_total(kernels_ms, launches, target)
        a, b = self.calibration.composition
        return a * kernels_ms + b * launches

    def predict_plan(self, diagram: Diagram, target: HardwareProfile | str,
                     plan: Plan | None = None) -> PlanCost:
        priced = self.model.predict_plan(diagram, target, plan)
        if priced.target != self.calibration.target:
            return dataclasses.replace(priced, warnings=(*priced.warnings, (
                f"the calibration is of {self.calibration.target}, not {priced.target}: priced uncalibrated")))
        scale = self._scale([k.subdiagram for k in priced.kernels], priced.target)
        kernels = tuple(dataclasses.replace(k, ms=k.ms * s) for k, s in zip(priced.kernels, scale))
        kernels_ms = float(sum(k.ms for k in kernels))
        total = self.plan_total(kernels_ms, (plan or Plan()).launches(len(kernels)), priced.target)
        a, b = self.calibration.composition
        return dataclasses.replace(priced, kernels=kernels, overhead_ms=total - kernels_ms,
                                   composition=(a, b, "calibrated"))

    def save(self, path: str | Path) -> None:
        raise UserError("a calibrated model is its cost model and its calibration file: keep both")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        raise UserError("load the cost model and give its calibration (--calibration FILE)")
