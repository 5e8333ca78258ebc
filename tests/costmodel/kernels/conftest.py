"""Fixtures for the kernel tests: the kernel families under Triton's interpreter, or compiled for
the GPU when there is one (`interpreter.defined`)."""
import pytest
import torch

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # no Triton: the fixtures skip
    InterpretedFunction = ()

from tests.costmodel.kernels.interpreter import defined

NO_TRITON = "Triton is not installed (pip install triton; see pyproject.toml)"


@pytest.fixture
def interpreted():
    """Every kernel family under the interpreter."""
    triton = pytest.importorskip("triton", reason=NO_TRITON)
    if not isinstance(triton.language.max, InterpretedFunction):  # tests/conftest.py did not set it
        pytest.skip("Triton was imported for the GPU here: the GPU tests cover the kernels")
    with defined(True) as families:
        yield families


@pytest.fixture
def compiled():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the interpreter tests cover the CPU)")
    pytest.importorskip("triton", reason=NO_TRITON)
    with defined(False) as families:
        yield families
