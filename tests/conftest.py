import functools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# With no GPU, Triton runs our kernels through its interpreter. Triton reads the flag when a
# function is defined, its own library's included, so it is set before anything imports Triton.
if not os.path.exists("/dev/nvidia0") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@functools.lru_cache(maxsize=None)
def captured(model: str, batch: int = 2, seq: int = 64, dtype: str = "fp32"):
    """Zoo captures shared across tests (a capture takes a second or two)."""
    from costmodel.ir.zoo import capture_model

    return capture_model(model, batch, seq, dtype)


@pytest.fixture(scope="session")
def capture():
    return captured
