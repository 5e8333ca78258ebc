"""Cost models: price kernels (subdiagrams with a kernel config) on a hardware target, in ms.

`CostModel` is the plug-in point: `predict / update / save / load` (the TVM meta_schedule life
cycle). `Roofline` is the analytical baseline every learned model is compared against.
"""
from __future__ import annotations

import abc
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from costmodel.diagram import Diagram, Subdiagram, Vertex
from costmodel.errors import UserError, unknown_choice
from costmodel.hardware import HardwareProfile, load_profile
from costmodel.plan import KernelConfig, Plan

# Tiles the vendor library is modelled as choosing from (the ones cuBLAS picked most often in
# NeuSight's A100/V100/T4 kernel measurements: ampere_sgemm_128x128, 128x64, 64x64, 128x32, ...).
LIBRARY_TILES = tuple(KernelConfig(m, n, 32, 4, 2) for m, n in
                      ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128), (32, 32)))


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

    @property
    def kernels_ms(self) -> float:
        return float(sum(k.ms for k in self.kernels))

    @property
    def total_ms(self) -> float:
        return self.kernels_ms + self.overhead_ms


@dataclass(frozen=True)
class Composition:
    """Whole-model time from kernel times: a * sum(kernel ms) + b * kernels launched, fitted on
    measured whole models (what eager execution costs between and around kernels)."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, totals: np.ndarray, launches: np.ndarray, measured: np.ndarray) -> Composition:
        if len(measured) < 2:
            return cls()
        # Relative least squares: each workload counts the same whatever its size.
        X = np.stack([totals, launches], axis=1) / measured[:, None]
        (a, b), *_ = np.linalg.lstsq(X, np.ones(len(measured)), rcond=None)
        return cls(max(float(a), 0.0), max(float(b), 0.0))

    def __call__(self, totals: np.ndarray, launches: np.ndarray) -> np.ndarray:
        return self.a * totals + self.b * launches


class CostModel(abc.ABC):
    """Predicts kernel runtimes on a target.

    Invariants every implementation keeps (tests/costmodel/test_cost.py checks them):
    - `predict` returns a float64 array with one finite, positive time in milliseconds per
      subdiagram, in the order given; it changes no state, so equal inputs give equal outputs;
    - `configs`, when given, has one entry per subdiagram (None: the library's own choice);
    - `save` then `load` gives a model with equal predictions.
    """

    name: str = "abstract"

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

    def plan_total(self, kernels_ms: float, launches: int) -> float:
        """Whole-plan time from the sum of its kernel times and the kernels launched (a learned
        model adds what eager execution costs between kernels; the roofline adds nothing)."""
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
                      dtype: str = "fp32", plan: Plan | None = None) -> PlanCost:
        """Capture a zoo model or Hugging Face config.json and price `plan` (default eager)."""
        from costmodel.zoo import (
            capture_model,  # capture pulls in torch.export; load it lazily
        )

        return self.predict_plan(capture_model(model, batch, seq, dtype), target, plan)

    def predict_plan(self, diagram: Diagram, target: HardwareProfile | str,
                     plan: Plan | None = None) -> PlanCost:
        """Price `plan` (default: eager, one kernel per op) on `target`."""
        hw = load_profile(target) if isinstance(target, str) else target
        kernels = (plan or Plan()).kernels(diagram)
        ms = self.predict([k.subdiagram for k in kernels], hw, [k.config for k in kernels])
        return PlanCost(hw.name, self.name, tuple(
            KernelCost(k.subdiagram, k.config, float(t)) for k, t in zip(kernels, ms)))


class Roofline(CostModel):
    """time = max(compute time, memory time) + launch overhead, per kernel.

    - compute time: each vertex's FLOPs over its peak: the target's matrix peak for its dtype
      (tensor cores where the chip has them) for matmul and attention, the FP32 vector peak for
      everything else; measured (calibrated) figures replace the listed peaks where the profile
      has them (the host CPU).
    - memory time: bytes the kernel reads and writes at its boundary over memory bandwidth;
      tensors passed between the members of a fused kernel never touch memory.
      Where a profile lists no vector peak (TPUs), non-matrix ops are priced by memory alone.
    - launch overhead: the profile's per-kernel figure (an assumption, not a measurement).
    - GPU matmuls pay for tile padding and wave quantisation: with BLOCK_M x BLOCK_N tiles,
      ceil(M/BM)*ceil(N/BN)*split_k blocks spread over the SMs, and time goes as the most
      blocks any SM runs (a part-empty last wave still costs a wave). With no config the
      library is modelled as picking the best of LIBRARY_TILES. Split-K adds a write and read
      of fp32 partial sums.
    It knows nothing of caches, kernel quality or dispatch gaps between kernels: a lower bound
    in spirit, the baseline the learned model must beat.
    """

    name = "roofline"

    def predict(self, subdiagrams: Sequence[Subdiagram], target: HardwareProfile | str,
                configs: Sequence[KernelConfig | None] | None = None) -> np.ndarray:
        hw = load_profile(target) if isinstance(target, str) else target
        configs = self._configs(subdiagrams, configs)
        return np.array([self.kernel_seconds(s, hw, c) * 1e3 for s, c in zip(subdiagrams, configs)],
                        dtype=np.float64)

    def kernel_seconds(self, sub: Subdiagram, hw: HardwareProfile,
                       config: KernelConfig | None = None) -> float:
        """Seconds for one kernel (see the class docstring)."""
        compute, memory = self.terms(sub, hw, config)
        return max(compute, memory) + hw.launch_overhead_s

    def terms(self, sub: Subdiagram, hw: HardwareProfile,
              config: KernelConfig | None = None) -> tuple[float, float]:
        """(compute seconds, memory seconds) of one kernel, before launch overhead."""
        compute, extra_bytes = 0.0, 0
        for v in sub.vertices:
            if v.kind == "matmul" and hw.kind == "gpu":
                seconds, extra = self._gemm(v, hw, config)
                compute += seconds
                extra_bytes += extra
            elif v.kind == "attention" and hw.kind == "gpu" and config is not None:
                compute += self._attention(v, hw, config)
            else:
                compute += v.flops / peak_flops(hw, v)
        memory = (sub.bytes_read + sub.bytes_written + extra_bytes) / bandwidth(hw)
        return compute, memory

    def _gemm(self, v: Vertex, hw: HardwareProfile, config: KernelConfig | None,
              library: bool = False) -> tuple[float, int]:
        if config is None:
            return min(self._gemm(v, hw, c, library=True) for c in LIBRARY_TILES)
        batch, m, n, k = v.gemm_shape()
        # The library's own kernels launch by construction (their K step and pipelining are
        # not ours to model), so only tiles we choose are held to the shared-memory limit.
        efficiency = tile_efficiency(batch, m, n, config, hw, element_bytes=_element_bytes(v),
                                     check_fit=not library)
        extra = 2 * config.split_k * batch * m * n * 4 if config.split_k > 1 else 0
        return v.flops / (peak_flops(hw, v) * efficiency), extra

    def _attention(self, v: Vertex, hw: HardwareProfile, config: KernelConfig) -> float:
        """A flash-style attention kernel: BLOCK_M query rows per block, one block per
        (batch, head, query block), quantised into waves like a matmul; with `skip_masked`, only
        the key blocks the mask keeps any pair of are computed."""
        *lead, sq, _ = v.input_shapes[0]
        sk = v.input_shapes[1][-2]
        fraction = attention_block_fraction(v, sq, sk, config) if config.skip_masked else 1.0
        key_padding = sk / (config.block_n * math.ceil(sk / config.block_n))
        efficiency = tile_efficiency(math.prod(lead), sq, config.block_n, config, hw,
                                     element_bytes=_element_bytes(v)) * key_padding
        return v.flops * fraction / (peak_flops(hw, v) * efficiency)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"cost_model": "roofline", "version": 1}))

    @classmethod
    def load(cls, path: str | Path) -> Roofline:
        doc = json.loads(Path(path).read_text())
        if doc.get("cost_model") != "roofline":
            raise ValueError(f"{path} holds a {doc.get('cost_model')!r} model, not a roofline")
        return cls()


def _element_bytes(v: Vertex) -> int:
    return 4 if v.dtype in ("fp32", "tf32") else 2


def attention_block_fraction(v: Vertex, sq: int, sk: int, config: KernelConfig) -> float:
    """Fraction of (query block, key block) pairs a mask-skipping attention kernel computes.
    Causal: exact, counting the blocks on or below the diagonal (queries aligned to the last keys).
    Other masks: the mask's density (a lower bound: a block is skipped only when it is all zero)."""
    if v.mask_kind == "causal":
        nq, nk = math.ceil(sq / config.block_m), math.ceil(sk / config.block_n)
        offset = sk - sq
        kept = sum(min(nk, (min((i + 1) * config.block_m, sq) - 1 + offset) // config.block_n + 1)
                   for i in range(nq))
        return kept / (nq * nk)
    if v.mask_kind in ("none", "padding", None) or v.mask_density is None:
        return 1.0
    return max(float(v.mask_density), 1.0 / math.ceil(sk / config.block_n))


def blocks_per_sm(config: KernelConfig, hw: HardwareProfile, element_bytes: int) -> int:
    """Resident blocks per SM under the thread and shared-memory limits; 0 when it cannot launch."""
    threads = config.num_warps * 32
    by_threads = (hw.max_threads_per_unit or 2048) // threads
    smem = config.smem_bytes(element_bytes)
    by_smem = (hw.shared_memory_per_unit or 48 * 1024) // smem if smem else by_threads
    return max(0, min(by_threads, by_smem, 32))


def tile_efficiency(batch: int, m: int, n: int, config: KernelConfig, hw: HardwareProfile,
                    element_bytes: int, *, check_fit: bool = True) -> float:
    """Useful fraction of the machine's issued work: tile padding times wave quantisation."""
    tiles_m, tiles_n = math.ceil(m / config.block_m), math.ceil(n / config.block_n)
    padding = (m * n) / (tiles_m * config.block_m * tiles_n * config.block_n)
    if check_fit and blocks_per_sm(config, hw, element_bytes) == 0:
        raise ValueError(f"{config} does not fit on {hw.name}: it needs "
                         f"{config.smem_bytes(element_bytes)} bytes of shared memory per block")
    # Blocks spread over SMs; co-resident blocks share an SM's throughput, so time goes as the
    # most blocks any SM runs: ceil(blocks / SMs).
    blocks = batch * tiles_m * tiles_n * config.split_k
    quantisation = blocks / (math.ceil(blocks / hw.compute_units) * hw.compute_units)
    return max(padding * quantisation, 1e-6)


def peak_flops(hw: HardwareProfile, v: Vertex) -> float:
    """FLOP/s a vertex can reach: the matrix peak for matmul, conv and attention, else the vector peak."""
    calibrated = dict(hw.calibration)
    if v.kind in ("matmul", "conv", "attention") and v.dtype in ("fp32", "tf32", "fp16", "bf16"):
        return calibrated.get(f"{v.dtype}_flops") or hw.peak(v.dtype)
    # No published vector peak (TPUs): price the op by its memory traffic alone.
    return calibrated.get("fp32_flops") or hw.vector_flops or math.inf


def bandwidth(hw: HardwareProfile) -> float:
    """Bytes/s: the calibrated figure where the profile has one, else the listed peak."""
    return dict(hw.calibration).get("memory_bandwidth") or hw.memory_bandwidth


COST_MODELS = {"roofline": Roofline}


def load_cost_model(spec: str | CostModel = "gnn") -> CostModel:
    """A cost model from a name ("gnn": the shipped checkpoint, "roofline"), a saved file, or an
    instance."""
    if isinstance(spec, CostModel):
        return spec
    if spec in COST_MODELS:
        return COST_MODELS[spec]()
    if spec == "gnn":
        from costmodel.gnn import GNNCostModel, default_checkpoint

        return GNNCostModel.load(default_checkpoint())
    path = Path(spec)
    if path.is_file():
        try:
            kind = json.loads(path.read_text()).get("cost_model")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None
        if kind in COST_MODELS:
            return COST_MODELS[kind].load(path)
        from costmodel.gnn import (
            GNNCostModel,  # a torch checkpoint; gnn imports this module
        )

        try:
            return GNNCostModel.load(path)
        except Exception as e:  # torch.load raises many types for a file that is not a checkpoint
            raise UserError(f"cost model file {spec!r} is not a saved feyntune cost model "
                            f"({type(e).__name__}: {e})") from None
    raise unknown_choice("cost model", spec, ["gnn", *COST_MODELS, "PATH"])
