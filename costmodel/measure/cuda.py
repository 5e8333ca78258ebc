"""GPU 0 through torch.cuda as a runner."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile, load_profile, profile_for_device_name
from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig
from costmodel.measure.host import slug
from costmodel.measure.runner import Runner
from costmodel.measure.slicing import Workload
from costmodel.measure.variants import (SDPA_BACKENDS, Request, Site, Variant, eager_variants,
                                        implicit_mask_legal, sdpa_legal, tile_order, triton_op)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul precision for the block ("highest": TF32 off, "high": on), then
    restored."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class CudaRunner(Runner):
    """GPU 0 through torch.cuda. Calls are timed with a pair of CUDA events each. A request gets
    enough input sets that together they exceed twice the L2 cache (at most `max_sets`, within
    a quarter of free memory), visited in turn so every call reads cold inputs; a first call
    (compile), warm-up for `warmup_s`, then timed calls until they add up to `target_s`.
    Matmuls also run as Triton kernels over the space's legal tiles; attention under each legal
    SDPA backend; layer norm, softmax and fusion groups under inductor. A "tf32" diagram runs
    with torch.set_float32_matmul_precision("high"), any other with "highest". GPU name, driver
    and clocks (sampled after each request) come from NVML (nvidia-ml-py)."""

    name = "cuda"
    source = "cuda"
    kind = "gpu"
    dtypes = rules.COMPUTE_DTYPES
    min_warmup = 3

    def __init__(self, *, target_s: float = 0.05, min_repeats: int = 10, max_repeats: int = 2000,
                 warmup_s: float = 0.025, timeout_s: float = 30.0, max_sets: int = 32,
                 compilers: Sequence[str] = ("eager", "inductor", "triton"),
                 sdpa_backends: Sequence[str] = SDPA_BACKENDS, check: bool = True,
                 fusion: bool = True, seed: int = 0) -> None:
        super().__init__(target_s=target_s, min_repeats=min_repeats, max_repeats=max_repeats,
                         warmup_s=warmup_s, timeout_s=timeout_s, compilers=compilers, check=check,
                         fusion=fusion, seed=seed)
        self.max_sets = max_sets
        self.sdpa_backends = tuple(sdpa_backends)
        self._nvml = None
        self._tiles: dict[str, list[KernelConfig]] = {}
        self._probe()

    def _probe(self) -> None:
        if not torch.cuda.is_available():
            raise UserError("target cuda: torch.cuda.is_available() is False (this torch build has "
                            "no CUDA, or no GPU is visible); use --target cpu, or install a CUDA "
                            "build of torch on a machine with an NVIDIA GPU")
        self.device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(self.device)
        self._gpu_name, self._driver = props.name, None
        self._nvml = _nvml_handle(props, self.device.index)
        if self._nvml is not None:
            import pynvml

            with contextlib.suppress(pynvml.NVMLError):
                name = pynvml.nvmlDeviceGetName(self._nvml)
                self._gpu_name = name.decode() if isinstance(name, bytes) else name
            with contextlib.suppress(pynvml.NVMLError):
                driver = pynvml.nvmlSystemGetDriverVersion()
                self._driver = driver.decode() if isinstance(driver, bytes) else driver
        self._profile_name = profile_for_device_name(self._gpu_name)
        p = self.profile()
        self._limits = rules.Limits(
            self.hardware,
            getattr(props, "shared_memory_per_block_optin", 0)
            or (p.shared_memory_per_unit if p else None) or rules.DEFAULT_SHARED_MEMORY,
            getattr(props, "max_threads_per_multi_processor", 0)
            or (p.max_threads_per_unit if p else None) or rules.DEFAULT_THREADS_PER_UNIT)
        self._l2 = getattr(props, "L2_cache_size", 0) or (p.l2_bytes if p else None) or 40 * 2**20
        self._cuda_version = torch.version.cuda

    @property
    def hardware(self) -> str:
        return self._profile_name or slug(self._gpu_name)

    def profile(self) -> HardwareProfile | None:
        return load_profile(self._profile_name) if self._profile_name else None

    def environment(self) -> dict:
        return {**super().environment(), "driver_version": self._driver,
                "cuda_version": self._cuda_version}

    def key(self) -> dict:
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        return {**super().key(), "gpu": self._gpu_name, "driver": self._driver,
                "cuda": self._cuda_version, "triton": triton_version}

    # -- what is measured

    def configs(self, site: Site, dtype: str) -> list[Variant]:
        out = eager_variants(site, self.compilers)
        eager = {"fused": False, "compiler": "eager"}
        if site.fused:
            if "inductor" in self.compilers and "matmul" in site.subdiagram.kinds:
                out.append(Variant.of({"fused": True, "compiler": "inductor",
                                       "mode": "max-autotune-no-cudagraphs"},
                                      f"inductor-max-autotune:{site.label}", 2))
            return out
        v = next(v for v in site.subdiagram.vertices if not v.is_free)
        if v.kind == "attention":
            out = [Variant.of({**eager, "sdpa_backend": "auto"}, "sdpa-auto:attention")]
            explicit = len(v.inputs) > 3
            out += [Variant.of({**eager, "sdpa_backend": b}, f"sdpa-{b}:attention", 2)
                    for b in self.sdpa_backends if sdpa_legal(b, v, dtype, explicit)]
            if implicit_mask_legal(v):
                out += [Variant.of({**eager, "sdpa_backend": b, "mask": "implicit"},
                                   f"sdpa-{b}:attention-implicit-mask", 2)
                        for b in ("auto", *self.sdpa_backends) if sdpa_legal(b, v, dtype, False)]
            return out
        if v.kind == "matmul" and "triton" in self.compilers and triton_op(v):
            out += [Variant.of({**eager, "compiler": "triton", **tile.to_dict()}, "triton:matmul", 3, i)
                    for i, tile in enumerate(self.tiles(dtype))]
        elif v.kind in ("layer_norm", "softmax") and "inductor" in self.compilers:
            out.append(Variant.of({"fused": False, "compiler": "inductor"}, f"inductor:{site.label}", 2))
        return out

    def tiles(self, dtype: str) -> list[KernelConfig]:
        """The space's tiles that launch here (`rules.legal_tiles`), in `tile_order`."""
        if dtype not in self._tiles:
            self._tiles[dtype] = tile_order(rules.legal_tiles(self._limits, dtype))
        return self._tiles[dtype]

    # -- how it runs

    def _triton(self, request: Request, wl: Workload) -> Callable:
        from costmodel.kernels.matmul import matmul

        v = next(v for v in request.site.subdiagram.vertices if not v.is_free)
        op = matmul.OPS[v.op.split(".")[1]]
        tile, tf32 = request.variant.tile, request.dtype == "tf32"
        return wl.with_target(lambda *a, **k: op(*a, **k, config=tile, tf32=tf32))

    def numerics(self, dtype: str) -> contextlib.AbstractContextManager:
        return matmul_precision("high" if dtype == "tf32" else "highest")

    @contextlib.contextmanager
    def _context(self, request: Request) -> Iterator[None]:
        backend = request.variant.config.get("sdpa_backend", "auto")
        with self.numerics(request.dtype):
            if backend == "auto":
                yield
                return
            from torch.nn.attention import SDPBackend, sdpa_kernel

            chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                      "math": SDPBackend.MATH}[backend]
            with sdpa_kernel(chosen):
                yield

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def _start(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _elapsed(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)

    def _cleanup(self, request: Request) -> None:
        super()._cleanup(request)
        torch.cuda.empty_cache()  # an OOM or a big request must not starve the next

    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]:
        per_set = max(wl.input_bytes, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        n = max(1, min(self.max_sets, math.ceil(2 * self._l2 / per_set), free // 4 // per_set))
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        return [wl.make_inputs(self.device, gen) for _ in range(n)]

    def _row_extra(self) -> dict:
        return {"clocks": self.clocks(), "cache": "cold (rotating input sets over 2x L2)"}

    def clocks(self) -> dict:
        """SM and memory clocks (MHz), temperature (C), power (W) and the clock-event reasons
        bitmask now, from NVML; empty where NVML is not available."""
        if self._nvml is None:
            return {}
        import pynvml

        out: dict[str, Any] = {}
        probes = {
            "sm_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "mem_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "sm_max_mhz": lambda h: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "temperature_c": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "power_w": lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
            "clock_event_reasons": lambda h: getattr(
                pynvml, "nvmlDeviceGetCurrentClocksEventReasons",
                getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))(h),
        }
        for k, probe in probes.items():
            with contextlib.suppress(pynvml.NVMLError, TypeError, AttributeError):
                out[k] = probe(self._nvml)
        return out


def _nvml_handle(props: Any, index: int) -> Any:
    """The NVML handle of the torch device (by PCI bus id, which CUDA_VISIBLE_DEVICES does not
    renumber), or None where NVML is missing or fails (rows then carry no clocks)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, or NVMLError without a driver
        return None
    with contextlib.suppress(Exception):
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    with contextlib.suppress(Exception):
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    return None
