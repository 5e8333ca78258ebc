"""The kernels as PyTorch custom operators: `torch.library.opcheck` (schema, fake kernel,
autograd registration) for each, and each operator computes what its family's function does,
so a graph can call them eagerly, on meta tensors, or compiled around them."""
import pytest
import torch

from costmodel.ir.plan import KernelConfig
from tests.costmodel.kernels.interpreter import close

TILE = KernelConfig(16, 16, 16, num_warps=4, num_stages=1, skip_masked=True)


@pytest.fixture
def ops(interpreted):
    from costmodel.kernels import ops

    return ops


def _cases(ops):
    g = torch.Generator().manual_seed(0)
    a, b, bias, r = torch.randn(20, 24, generator=g), torch.randn(24, 16, generator=g), \
        torch.randn(16, generator=g), torch.randn(20, 16, generator=g)
    q = torch.randn(1, 2, 20, 16, generator=g)
    tile = ops.tile_list(TILE)
    return {
        "matmul": (torch.ops.feyntune.matmul, (a, b, bias, tile, "gelu_tanh,add", [0.0, 0.0],
                                               [False, True], [False, False], [r], False)),
        "attention": (torch.ops.feyntune.attention, (q, q, q, tile, "scgpt", None, 7, 0.25, False)),
        "add_layer_norm": (torch.ops.feyntune.add_layer_norm, (r, r, bias, bias, 1e-5)),
    }


@pytest.mark.parametrize("name", ["matmul", "attention", "add_layer_norm"])
def test_opcheck(ops, name):
    op, args = _cases(ops)[name]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_the_operators_are_the_kernels(ops, interpreted):
    cases = _cases(ops)
    op, args = cases["matmul"]
    mm = interpreted["matmul"]
    steps = (mm.Step("gelu_tanh"), mm.Step("add", tensor=True))
    close(op(*args), mm.reference(args[0], args[1], args[2], epilogue=steps, operands=args[8]), 1e-4)
    op, (q, *_rest) = cases["attention"]
    close(op(*cases["attention"][1]), interpreted["attention"].reference(
        q, q, q, mask="scgpt", context=7, scale=0.25), 1e-4)
    op, args = cases["add_layer_norm"]
    y, s = op(*args)
    ref_y, ref_s = interpreted["layernorm"].reference(*args, write_sum=True)
    close(y, ref_y, 1e-5)
    close(s, ref_s, 1e-6)


def test_they_run_on_meta_tensors(ops):
    """The fake runner prices plans on meta tensors: the operators' shapes come from their fakes."""
    for op, args in _cases(ops).values():
        meta = [x.to("meta") if isinstance(x, torch.Tensor) else
                [t.to("meta") for t in x] if isinstance(x, list) and x and isinstance(x[0], torch.Tensor)
                else x for x in args]
        real = op(*args)
        fake = op(*meta)
        for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
            assert f.device.type == "meta" and f.shape == r.shape and f.dtype == r.dtype
