"""The catalogue of targets: one TOML file per accelerator in ``hardware_profiles/`` (its
public specs and where each figure comes from; `hardware_profiles/README.md` gives the schema),
plus "cpu", this host. Names, aliases and NVML device names resolve here.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from costmodel.errors import UserError, unknown_choice
from costmodel.hardware.host import cpu_profile
from costmodel.hardware.profile import DTYPES, HardwareProfile

_PROFILES_DIR = Path(__file__).resolve().parents[2] / "hardware_profiles"

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
    "compute_units", "fp32_lanes_per_unit", "shared_int_lanes_per_unit", "tensor_core_generation",
    "registers_per_unit", "max_threads_per_unit",
)
_ZERO_ALLOWED = frozenset(("shared_int_lanes_per_unit", "tensor_core_generation"))  # counts where 0 is a value
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
    if raw["kind"] not in ("gpu", "tpu", "cpu"):
        raise fail(f"kind {raw['kind']!r} must be 'gpu', 'tpu' or 'cpu'")
    if raw["kind"] == "cpu" and raw["name"] == "cpu":
        raise fail("name 'cpu' is this host, whose profile is detected, not read; name a CPU file after its model")
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
            minimum = 0 if key in _ZERO_ALLOWED else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise fail(f"{key!r} must be an integer >= {minimum}, got {value!r}")
            values[key] = value
    for key in _MEASURES:
        if key in raw:
            values[key] = float(_positive(fail, key, raw[key]))
    shared, lanes = values.get("shared_int_lanes_per_unit"), values.get("fp32_lanes_per_unit")
    if shared is not None and lanes is not None and shared > lanes:
        raise fail(f"'shared_int_lanes_per_unit' ({shared}) must not exceed 'fp32_lanes_per_unit' ({lanes})")

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
