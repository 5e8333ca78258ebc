"""Our Triton kernels defined under Triton's interpreter (they run on CPU tensors), or compiled
for the GPU when there is one. Triton reads TRITON_INTERPRET when a kernel is defined, so the
kernel modules are reloaded with it set, then reloaded as they were, so later tests see the
modules they expect (`costmodel.kernels.ops` holds the module objects, so it follows)."""
import contextlib
import importlib
import os

import pytest
import torch

FAMILIES = ("costmodel.kernels.matmul", "costmodel.kernels.attention", "costmodel.kernels.layernorm")

DTYPES = [
    pytest.param(torch.float32, 1e-4, id="fp32"),
    pytest.param(torch.float16, 2e-2, id="fp16"),
    pytest.param(torch.bfloat16, 0, id="bf16", marks=pytest.mark.skip(
        reason="Triton's interpreter multiplies bfloat16 operands of tl.dot as raw integers "
               "(triton-lang/triton#11584); bf16 is checked on a GPU only")),
]


@contextlib.contextmanager
def defined(interpret: bool):
    """The kernel families defined with TRITON_INTERPRET set or not; yields them by short name."""
    before = os.environ.pop("TRITON_INTERPRET", None)
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield {name.rsplit(".", 1)[1]: importlib.reload(importlib.import_module(name)) for name in FAMILIES}
    finally:
        os.environ.pop("TRITON_INTERPRET", None)
        if before is not None:
            os.environ["TRITON_INTERPRET"] = before
        for name in FAMILIES:
            importlib.reload(importlib.import_module(name))


def close(out, ref, tol):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * max(1.0, ref.abs().max().item()), rtol=tol)
