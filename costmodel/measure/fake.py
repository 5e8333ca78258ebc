"""A GPU that is not there, as a runner: for tests, and for running the whole CUDA and
`autotune --measure` plumbing on a CPU-only machine (tinygrad's null device)."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir import rules
from costmodel.ir.plan import Kernel
from costmodel.measure.cuda import CudaRunner
from costmodel.measure.runner import Result
from costmodel.measure.variants import SDPA_BACKENDS, Request

# The fake time of each way of running a kernel, relative to the roofline (made up).
FACTORS = {"eager": 1.0, "inductor": 0.95, "triton": 1.1, "sdpa-auto": 1.0, "sdpa-flash": 0.9,
           "sdpa-efficient": 1.2, "sdpa-math": 2.5, "inductor-max-autotune": 0.9}


class FakeRunner(CudaRunner):
    """CudaRunner's configs, keys and rows on the meta device: every graph is still built and
    run (on meta tensors, so shapes are checked and nothing is allocated), and each timing is
    seeded: the roofline of `hardware`'s profile (the sum of its ops' for an unfused group, or
    of the kernels `time` is told a callable runs) times a factor and lognormal noise (`noise`
    sigma), over `repeats` draws. `fail_rate` of requests (chosen by the seed) fail on purpose."""

    name = "fake"
    source = "fake"

    def __init__(self, *, hardware: str = "a100-sxm4-80gb", seed: int = 0, noise: float = 0.05,
                 repeats: int = 25, fail_rate: float = 0.0,
                 compilers: Sequence[str] = ("eager", "inductor", "triton"),
                 sdpa_backends: Sequence[str] = SDPA_BACKENDS, fusion: bool = True) -> None:
        self._fake_profile = load_profile(hardware)
        self.noise, self.repeats, self.fail_rate = noise, repeats, fail_rate
        super().__init__(compilers=compilers, sdpa_backends=sdpa_backends, fusion=fusion, seed=seed)

    def _probe(self) -> None:
        p = self._fake_profile
        self.device = torch.device("meta")
        self._gpu_name, self._driver, self._cuda_version = f"{p.display_name} (fake)", "fake", "fake"
        self._profile_name = p.name
        self._limits = rules.Limits(p.name, p.shared_memory_per_unit or rules.DEFAULT_SHARED_MEMORY,
                                    p.max_threads_per_unit or rules.DEFAULT_THREADS_PER_UNIT)
        self._l2 = p.l2_bytes or 40 * 2**20

    def profile(self) -> HardwareProfile:
        return self._fake_profile

    def clocks(self) -> dict:
        return {"sm_mhz": self._fake_profile.boost_clock_mhz, "fake": True}

    def numerics(self, dtype: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sync(self) -> None:
        pass

    def _cleanup(self, request: Request) -> None:
        pass

    def _seconds(self, kernels: Sequence[Kernel]) -> float:
        from costmodel.models.roofline import Roofline

        return sum(Roofline().kernel_seconds(k.subdiagram, self._fake_profile, k.config) for k in kernels)

    def _samples(self, rng: random.Random, ms: float, n: int) -> list[float]:
        return [ms * rng.lognormvariate(0.0, self.noise) for _ in range(n)]

    def _measure(self, request: Request) -> Result:
        wl = request.workload(self.device)
        with torch.no_grad():
            wl.module.forward(*wl.make_inputs(self.device))  # the graph must build and run
        rng = random.Random(f"{self.seed}|{request.site.subdiagram.hash}|{request.variant.config_json}")
        if rng.random() < self.fail_rate:
            return Result.failure("injected failure (FakeRunner fail_rate)")
        cfg = request.variant.config
        sub = request.site.subdiagram
        if request.site.fused and cfg.get("compiler") == "eager":
            diagram = request.program.diagram
            kernels = [Kernel(diagram.subdiagram([v.name])) for v in sub.vertices if not v.is_free]
        else:
            kernels = [Kernel(sub, request.variant.tile)]
        factor = FACTORS.get(request.variant.name.split(":")[0], 1.0)
        ms = self._seconds(kernels) * 1e3 * factor
        return Result.of(self._samples(rng, ms, self.repeats), input_sets=1,
                         input_bytes=wl.input_bytes, **self._row_extra())

    def time(self, fns: Mapping[str, Callable], input_sets: Sequence[Sequence[Any]], *,
             repeats: int | None = None, warmup: int | None = None, pipelined: bool = False,
             work: Mapping[str, tuple[Sequence[Kernel], float]] | None = None
             ) -> dict[str, list[float]]:
        """Each callable is called once (it must run, on meta tensors); its samples are the
        roofline of the kernels `work` says it runs, times its factor, with seeded noise."""
        out = {}
        for name, fn in fns.items():
            fn(*input_sets[0])
            if work is None or name not in work:
                raise ValueError(f"the fake runner prices what it is told a callable runs; "
                                 f"no work given for {name!r}")
            kernels, factor = work[name]
            rng = random.Random(f"{self.seed}|{name}|{len(kernels)}")
            out[name] = self._samples(rng, self._seconds(kernels) * 1e3 * factor, repeats or self.repeats)
        return out
