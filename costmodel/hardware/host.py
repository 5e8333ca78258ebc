"""This host's CPU as a target: model, ISA and caches detected at run time, peaks estimated from
the ISA, achievable FLOP/s and memory bandwidth measured once and cached (`calibrate_cpu`)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from costmodel.hardware.profile import HardwareProfile


# ---------------------------------------------------------------------------------------------
# This host's CPU

_MATMUL_N = 2048
_COPY_BYTES = 256 * 2**20
_REPEATS = 5


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if info:
                    break
                continue
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return info


def _cpu_model(info: Mapping[str, str]) -> str:
    return info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _read_sys(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _physical_cores(cpus: list[int]) -> int:
    # SMT siblings share one core's FMA units, so peak FLOP/s counts cores, not logical CPUs.
    cores = set()
    for cpu in cpus:
        core = _read_sys(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id")
        package = _read_sys(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id")
        cores.add((package, core) if core is not None else cpu)
    return max(1, len(cores))


def _cache_bytes(cpu: int, level: int) -> int | None:
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        if _read_sys(f"{index}/level") == str(level) and _read_sys(f"{index}/type") in ("Unified", "Data"):
            match = re.fullmatch(r"(\d+)([KMG]?)", _read_sys(f"{index}/size") or "")
            if match:
                return int(match[1]) * 1024 ** " KMG".index(match[2] or " ")
    return None


def _memory_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the kernel's "kB" is KiB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _clocks_mhz(cpu: int, info: Mapping[str, str]) -> tuple[float | None, str, float | None]:
    """(base MHz, where it comes from, boost MHz); None where this host does not say."""
    boost = _read_sys(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
    boost_mhz = int(boost) / 1e3 if boost and boost.isdigit() else None
    base = _read_sys(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/base_frequency")
    if base and base.isdigit():
        return int(base) / 1e3, "detected (cpufreq base_frequency)", boost_mhz
    match = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
    if match:
        return float(match[1]) * 1e3, "detected (/proc/cpuinfo model name)", boost_mhz
    with contextlib.suppress(KeyError, ValueError):
        return float(info["cpu MHz"]), "detected (/proc/cpuinfo cpu MHz, the clock when read)", boost_mhz
    return None, "", boost_mhz


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "feyntune" / "cpu_calibration.json"


def _median_seconds(fn: Callable[[], object]) -> float:
    fn()  # warm-up: the first call pays page faults and thread-pool start-up
    times = []
    for _ in range(_REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate_cpu(*, refresh: bool = False) -> dict[str, float]:
    """Measured achievable figures of this host: {"fp32_flops": FLOP/s, "memory_bandwidth": bytes/s}.

    fp32_flops times one 2048x2048 fp32 torch.matmul; memory_bandwidth one copy of a 256 MiB tensor,
    counting bytes read plus bytes written (the STREAM convention). Each is the median of 5 runs after
    a warm-up, about 1 s in all. Results are cached as JSON in
    ``${XDG_CACHE_HOME:-~/.cache}/feyntune/cpu_calibration.json``, keyed by CPU model and torch
    thread count; `refresh` measures again.
    """
    import torch

    key = f"{_cpu_model(_cpuinfo())} | threads={torch.get_num_threads()}"
    path = _cache_path()
    cache: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    if not isinstance(cache, dict):
        cache = {}
    cached = cache.get(key)
    names = ("fp32_flops", "memory_bandwidth")
    valid = isinstance(cached, dict) and all(isinstance(cached.get(k), float) and cached[k] > 0 for k in names)
    if valid and not refresh:
        return {k: cached[k] for k in names}

    with torch.inference_mode():
        a = torch.randn(_MATMUL_N, _MATMUL_N)
        b = torch.randn(_MATMUL_N, _MATMUL_N)
        out = torch.empty(_MATMUL_N, _MATMUL_N)
        matmul_s = _median_seconds(lambda: torch.matmul(a, b, out=out))
        src = torch.ones(_COPY_BYTES // 4)
        dst = torch.empty_like(src)
        copy_s = _median_seconds(lambda: dst.copy_(src))
    result = {"fp32_flops": 2 * _MATMUL_N**3 / matmul_s, "memory_bandwidth": 2 * _COPY_BYTES / copy_s}

    cache[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file
    except OSError as exc:
        warnings.warn(f"could not cache the CPU calibration in {path}: {exc}; it is measured again next time",
                      stacklevel=2)
    return dict(result)


@functools.lru_cache(maxsize=1)
def cpu_profile() -> HardwareProfile:
    """This host's CPU: model, ISA and caches detected at run time, peaks estimated from the ISA,
    memory bandwidth measured by `calibrate_cpu()` (cached)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cpus = _usable_cpus()
    cores = _physical_cores(cpus)
    base_mhz, base_source, boost_mhz = _clocks_mhz(cpus[0], info)
    calibration = calibrate_cpu()

    # FLOPs per cycle per core, assuming two FMA pipes: 2 x 16 fp32 lanes x 2 (AVX-512), 2 x 8 x 2 (AVX2+FMA).
    if "avx512f" in flags:
        per_cycle, isa = 64, "avx512f: 64 FLOP/cycle/core"
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "avx2+fma: 32 FLOP/cycle/core"
    else:
        per_cycle, isa = 8, "no avx2/fma: 8 FLOP/cycle/core"
    clock_mhz = boost_mhz or base_mhz
    if clock_mhz is not None:
        fp32 = cores * clock_mhz * 1e6 * per_cycle
        fp32_source = f"estimated from ISA: {cores} cores x {clock_mhz:.0f} MHz x {isa}"
    else:
        fp32 = calibration["fp32_flops"]
        fp32_source = "measured (calibrate_cpu 2048x2048 matmul): this host reports no clock"
    peaks = [("fp32", fp32)]
    if "amx_bf16" in flags:
        peaks.append(("bf16", fp32 / per_cycle * 1024))  # AMX tiles: 1024 bf16 FLOP/cycle/core
        bf16_source = "estimated from ISA: amx_bf16, 1024 FLOP/cycle/core"
    elif "avx512_bf16" in flags:
        peaks.append(("bf16", 2 * fp32))  # vdpbf16ps: two bf16 products per fp32 lane
        bf16_source = "estimated from ISA: avx512_bf16, twice the fp32 rate"
    else:
        bf16_source = ""

    logical_per_core = max(1, len(cpus) // cores)
    vendor_id = info.get("vendor_id", "")
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor_id, vendor_id or platform.machine())
    l2 = _cache_bytes(cpus[0], 2)
    sources = {
        "peak_flops": fp32_source + (f"; bf16 {bf16_source}" if bf16_source else ""),
        "vector_flops": fp32_source,
        "memory_bytes": "detected (/proc/meminfo MemTotal)",
        "memory_bandwidth": "measured (calibrate_cpu: 256 MiB tensor copy, bytes read + written)",
        "compute_units": "detected (os.sched_getaffinity, physical cores via /sys topology)",
        "launch_overhead_s": "assumption: typical framework op dispatch on CPU; not measured",
        "fp32_lanes_per_unit": f"estimated from ISA ({isa}, FMA lanes = FLOP/cycle / 2)",
        "max_threads_per_unit": "detected (logical CPUs per physical core)",
    }
    if l2 is not None:
        sources["l2_bytes"] = "detected (/sys/devices/system/cpu cache index, level 2)"
    if base_mhz is not None:
        sources["base_clock_mhz"] = base_source
    if boost_mhz is not None:
        sources["boost_clock_mhz"] = "detected (cpufreq cpuinfo_max_freq)"
    return HardwareProfile(
        name="cpu",
        kind="cpu",
        display_name=_cpu_model(info),
        vendor=vendor,
        architecture=platform.machine() or "unknown",
        aliases=(),
        peak_flops=tuple(peaks),
        vector_flops=fp32,
        memory_bytes=_memory_bytes(),
        memory_bandwidth=calibration["memory_bandwidth"],
        compute_units=cores,
        launch_overhead_s=5e-6,
        fp32_lanes_per_unit=per_cycle // 2,
        l2_bytes=l2,
        max_threads_per_unit=logical_per_core,
        boost_clock_mhz=boost_mhz,
        base_clock_mhz=base_mhz,
        sources=tuple(sources.items()),
        calibration=tuple(sorted(calibration.items())),
    )
