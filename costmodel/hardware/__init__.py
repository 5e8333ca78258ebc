"""Hardware targets: profiles of accelerators with the source of every figure, and this host.

    load_profile("a100")   # a TOML profile by name or alias; "cpu" is this host, detected
    list_profiles()        # every target name
    detect_gpu()           # the profile of GPU 0, from its NVML name
"""
from costmodel.hardware.catalog import detect_gpu, list_profiles, load_profile, profile_for_device_name
from costmodel.hardware.host import calibrate_cpu, cpu_profile
from costmodel.hardware.profile import DTYPES, HardwareProfile

__all__ = ["DTYPES", "HardwareProfile", "calibrate_cpu", "cpu_profile", "detect_gpu", "list_profiles",
           "load_profile", "profile_for_device_name"]
