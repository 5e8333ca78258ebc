"""Hardware targets: public specs of accelerators (``hardware_profiles/*.toml``) and this host's CPU.

A `HardwareProfile` holds every figure in SI base units: FLOP/s, bytes, bytes/s, seconds (clocks in
MHz, power in watts). The TOML files use the units their sources print (TFLOP/s, GiB, GB/s, ...);
`hardware_profiles/README.md` gives the schema and how to add a target.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import re
import statistics
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType

from costmodel.errors import UserError, unknown_choice

DTYPES = ("fp32", "tf32", "fp16", "bf16")

_PROFILES_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
_KINDS = ("gpu", "tpu", "cpu")

# TOML key -> (profile field, SI value = TOML value * multiplier / divisor). Memory capacities are binary
# (a vendor's "80 GB" of HBM is 80 GiB: nvidia-smi shows 81920 MiB on an A100 80GB); bandwidths are
# decimal GB/s. A divisor rather than a 1e-6 multiplier keeps 5 us exactly 5e-06 s.
_SCALED = {
    "vector_tflops": ("vector_flops", 10**12, 1),
    "memory_gib": ("memory_bytes", 2**30, 1),
    "memory_bandwidth_gb_s": ("memory_bandwidth", 10**9, 1),
    "launch_overhead_us": ("launch_overhead_s", 1, 10**6),
    "l2_mib": ("l2_bytes", 2**20, 1),
    "shared_memory_kib": ("shared_memory_per_unit", 2**10, 1),
}
_COUNTS = (
    "compute_units", "fp32_lanes_per_unit", "tensor_core_generation", "registers_per_unit", "max_threads_per_unit",
)
_MEASURES = ("boost_clock_mhz", "base_clock_mhz", "tdp_watts")
_TEXT = ("name", "kind", "display_name", "vendor", "architecture")
_REQUIRED = (
    *_TEXT, "peak_tflops", "memory_gib", "memory_bandwidth_gb_s", "compute_units", "launch_overhead_us", "sources",
)
_FIGURES = ("peak_tflops", *_SCALED, *_COUNTS, *_MEASURES)  # keys that need a source
_FIELD_OF = {  # TOML key of a figure -> profile field
    "peak_tflops": "peak_flops", **{k: v[0] for k, v in _SCALED.items()}, **{k: k for k in (*_COUNTS, *_MEASURES)},
}
_KNOWN = frozenset((*_TEXT, "aliases", "nvml_names", "sources", *_FIGURES))
_INT_FIELDS = frozenset(("memory_bytes", "l2_bytes", "shared_memory_per_unit"))


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
        return features

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


# ---------------------------------------------------------------------------------------------
# Profiles from TOML


@dataclass(frozen=True)
class _Catalog:
    by_name: Mapping[str, HardwareProfile]  # canonical name -> profile
    lookup: Mapping[str, str]  # lower-case name or alias -> canonical name
    by_nvml: Mapping[str, str]  # normalised NVML device name -> canonical name


def _directory(directory: str | os.PathLike | None) -> Path:
    return _PROFILES_DIR if directory is None else Path(directory).resolve()


@functools.lru_cache(maxsize=None)
def _catalog(directory: Path) -> _Catalog:
    if not directory.is_dir():
        raise UserError(f"hardware profile directory {directory} does not exist")
    by_name: dict[str, HardwareProfile] = {}
    lookup: dict[str, str] = {}
    by_nvml: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        profile, nvml_names = _read_profile(path)
        for key in (profile.name, *profile.aliases):
            if key in lookup or key == "cpu":
                taken = "the host CPU" if key == "cpu" else f"{lookup[key]!r}"
                raise UserError(f"hardware profile {path}: name or alias {key!r} is already taken by {taken}")
            lookup[key] = profile.name
        for nvml_name in nvml_names:
            by_nvml[_normalise_gpu_name(nvml_name)] = profile.name
        by_name[profile.name] = profile
    return _Catalog(MappingProxyType(by_name), MappingProxyType(lookup), MappingProxyType(by_nvml))


def _read_profile(path: Path) -> tuple[HardwareProfile, tuple[str, ...]]:
    """Parse and validate one TOML file; every problem is a UserError naming the file."""

    def fail(message: str) -> UserError:
        return UserError(f"hardware profile {path}: {message}")

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"cannot be read as TOML: {exc}") from None
    for key in _REQUIRED:
        if key not in raw:
            raise fail(f"missing required key {key!r}")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise fail(f"unknown keys {unknown}; valid keys are listed in hardware_profiles/README.md")
    for key in _TEXT:
        if not isinstance(raw[key], str) or not raw[key]:
            raise fail(f"{key!r} must be a non-empty string")
    if raw["kind"] not in ("gpu", "tpu"):
        raise fail(f"kind {raw['kind']!r} must be 'gpu' or 'tpu' (the CPU profile is detected, not read)")
    if raw["name"] != path.stem:
        raise fail(f"name {raw['name']!r} must equal the file name {path.stem!r}")
    if raw["name"] != raw["name"].lower():
        raise fail(f"name {raw['name']!r} must be lower-case")
    lists = {}
    for key in ("aliases", "nvml_names"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(f"{key!r} must be a list of non-empty strings")
        lists[key] = tuple(value)

    peaks = raw["peak_tflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise fail("'peak_tflops' must be a table of dtype = TFLOP/s with at least one entry")
    bad = sorted(set(peaks) - set(DTYPES))
    if bad:
        raise fail(f"peak_tflops has unknown dtypes {bad}; valid dtypes: {', '.join(DTYPES)}")
    values: dict[str, object] = {
        "peak_flops": tuple((d, _positive(fail, f"peak_tflops.{d}", peaks[d]) * 10**12) for d in DTYPES if d in peaks),
        "vector_flops": 0.0,
    }
    for key, (field_name, multiplier, divisor) in _SCALED.items():
        if key in raw:
            value = _positive(fail, key, raw[key]) * multiplier / divisor
            values[field_name] = round(value) if field_name in _INT_FIELDS else value
    for key in _COUNTS:
        if key in raw:
            value = raw[key]
            minimum = 0 if key == "tensor_core_generation" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise fail(f"{key!r} must be an integer >= {minimum}, got {value!r}")
            values[key] = value
    for key in _MEASURES:
        if key in raw:
            values[key] = float(_positive(fail, key, raw[key]))

    sources = raw["sources"]
    if not isinstance(sources, dict) or not all(isinstance(v, str) and v for v in sources.values()):
        raise fail("'sources' must be a table of key = non-empty string")
    given = [key for key in _FIGURES if key in raw]
    missing = [key for key in given if key not in sources]
    if missing:
        raise fail(f"no source for {missing}; add them to [sources]")
    stray = sorted(set(sources) - set(given))
    if stray:
        raise fail(f"[sources] names keys the file does not set: {stray}")
    profile = HardwareProfile(
        **{key: raw[key] for key in _TEXT},
        aliases=tuple(alias.lower() for alias in lists["aliases"]),
        sources=tuple((_FIELD_OF[key], sources[key]) for key in given),
        **values,
    )
    return profile, lists["nvml_names"]


def _positive(fail: Callable[[str], UserError], key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise fail(f"{key!r} must be a positive number, got {value!r}")
    return float(value)


def list_profiles(*, directory: str | os.PathLike | None = None) -> list[str]:
    """Canonical names of every target: one per TOML file in `directory`, plus "cpu" (this host)."""
    return sorted([*_catalog(_directory(directory)).by_name, "cpu"])


def load_profile(name: str, *, directory: str | os.PathLike | None = None) -> HardwareProfile:
    """The profile for a canonical name or alias (case-insensitive); "cpu" is `cpu_profile()`.

    Raises UserError listing the valid names and aliases when `name` is unknown, or naming the file
    when a TOML in `directory` (default: the package's ``hardware_profiles/``) is malformed.
    """
    key = str(name).strip().lower()
    if key == "cpu":
        return cpu_profile()
    catalog = _catalog(_directory(directory))
    canonical = catalog.lookup.get(key)
    if canonical is None:
        raise unknown_choice("target", name, [*catalog.lookup, "cpu"])
    return catalog.by_name[canonical]


# ---------------------------------------------------------------------------------------------
# GPU detection


def _normalise_gpu_name(name: str) -> str:
    # Older drivers drop the "NVIDIA " prefix ("A100-SXM4-40GB"); match either spelling.
    name = " ".join(name.split()).lower()
    return name.removeprefix("nvidia ")


def profile_for_device_name(name: str, *, directory: str | os.PathLike | None = None) -> str | None:
    """The profile name for a device name as NVML or torch.cuda prints it (e.g. "Tesla T4" -> "t4",
    "NVIDIA A100-PCIE-40GB" -> "a100-pcie-40gb"); None when no profile lists it in nvml_names."""
    return _catalog(_directory(directory)).by_nvml.get(_normalise_gpu_name(name))


def detect_gpu(*, directory: str | os.PathLike | None = None) -> str | None:
    """The profile name of GPU 0, from its NVML device name (e.g. "Tesla T4" -> "t4").

    None when pynvml is not installed, there is no NVIDIA driver or no GPU; None with a warning
    when the GPU's name matches no profile's ``nvml_names``.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    if isinstance(name, bytes):  # nvidia-ml-py before 11.5 returns bytes
        name = name.decode(errors="replace")
    canonical = profile_for_device_name(name, directory=directory)
    if canonical is None:
        warnings.warn(
            f"GPU {name!r} matches no hardware profile; add its name to nvml_names in a "
            "hardware_profiles/*.toml file (see hardware_profiles/README.md)",
            stacklevel=2,
        )
    return canonical


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
