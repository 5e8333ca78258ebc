"""Tests for costmodel.hardware: the shipped profiles, name resolution, the CPU profile, GPU detection."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
from pathlib import Path

import pytest

from costmodel import hardware
from costmodel.errors import UserError
from costmodel.hardware import (
    DTYPES, HardwareProfile, calibrate_cpu, cpu_profile, detect_gpu, list_profiles, load_profile,
)

SHIPPED_DIR = Path(hardware.__file__).resolve().parents[2] / "hardware_profiles"
GPUS = (
    "a100-pcie-40gb", "a100-sxm4-40gb", "a100-pcie-80gb", "a100-sxm4-80gb", "h100-sxm", "h100-pcie",
    "h200", "l4", "t4", "v100-pcie-32gb", "v100-sxm2-16gb", "p100-pcie-16gb", "p4",
    # the older machines of the DeepBench data
    "gtx-1080ti", "titan-x-pascal", "titan-xp", "gtx-titan-x-maxwell", "tesla-m40", "radeon-instinct-mi25",
    "radeon-vega-frontier",
)
TPUS = ("tpu-v3", "tpu-v4", "tpu-v5e")
CPU_FILES = ("xeon-phi-7250",)  # CPUs read from a file, unlike this host's CPU ("cpu"), which is detected
# Every shipped file (the name predates CPU files: the Xeon Phi is one of them, though not an accelerator).
ACCELERATORS = (*GPUS, *TPUS, *CPU_FILES)
KIND_OF = {**dict.fromkeys(GPUS, "gpu"), **dict.fromkeys(TPUS, "tpu"), **dict.fromkeys(CPU_FILES, "cpu")}
# Fields that hold a figure from somewhere, and so need a source when set.
FIGURES = (
    "peak_flops", "vector_flops", "memory_bytes", "memory_bandwidth", "compute_units", "launch_overhead_s",
    "fp32_lanes_per_unit", "shared_int_lanes_per_unit", "tensor_core_generation", "l2_bytes",
    "shared_memory_per_unit", "registers_per_unit", "max_threads_per_unit", "boost_clock_mhz", "base_clock_mhz",
    "tdp_watts",
)


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    """The host CPU profile, its calibration cached in a temporary XDG cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        cpu_profile.cache_clear()
        yield cpu_profile()
    cpu_profile.cache_clear()


def _all_profiles(cpu: HardwareProfile) -> list[HardwareProfile]:
    return [load_profile(name) for name in ACCELERATORS] + [cpu]


def _given_figures(profile: HardwareProfile) -> list[str]:
    def given(name: str) -> bool:
        value = getattr(profile, name)
        return value is not None and not (name == "vector_flops" and value == 0.0)

    return [name for name in FIGURES if given(name)]


def test_list_profiles_is_every_shipped_file_plus_cpu():
    assert list_profiles() == sorted([*ACCELERATORS, "cpu"])


@pytest.mark.parametrize("name", ACCELERATORS)
def test_profile_loads_with_positive_figures_and_a_source_for_each(name):
    profile = load_profile(name)
    assert profile.name == name and profile.name != "cpu" and profile.kind == KIND_OF[name]
    assert profile.dtypes and all(profile.peak(dtype) > 0 for dtype in profile.dtypes)
    assert profile.memory_bytes > 0 and profile.memory_bandwidth > 0
    assert profile.compute_units > 0 and profile.launch_overhead_s > 0
    sources = dict(profile.sources)
    missing = [field for field in _given_figures(profile) if not sources.get(field)]
    assert not missing, f"{name}: no source for {missing}"
    assert sources["launch_overhead_s"].startswith("assumption")
    assert profile.launch_overhead_s == (10e-6 if profile.kind == "tpu" else 5e-6)


