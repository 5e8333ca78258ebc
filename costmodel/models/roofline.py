"""The roofline: the analytical baseline every learned cost model is measured against."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir import rules
from costmodel.ir.diagram import Subdiagram, Vertex
from costmodel.ir.plan import KernelConfig
from costmodel.models.base import CostModel

# Tiles the vendor library is modelled as choosing from (the ones cuBLAS picked most often in
# NeuSight's A100/V100/T4 kernel measurements: ampere_sgemm_128x128, 128x64, 64x64, 128x32, ...).
LIBRARY_TILES = tuple(KernelConfig(m, n, 32, 4, 2) for m, n in
                      ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128), (32, 32)))


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
        efficiency = tile_efficiency(batch, m, n, config, hw, v.dtype, check_fit=not library)
        extra = 2 * config.split_k * batch * m * n * 4 if config.split_k > 1 else 0
        return v.flops / (peak_flops(hw, v) * efficiency), extra

    def _attention(self, v: Vertex, hw: HardwareProfile, config: KernelConfig) -> float:
        """A flash-style attention kernel: BLOCK_M query rows per block, one block per
        (batch, head, query block), quantised into waves like a matmul; with `skip_masked`, only
        the key blocks the mask keeps any pair of are computed."""
        *lead, sq, _ = v.input_shapes[0]
        sk = v.input_shapes[1][-2]
        fraction = rules.mask_block_fraction(v, config.block_m, config.block_n) \
            if config.skip_masked else 1.0
        key_padding = sk / (config.block_n * math.ceil(sk / config.block_n))
        efficiency = tile_efficiency(math.prod(lead), sq, config.block_n, config, hw,
                                     v.dtype) * key_padding
        return v.flops * fraction / (peak_flops(hw, v) * efficiency)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"cost_model": "roofline", "version": 1}))

    @classmethod
    def load(cls, path: str | Path) -> Roofline:
        doc = json.loads(Path(path).read_text())
        if doc.get("cost_model") != "roofline":
            raise ValueError(f"{path} holds a {doc.get('cost_model')!r} model, not a roofline")
        return cls()


def tile_efficiency(batch: int, m: int, n: int, config: KernelConfig, hw: HardwareProfile,
                    dtype: str, *, check_fit: bool = True) -> float:
    """Useful fraction of the machine's issued work: tile padding times wave quantisation.
    Raises ValueError when `check_fit` and the tile cannot launch on `hw` (`rules.launch_problem`)."""
    tiles_m, tiles_n = math.ceil(m / config.block_m), math.ceil(n / config.block_n)
    padding = (m * n) / (tiles_m * config.block_m * tiles_n * config.block_n)
    if check_fit and (problem := rules.launch_problem(config, hw, dtype)):
        raise ValueError(f"{config} does not fit on {hw.name}: it {problem}")
    # Blocks spread over SMs; co-resident blocks share an SM's throughput, so time goes as the
    # most blocks any SM runs: ceil(blocks / SMs).
    blocks = batch * tiles_m * tiles_n * config.split_k
    quantisation = blocks / (math.ceil(blocks / hw.compute_units) * hw.compute_units)
    return max(padding * quantisation, 1e-6)


def peak_flops(hw: HardwareProfile, v: Vertex) -> float:
    """FLOP/s a vertex can reach: the matrix peak for matmul, conv and attention, else the vector peak."""
    calibrated = dict(hw.calibration)
    if v.kind in ("matmul", "conv", "attention") and v.dtype in rules.COMPUTE_DTYPES:
        if hw.kind == "tpu" and v.dtype not in hw.dtypes:
            return max(f for _, f in hw.peak_flops)  # XLA runs f32 dots on the MXU in bf16 passes
        return calibrated.get(f"{v.dtype}_flops") or hw.peak(v.dtype)
    # No published vector peak (TPUs): price the op by its memory traffic alone.
    return calibrated.get("fp32_flops") or hw.vector_flops or math.inf


def bandwidth(hw: HardwareProfile) -> float:
    """Bytes/s: the calibrated figure where the profile has one, else the listed peak."""
    return dict(hw.calibration).get("memory_bandwidth") or hw.memory_bandwidth


