"""A hardware target's figures: `HardwareProfile`, every figure in SI base units (FLOP/s, bytes,
bytes/s, seconds; clocks in MHz, power in watts), and the descriptors a learned cost model sees.
Profiles come from `catalog` (the TOML files) and `host` (this machine's CPU)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from costmodel.errors import UserError
from costmodel.ir.rules import COMPUTE_DTYPES

DTYPES = COMPUTE_DTYPES  # the dtypes a profile may give a peak for

_KINDS = ("gpu", "tpu", "cpu")


@dataclass(frozen=True)
class HardwareProfile:
    """One target's public specs, in SI units.

    Invariants: `peak_flops` lists dtypes of `DTYPES` in that order, each with a positive dense
    (no sparsity) matrix-math peak, tensor cores where the chip has them; a figure the sources do
    not give is None (or absent from `peak_flops`) rather than guessed; `sources` names where each
    given figure comes from, keyed by field name.
    """

    name: str  # canonical, e.g. "a100-sxm4-80gb"
    kind: str  # "gpu" | "tpu" | "cpu"
    display_name: str  # e.g. "NVIDIA A100-SXM4-80GB" (the NVML name where there is one)
    vendor: str
    architecture: str  # "ampere", "hopper", "ada", "turing", "volta", "pascal", "tpu-v4", "x86_64", ...
    aliases: tuple[str, ...]
    peak_flops: tuple[tuple[str, float], ...]  # (dtype, dense matrix-math FLOP/s)
    vector_flops: float  # FP32 non-tensor peak, FLOP/s; 0.0 where none is published (TPUs)
    memory_bytes: int
    memory_bandwidth: float  # bytes/s
    compute_units: int  # SMs (GPU), TensorCores (TPU), physical cores (CPU)
    launch_overhead_s: float  # fixed cost per kernel, seconds (an assumption, see sources)
    fp32_lanes_per_unit: int | None = None  # FP32 FMA lanes per unit per cycle
    shared_int_lanes_per_unit: int | None = None  # of those lanes, how many also run INT32 (0: own INT32 units)
    tensor_core_generation: int | None = None  # 0 = a GPU without tensor cores
    l2_bytes: int | None = None
    shared_memory_per_unit: int | None = None  # bytes a block may use on one SM
    registers_per_unit: int | None = None  # 32-bit registers
    max_threads_per_unit: int | None = None  # resident threads per SM; hardware threads per core (CPU)
    boost_clock_mhz: float | None = None
    base_clock_mhz: float | None = None
    tdp_watts: float | None = None
    sources: tuple[tuple[str, str], ...] = ()  # (field, where the figure comes from)
    calibration: tuple[tuple[str, float], ...] = ()  # measured achievable figures, SI units

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise UserError(f"hardware profile {self.name!r}: kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        given = [dtype for dtype, _ in self.peak_flops]
        if not given or given != [d for d in DTYPES if d in given]:
            raise UserError(
                f"hardware profile {self.name!r}: peak_flops dtypes {given} must be a non-empty subset of {DTYPES}, "
                "in that order"
            )

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this target has a peak for, in `DTYPES` order."""
        return tuple(dtype for dtype, _ in self.peak_flops)

    def peak(self, dtype: str) -> float:
        """Dense peak of `dtype` matrix math in FLOP/s; UserError if the target has no such peak."""
        dtype = str(dtype).strip().lower()
        for name, flops in self.peak_flops:
            if name == dtype:
                return flops
        raise UserError(
            f"target {self.name!r} has no {dtype!r} peak; supported dtypes: {', '.join(self.dtypes)}"
        )

    def descriptor(self) -> dict[str, float]:
        """Numeric features of this target, with the same keys in the same order for every profile.

        Wide-ranging quantities are log10 of their SI value (FLOP/s, bytes, bytes/s, seconds, watts);
        clocks are GHz. A figure the profile lacks is 0.0 with its ``has_*`` flag 0.0.
        """
        peaks = dict(self.peak_flops)
        features = {f"is_{kind}": float(self.kind == kind) for kind in _KINDS}
        for dtype in DTYPES:
            _put(features, f"peak_flops_{dtype}", peaks.get(dtype), log=True)
        _put(features, "vector_flops", self.vector_flops, log=True)
        features["log10_memory_bytes"] = math.log10(self.memory_bytes)
        features["log10_memory_bandwidth"] = math.log10(self.memory_bandwidth)
        # The roofline ridge: FLOPs per byte above which the best matrix dtype is compute-bound.
        features["log10_ridge_flops_per_byte"] = math.log10(max(peaks.values()) / self.memory_bandwidth)
        features["log10_compute_units"] = math.log10(self.compute_units)
        features["log10_launch_overhead_s"] = math.log10(self.launch_overhead_s)
        _put(features, "fp32_lanes_per_unit", self.fp32_lanes_per_unit)
        _put(features, "tensor_core_generation", self.tensor_core_generation, zero_is_value=True)
        _put(features, "l2_bytes", self.l2_bytes, log=True)
        _put(features, "shared_memory_per_unit", self.shared_memory_per_unit, log=True)
        _put(features, "registers_per_unit", self.registers_per_unit, log=True)
        _put(features, "max_threads_per_unit", self.max_threads_per_unit, log=True)
        _put(features, "boost_clock_ghz", None if self.boost_clock_mhz is None else self.boost_clock_mhz / 1e3)
        _put(features, "base_clock_ghz", None if self.base_clock_mhz is None else self.base_clock_mhz / 1e3)
        _put(features, "tdp_watts", self.tdp_watts, log=True)
        features.update(self.ratios())
        return features

    def ratios(self) -> dict[str, float]:
        """Descriptors a new target interpolates within, rather than extrapolates: figures per
        compute unit and dimensionless ratios (a newer, bigger GPU is out of range in its totals,
        seldom in these). 0.0 where a figure is missing.

        - peak FP32 FLOP/s and bandwidth per unit, L2 bytes per unit (log10);
        - watts per TFLOP/s of FP32 and per TB/s: how hard the power cap binds (a 70 W card
          throttles under sustained load far below its boost clock);
        - the base clock over the boost clock: the clock a board guarantees within its power
          over the one it reaches when it can (0.37 on a 70 W T4, 0.94 on a 250 W GTX 1080 Ti;
          1 where no base clock is published: no throttling assumed);
        - the fraction of FP32 lanes that also run INT32 (address arithmetic then competes
          with the math a GEMM's peak counts);
        - each matrix dtype's peak over FP32's (log10): tensor cores by what they buy.
        """
        peaks = dict(self.peak_flops)
        fp32 = peaks.get("fp32") or self.vector_flops or max(peaks.values())
        units = self.compute_units
        out = {"log10_fp32_flops_per_unit": math.log10(fp32 / units),
               "log10_bandwidth_per_unit": math.log10(self.memory_bandwidth / units),
               "log10_l2_bytes_per_unit": math.log10(self.l2_bytes / units) if self.l2_bytes else 0.0,
               "log10_watts_per_fp32_tflops": math.log10(self.tdp_watts / (fp32 / 1e12))
               if self.tdp_watts else 0.0,
               "log10_watts_per_tb_s": math.log10(self.tdp_watts / (self.memory_bandwidth / 1e12))
               if self.tdp_watts else 0.0,
               "base_over_boost": self.base_clock_mhz / self.boost_clock_mhz
               if self.base_clock_mhz and self.boost_clock_mhz else 1.0,
               "shared_int_fraction": (self.shared_int_lanes_per_unit or 0) / self.fp32_lanes_per_unit
               if self.fp32_lanes_per_unit else 0.0}
        for dtype in ("tf32", "fp16", "bf16"):
            out[f"log10_{dtype}_over_fp32"] = math.log10(peaks[dtype] / fp32) if dtype in peaks else 0.0
        return out

    @classmethod
    def from_dict(cls, d: dict) -> HardwareProfile:
        """Inverse of `to_dict` (for profiles stored with measurements, e.g. a host CPU)."""
        d = dict(d)
        d["aliases"] = tuple(d.get("aliases", ()))
        for key in ("sources", "calibration"):
            d[key] = tuple((k, v) for k, v in dict(d.get(key) or {}).items())
        peaks = dict(d.get("peak_flops") or {})  # JSON may have sorted the keys
        d["peak_flops"] = tuple((dtype, peaks[dtype]) for dtype in DTYPES if dtype in peaks)
        return cls(**d)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (SI units); pairs become dicts, tuples lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["aliases"] = list(self.aliases)
        for key in ("peak_flops", "sources", "calibration"):
            out[key] = dict(out[key])
        return out


def _put(
    features: dict[str, float], key: str, value: float | None, *, log: bool = False, zero_is_value: bool = False
) -> None:
    present = value is not None and (value > 0 or (zero_is_value and value == 0))
    features[f"log10_{key}" if log else key] = (math.log10(value) if log else float(value)) if present else 0.0
    features[f"has_{key}"] = float(present)