# 32-bit registers per SM (NVIDIA) or vector registers per CU (AMD GCN: 4 SIMDs x 64 KiB of 4-byte VGPRs).
REGISTERS_PER_UNIT = {"NVIDIA": 65536, "AMD": 4 * 64 * 1024 // 4}


@pytest.mark.parametrize("name", GPUS)
def test_gpu_figures_agree_with_each_other(name):
    gpu = load_profile(name)
    assert gpu.kind == "gpu" and gpu.vendor in REGISTERS_PER_UNIT
    # fp32 matmul runs on the vector ALUs: NVIDIA's tensor cores take fp32 only as tf32, and GCN (Vega) has no
    # matrix units, so the matrix and vector fp32 peaks are one figure.
    assert gpu.vendor == "NVIDIA" or gpu.architecture.startswith("gcn")
    assert gpu.peak("fp32") == gpu.vector_flops
    if gpu.tensor_core_generation:
        assert gpu.peak("fp16") > 3 * gpu.vector_flops
    elif "fp16" in gpu.dtypes:  # no tensor cores: fp16 at twice the fp32 rate (P100, Vega's packed math)
        assert gpu.peak("fp16") == pytest.approx(2 * gpu.vector_flops, rel=0.02)
    if gpu.boost_clock_mhz is not None:
        derived = gpu.compute_units * gpu.fp32_lanes_per_unit * 2 * gpu.boost_clock_mhz * 1e6
        assert derived == pytest.approx(gpu.vector_flops, rel=0.05)
    if gpu.base_clock_mhz is not None:
        assert gpu.base_clock_mhz < gpu.boost_clock_mhz
    assert gpu.registers_per_unit == REGISTERS_PER_UNIT[gpu.vendor]
    if gpu.vendor == "NVIDIA":
        assert gpu.shared_memory_per_unit <= 228 * 1024
    else:  # AMD: the 64 KiB local data share of a CU, all of it open to one workgroup
        assert gpu.shared_memory_per_unit == 64 * 1024


@pytest.mark.parametrize("name", CPU_FILES)
def test_cpu_file_figures_agree_with_each_other(name):
    cpu = load_profile(name)
    assert cpu.kind == "cpu" and cpu.name == name
    assert cpu.peak("fp32") == cpu.vector_flops
    # Intel counts the Xeon Phi's peak at its base clock, not its turbo clock.
    derived = cpu.compute_units * cpu.fp32_lanes_per_unit * 2 * cpu.base_clock_mhz * 1e6
    assert derived == pytest.approx(cpu.vector_flops, rel=0.05)
    assert cpu.base_clock_mhz < cpu.boost_clock_mhz
    # GPU-only fields stay unset rather than 0.
    assert cpu.tensor_core_generation is None and cpu.shared_memory_per_unit is None
    assert cpu.registers_per_unit is None


@pytest.mark.parametrize("name", ACCELERATORS)
def test_shared_int_lanes_are_at_most_the_fp32_lanes(name):
    profile = load_profile(name)
    if profile.shared_int_lanes_per_unit is not None:
        assert profile.fp32_lanes_per_unit is not None
        assert 0 <= profile.shared_int_lanes_per_unit <= profile.fp32_lanes_per_unit


@pytest.mark.parametrize("name", GPUS)
def test_shared_int_lanes_follow_the_architecture(name):
    gpu = load_profile(name)
    if gpu.vendor == "AMD":  # no source found for GCN: left out (hardware_profiles/README.md)
        assert gpu.shared_int_lanes_per_unit is None
        return
    lanes = gpu.fp32_lanes_per_unit
    expected = {
        "maxwell": lanes, "pascal": lanes,  # every FP32 core also runs INT32
        "volta": 0, "turing": 0, "hopper": 0,  # separate INT32 units
        # GA100 (64 FP32 lanes per SM) has separate INT32 units; GA10x (128) shares 64 of its lanes, as Ada does
        "ampere": 0 if lanes == 64 else 64, "ada": 64,
    }[gpu.architecture]
    assert gpu.shared_int_lanes_per_unit == expected


def test_the_xeon_phi_is_a_cpu_file_beside_the_detected_host(cpu):
    phi = load_profile("xeon-phi-7250")
    assert phi.kind == "cpu" and phi.name != "cpu" and phi.vendor == "Intel"
    assert load_profile("xeon-phi-7250f") is phi
    assert load_profile("cpu") is cpu and cpu is not phi
    assert {"cpu", "xeon-phi-7250"} <= set(list_profiles())
    descriptor = phi.descriptor()
    assert descriptor["is_cpu"] == 1.0 and descriptor["is_gpu"] == 0.0
    assert descriptor["has_tensor_core_generation"] == 0.0


@pytest.mark.parametrize(
    ("name", "dtypes"),
    [
        ("a100-sxm4-80gb", DTYPES),
        ("h100-sxm", DTYPES),
        ("l4", DTYPES),
        ("v100-pcie-32gb", ("fp32", "fp16")),
        ("t4", ("fp32", "fp16")),
        ("p100-pcie-16gb", ("fp32", "fp16")),
        ("p4", ("fp32",)),
        ("gtx-1080ti", ("fp32",)),  # GP102: fp16 at 1/64 rate
        ("gtx-titan-x-maxwell", ("fp32",)),
        ("radeon-instinct-mi25", ("fp32", "fp16")),  # Vega packed math
        ("xeon-phi-7250", ("fp32",)),
        ("tpu-v4", ("bf16",)),
    ],
)
def test_dtypes_are_only_those_the_chip_has(name, dtypes):
    assert load_profile(name).dtypes == dtypes


def test_units_are_converted_to_si():
    a100 = load_profile("a100-sxm4-80gb")
    assert a100.peak("bf16") == pytest.approx(312e12)
    assert a100.memory_bytes == 80 * 2**30
    assert a100.memory_bandwidth == pytest.approx(2039e9)
    assert a100.l2_bytes == 40 * 2**20
    assert a100.shared_memory_per_unit == 163 * 1024
    assert a100.launch_overhead_s == pytest.approx(5e-6)
    # H100 SXM follows the datasheet's 3.35 TB/s, not NeuSight's 3430 GB/s.
    assert load_profile("h100-sxm").memory_bandwidth == pytest.approx(3.35e12)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("a100", "a100-sxm4-80gb"), ("h100", "h100-sxm"), ("v100", "v100-pcie-32gb"), ("p100", "p100-pcie-16gb")],
)
def test_aliases_resolve(alias, canonical):
    assert load_profile(alias) is load_profile(canonical)


