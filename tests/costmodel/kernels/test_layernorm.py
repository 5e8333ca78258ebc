"""Residual add + layer norm in one kernel against its PyTorch reference under Triton's
interpreter: fp32 and fp16, with and without weight and bias, a width that is no power of two,
a residual that broadcasts, and the sum written for the layer after."""
import pytest
import torch

from tests.costmodel.kernels.interpreter import DTYPES, close


@pytest.fixture
def kernels(interpreted):
    return interpreted["layernorm"]


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("width", [64, 100])
def test_matches_the_reference(kernels, dtype, tol, affine, width):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(3, 7, width, generator=g).to(dtype) for _ in range(2))
    w, b = (torch.randn(width, generator=g).to(dtype) if affine else None for _ in range(2))
    y, s = kernels.add_layer_norm(x, r, w, b, 1e-5, write_sum=True)
    ref_y, ref_s = kernels.reference(x, r, w, b, 1e-5, write_sum=True)
    close(y, ref_y, tol)
    close(s, ref_s, tol)
    alone, none = kernels.add_layer_norm(x, r, w, b, 1e-5)
    assert none is None
    close(alone, ref_y, tol)


def test_the_reference_is_torchs_layer_norm(kernels):
    x, r, w, b = torch.randn(5, 48), torch.randn(48), torch.randn(48), torch.randn(48)
    y, s = kernels.add_layer_norm(x, r, w, b, 1e-6, write_sum=True)  # a residual that broadcasts
    close(y, torch.nn.functional.layer_norm(x + r, (48,), w, b, 1e-6), 1e-5)
    close(s, x + r, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_compiled_on_the_gpu(compiled, dtype):
    kernels = compiled["layernorm"]
    x, r, w, b = (torch.randn(*s, device="cuda").to(dtype) for s in ((8, 300, 768), (8, 300, 768), (768,), (768,)))
    y, s = kernels.add_layer_norm(x, r, w, b, 1e-5, write_sum=True)
    ref_y, ref_s = kernels.reference(x, r, w, b, 1e-5, write_sum=True)
    close(y, ref_y, 2e-2)
    close(s, ref_s, 2e-2)
