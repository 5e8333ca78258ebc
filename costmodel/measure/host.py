"""This machine's CPU as a runner."""
from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch

from costmodel.hardware import HardwareProfile, cpu_profile
from costmodel.measure.runner import Runner
from costmodel.measure.slicing import Workload
from costmodel.measure.variants import Site, Variant, eager_variants


def slug(text: str) -> str:
    """`text` as a lower-case name of letters, digits and dashes (a hardware column value)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


class HostRunner(Runner):
    """This machine's CPU. Calls are timed with perf_counter. A request's inputs are made once
    (warm caches); a first call (it compiles for inductor), warm-up calls for `warmup_s`, then
    timed calls until they add up to `target_s`, at least `min_repeats` and at most
    `max_repeats`. Rows record `torch.get_num_threads()`; hardware is "cpu-" and the CPU model."""

    name = "cpu"
    source = "host"
    kind = "cpu"
    dtypes = ("fp32", "fp16", "bf16")

    def __init__(self, *, target_s: float = 0.1, min_repeats: int = 5, max_repeats: int = 1000,
                 warmup_s: float = 0.02, timeout_s: float = 60.0,
                 compilers: Sequence[str] = ("eager", "inductor"), check: bool = True,
                 fusion: bool = True, seed: int = 0) -> None:
        super().__init__(target_s=target_s, min_repeats=min_repeats, max_repeats=max_repeats,
                         warmup_s=warmup_s, timeout_s=timeout_s, compilers=compilers, check=check,
                         fusion=fusion, seed=seed)

    @cached_property
    def hardware(self) -> str:
        return f"cpu-{slug(self.profile().display_name)}"

    def profile(self) -> HardwareProfile:
        return cpu_profile()

    def key(self) -> dict:
        return {**super().key(), "cpu": self.profile().display_name, "machine": platform.machine()}

    def clocks(self) -> dict | None:
        try:
            khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq").read_text().strip()
            return {"cpu0_mhz": int(khz) / 1e3}
        except (OSError, ValueError):
            return None

    def configs(self, site: Site, dtype: str) -> list[Variant]:
        return eager_variants(site, self.compilers)

    def _row_extra(self) -> dict:
        # Other processes on a small host skew timings; the load lets noisy rows be found.
        return {"loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "cache": "warm (one input set)"}

    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]:
        return [wl.make_inputs(self.device, torch.Generator().manual_seed(self.seed))]

    def _start(self) -> int:
        return time.perf_counter_ns()

    def _elapsed(self, start: int, end: int) -> float:
        return (end - start) / 1e6