@pytest.mark.parametrize("spelling", ["A100", "A100-SXM4-80GB", "a100-Sxm4-80gb", " a100 "])
def test_names_are_case_insensitive(spelling):
    assert load_profile(spelling).name == "a100-sxm4-80gb"


def test_unknown_target_lists_names_and_aliases():
    with pytest.raises(UserError) as info:
        load_profile("a200")
    message = str(info.value)
    assert "'a200'" in message
    for choice in ("a100-sxm4-80gb", "a100", "h100", "tpu-v5e", "cpu"):
        assert choice in message


@pytest.mark.parametrize(("name", "dtype"), [("t4", "bf16"), ("v100", "tf32"), ("p4", "fp16"), ("tpu-v4", "fp32")])
def test_unsupported_dtype_lists_the_supported_ones(name, dtype):
    profile = load_profile(name)
    with pytest.raises(UserError) as info:
        profile.peak(dtype)
    message = str(info.value)
    assert profile.name in message and repr(dtype) in message
    assert all(supported in message for supported in profile.dtypes)


def test_profiles_are_frozen_and_shared():
    profile = load_profile("t4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.compute_units = 1
    assert load_profile("T4") is profile


def test_profile_rejects_dtypes_out_of_order():
    fields = dataclasses.asdict(load_profile("t4"))
    fields["peak_flops"] = (("fp16", 1e12), ("fp32", 1e12))
    with pytest.raises(UserError, match="DTYPES|order"):
        HardwareProfile(**fields)


def test_descriptor_keys_line_up_across_profiles(cpu):
    descriptors = [profile.descriptor() for profile in _all_profiles(cpu)]
    keys = list(descriptors[0])
    for descriptor in descriptors:
        assert list(descriptor) == keys
        assert all(isinstance(v, float) and math.isfinite(v) for v in descriptor.values())
    t4 = load_profile("t4").descriptor()
    assert t4["has_peak_flops_bf16"] == 0.0 and t4["log10_peak_flops_bf16"] == 0.0
    assert t4["has_peak_flops_fp16"] == 1.0 and t4["log10_peak_flops_fp16"] == pytest.approx(math.log10(65e12))
    tpu = load_profile("tpu-v4").descriptor()
    assert tpu["is_tpu"] == 1.0 and tpu["has_vector_flops"] == 0.0 and tpu["has_tensor_core_generation"] == 0.0
    # A GPU without tensor cores says so (0 with the flag set), unlike a TPU where the field does not apply.
    p100 = load_profile("p100").descriptor()
    assert p100["tensor_core_generation"] == 0.0 and p100["has_tensor_core_generation"] == 1.0


def test_to_dict_is_json_ready(cpu):
    for profile in _all_profiles(cpu):
        data = json.loads(json.dumps(profile.to_dict()))
        assert data["name"] == profile.name
        assert data["peak_flops"] == dict(profile.peak_flops)
        assert set(data["sources"]) == {field for field, _ in profile.sources}


# -- the host CPU ------------------------------------------------------------------------------


def test_cpu_profile_is_detected_and_calibrated(cpu):
    assert cpu.name == "cpu" and cpu.kind == "cpu" and cpu.display_name
    assert cpu.peak("fp32") > 0 and cpu.vector_flops > 0
    assert cpu.compute_units >= 1 and cpu.memory_bytes > 0
    calibration = dict(cpu.calibration)
    assert calibration["memory_bandwidth"] > 0 and calibration["fp32_flops"] > 0
    assert cpu.memory_bandwidth == calibration["memory_bandwidth"]
    sources = dict(cpu.sources)
    assert sources["memory_bandwidth"].startswith("measured")
    assert sources["peak_flops"].startswith(("estimated from ISA", "measured"))
    assert sources["memory_bytes"].startswith("detected")
    missing = [field for field in _given_figures(cpu) if not sources.get(field)]
    assert not missing, f"cpu: no source for {missing}"
    assert load_profile("CPU") is cpu


def test_calibrate_cpu_caches_by_model_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = calibrate_cpu()
    cache = json.loads((tmp_path / "feyntune" / "cpu_calibration.json").read_text())
    (key,) = cache
    assert "threads=" in key and cache[key] == first
    assert calibrate_cpu() == first  # read back, not measured again


# -- GPU detection ---------------------------------------------------------------------------


def _fake_pynvml(name: str | bytes | None, *, init_fails: bool = False) -> types.ModuleType:
    """A stand-in for nvidia-ml-py: one GPU called `name`, none if None, no driver if init_fails."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    module.NVMLError = NVMLError
    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 0 if name is None else 1
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = lambda handle: name
    return module


def test_detect_gpu_here_returns_none_or_a_profile_without_raising():
    found = detect_gpu()
    assert found is None or found in ACCELERATORS


@pytest.mark.parametrize(
    ("nvml_name", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("A100-SXM4-40GB", "a100-sxm4-40gb"),  # older drivers drop the NVIDIA prefix
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H200", "h200"),
        ("Tesla T4", "t4"),
        (b"Tesla V100-PCIE-32GB", "v100-pcie-32gb"),  # nvidia-ml-py < 11.5 returns bytes
        ("GeForce GTX 1080 Ti", "gtx-1080ti"),
        ("NVIDIA GeForce GTX 1080 Ti", "gtx-1080ti"),
        ("TITAN X (Pascal)", "titan-x-pascal"),
        ("NVIDIA TITAN Xp", "titan-xp"),
        ("GeForce GTX TITAN X", "gtx-titan-x-maxwell"),
        ("Tesla M40", "tesla-m40"),
    ],
)
def test_detect_gpu_maps_nvml_names(monkeypatch, nvml_name, expected):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(nvml_name))
    assert detect_gpu() == expected


def test_detect_gpu_warns_on_an_unknown_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml("NVIDIA GeForce RTX 4090"))
    with pytest.warns(UserWarning, match="RTX 4090"):
        assert detect_gpu() is None


@pytest.mark.parametrize("fake", [None, _fake_pynvml(None), _fake_pynvml("Tesla T4", init_fails=True)])
def test_detect_gpu_is_none_without_pynvml_driver_or_gpu(monkeypatch, fake):
    # sys.modules[name] = None makes `import pynvml` raise ImportError.
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert detect_gpu() is None


# -- profiles from another directory ----------------------------------------------------------


def _write_variant(directory: Path, name: str = "t4", drop: tuple[str, ...] = ()) -> Path:
    lines = (SHIPPED_DIR / f"{name}.toml").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(drop)] if drop else lines
    path = directory / f"{name}.toml"
    path.write_text("\n".join(kept) + "\n")
    return path


def test_directory_keyword_loads_other_profiles(tmp_path):
    _write_variant(tmp_path)
    assert list_profiles(directory=tmp_path) == ["cpu", "t4"]
    assert load_profile("t4", directory=tmp_path) == load_profile("t4")
    with pytest.raises(UserError, match="a100"):
        load_profile("a100", directory=tmp_path)


def test_malformed_toml_names_the_file(tmp_path):
    (tmp_path / "broken.toml").write_text('name = "broken"\nkind = [\n')
    with pytest.raises(UserError, match="broken.toml"):
        load_profile("broken", directory=tmp_path)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("memory_bandwidth_gb_s",), "memory_bandwidth_gb_s"),  # the figure and its source
        (("tdp_watts = \"",), "tdp_watts"),  # only the source
    ],
)
def test_missing_key_or_source_names_the_file_and_key(tmp_path, drop, named):
    _write_variant(tmp_path, drop=drop)
    with pytest.raises(UserError) as info:
        load_profile("t4", directory=tmp_path)
    assert "t4.toml" in str(info.value) and named in str(info.value)


def _write_text(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_cpu_file_loads_under_its_own_name(tmp_path):
    _write_text(tmp_path, "xeon-phi-7250", (SHIPPED_DIR / "xeon-phi-7250.toml").read_text())
    assert list_profiles(directory=tmp_path) == ["cpu", "xeon-phi-7250"]
    assert load_profile("xeon-phi-7250", directory=tmp_path) == load_profile("xeon-phi-7250")


def test_a_cpu_file_may_not_take_the_hosts_name(tmp_path):
    text = (SHIPPED_DIR / "xeon-phi-7250.toml").read_text().replace('name = "xeon-phi-7250"', 'name = "cpu"')
    _write_text(tmp_path, "cpu", text)
    with pytest.raises(UserError, match=r"cpu\.toml.*detected"):
        list_profiles(directory=tmp_path)


def test_an_unknown_kind_is_rejected(tmp_path):
    _write_text(tmp_path, "t4", (SHIPPED_DIR / "t4.toml").read_text().replace('kind = "gpu"', 'kind = "fpga"'))
    with pytest.raises(UserError, match=r"t4\.toml.*'fpga'"):
        load_profile("t4", directory=tmp_path)


def test_more_shared_int_lanes_than_fp32_lanes_is_rejected(tmp_path):
    text = (SHIPPED_DIR / "t4.toml").read_text().replace(
        "shared_int_lanes_per_unit = 0\n", "shared_int_lanes_per_unit = 65\n"
    )
    _write_text(tmp_path, "t4", text)
    with pytest.raises(UserError, match=r"t4\.toml.*shared_int_lanes_per_unit"):
        load_profile("t4", directory=tmp_path)


def test_shared_int_lanes_need_a_source(tmp_path):
    _write_variant(tmp_path, drop=('shared_int_lanes_per_unit = "',))
    with pytest.raises(UserError, match=r"t4\.toml.*shared_int_lanes_per_unit"):
        load_profile("t4", directory=tmp_path)


def test_duplicate_alias_is_rejected(tmp_path):
    _write_variant(tmp_path, "v100-pcie-32gb")
    text = (SHIPPED_DIR / "p100-pcie-16gb.toml").read_text().replace('aliases = ["p100"]', 'aliases = ["v100"]')
    (tmp_path / "p100-pcie-16gb.toml").write_text(text)
    with pytest.raises(UserError, match="'v100' is already taken"):
        list_profiles(directory=tmp_path)


@pytest.mark.parametrize("name", ["p100", "a100", "tpu-v4", "radeon-instinct-mi25", "xeon-phi-7250"])
def test_profile_survives_sorted_json(name):
    import json

    from costmodel.hardware import HardwareProfile

    profile = load_profile(name)
    again = HardwareProfile.from_dict(json.loads(json.dumps(profile.to_dict(), sort_keys=True)))
    assert again.to_dict() == profile.to_dict() and again.peak_flops == profile.peak_flops
