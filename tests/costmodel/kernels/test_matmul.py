"""The Triton matmul against its PyTorch reference on small shapes, on the CPU through Triton's
interpreter: every epilogue step, split-K, fp32 and fp16 (bf16 on a GPU only), and every tile
the rewrite space offers."""
import pytest
import torch
import torch.nn.functional as F

from costmodel.hardware import load_profile
from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig
from costmodel.measure import Program
from costmodel.measure.cuda import CudaRunner
from costmodel.measure.variants import TRITON_OPS
from tests.costmodel.kernels.interpreter import DTYPES, close

SMALL = KernelConfig(16, 32, 16, num_warps=4, num_stages=2)


@pytest.fixture
def kernels(interpreted):
    return interpreted["matmul"]


@pytest.fixture
def gpu_kernels(compiled):
    return compiled["matmul"]


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_linear_with_bias(kernels, dtype, tol):
    x, w, b = (torch.randn(*s).to(dtype) for s in ((3, 5, 40), (24, 40), (24,)))
    close(kernels.linear(x, w, b, config=SMALL), F.linear(x.float(), w.float(), b.float()).to(dtype), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_addmm_and_mm_with_strided_operands(kernels, dtype, tol):
    a = torch.randn(37, 45).to(dtype)
    b = torch.randn(29, 45).to(dtype).t()  # (45, 29), column-major
    bias = torch.randn(29).to(dtype)
    ref = (a.float() @ b.float()).to(dtype)
    close(kernels.mm(a, b, config=SMALL), ref, tol)
    close(kernels.addmm(bias, a, b, config=SMALL), (a.float() @ b.float() + bias.float()).to(dtype), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_bmm(kernels, dtype, tol):
    a = torch.randn(4, 20, 33).to(dtype)
    b = torch.randn(4, 18, 33).to(dtype).transpose(1, 2)
    close(kernels.bmm(a, b, config=SMALL), torch.bmm(a.float(), b.float()).to(dtype), tol)


def test_other_tiles_and_tf32_flag(kernels):
    a, b = torch.randn(70, 50), torch.randn(50, 90)
    for cfg in (KernelConfig(32, 16, 32, 8, 3), KernelConfig(64, 64, 16, 4, 4)):
        close(kernels.matmul(a, b, config=cfg, tf32=True), a @ b, 1e-2)


def test_unsupported_calls_raise(kernels):
    a = torch.randn(8, 8)
    with pytest.raises(ValueError, match="split_k"):
        kernels.mm(a, a, config=KernelConfig(16, 16, 16, split_k=3))
    with pytest.raises(ValueError, match="no epilogue step"):
        kernels.Step("pow")
    with pytest.raises(ValueError, match="tensor operands expected"):
        kernels.mm(a, a, config=SMALL, epilogue=(kernels.Step("add", tensor=True),))
    with pytest.raises(ValueError, match="beta"):
        kernels.addmm(a, a, a, beta=0.5, config=SMALL)
    with pytest.raises(ValueError, match="cannot multiply"):
        kernels.mm(a, torch.randn(9, 8), config=SMALL)


def test_serves_the_ops_measurement_sends_it(kernels):
    assert set(kernels.OPS) == set(TRITON_OPS)


def _steps(kernels):
    """Every epilogue step the rule book allows, with a scalar or a tensor operand."""
    out = []
    for op in rules.EPILOGUE_STEPS:
        if op in kernels.BINARY:
            out += [(kernels.Step(op, tensor=True),), (kernels.Step(op, scalar=1.5, swap=True),)]
        else:
            out.append((kernels.Step(op, scalar=0.1),))
    return out


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("split", [1, 2])
def test_every_epilogue_step_matches_its_reference(kernels, dtype, tol, split):
    torch.manual_seed(0)
    a, b, bias = torch.randn(37, 45).to(dtype), torch.randn(45, 29).to(dtype), torch.randn(29).to(dtype)
    residual = torch.randn(37, 29).to(dtype)
    config = KernelConfig(16, 32, 16, 4, 2, split)
    for epilogue in _steps(kernels):
        operands = (residual,) if epilogue[0].tensor else ()
        if epilogue[0].op == "div" and epilogue[0].tensor:
            operands = (residual.abs() + 1,)  # no division by numbers near zero
        out = kernels.matmul(a, b, bias, config=config, epilogue=epilogue, operands=operands)
        close(out, kernels.reference(a, b, bias, epilogue=epilogue, operands=operands), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_three_steps_batched_and_broadcast(kernels, dtype, tol):
    torch.manual_seed(1)
    a, b = torch.randn(3, 20, 33).to(dtype), torch.randn(3, 33, 18).to(dtype)
    scale, mask = torch.randn(18).to(dtype), torch.randn(3, 20, 18).to(dtype)
    epilogue = (kernels.Step("mul", tensor=True), kernels.Step("add", tensor=True), kernels.Step("gelu"))
    for split in (1, 4):
        out = kernels.matmul(a, b, config=KernelConfig(16, 16, 16, 4, 2, split), epilogue=epilogue,
                             operands=(scale, mask))
        close(out, kernels.reference(a, b, epilogue=epilogue, operands=(scale, mask)), tol)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_every_tile_the_space_offers_launches(kernels, dtype):
    """The kernels read tile legality from the rule book: each tile the space offers on the
    most permissive target (an H100: 227 KiB of shared memory) runs and is right."""
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    a, b = torch.randn(40, 72).to(torch_dtype), torch.randn(72, 36).to(torch_dtype)
    ref = kernels.reference(a, b)
    seen = set()
    for tile in rules.legal_tiles(load_profile("h100"), dtype):
        # The interpreter runs one program as numpy arrays: warps and stages change nothing
        # there, so each block shape and split runs once.
        key = (tile.block_m, tile.block_n, tile.block_k, tile.split_k)
        if key in seen:
            continue
        seen.add(key)
        close(kernels.matmul(a, b, config=tile), ref, 1e-4 if dtype == "fp32" else 2e-2)
    assert len(seen) > 50


def test_a_captured_linear_runs_as_triton(kernels):
    """The CUDA backend's path: a kernel's own graph node, retargeted to the Triton wrapper."""
    from costmodel.ir.zoo import export_model

    prog = Program(*export_model("scgpt", 1, 16, "fp32", overrides=dict(n_genes=64, d_model=32, n_heads=2,
                                                                      n_layers=1, d_ff=32)))
    [qkv] = [v.name for v in prog.diagram.vertices if v.kind == "matmul" and v.output_shapes[0][-1] == 96]
    wl = prog.workload([qkv], "cpu")
    inputs = wl.make_inputs(torch.device("cpu"), torch.Generator().manual_seed(0))
    fn = wl.with_target(lambda *a, **k: kernels.linear(*a, **k, config=SMALL))
    close(fn(*inputs), wl.module.forward(*inputs)[0], 1e-4)


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
def test_compiled_on_the_gpu(gpu_kernels, dtype):
    torch_dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                   "bf16": torch.bfloat16}[dtype]
    a = torch.randn(300, 260, device="cuda").to(torch_dtype)
    w = torch.randn(200, 260, device="cuda").to(torch_dtype)
    b = torch.randn(200, device="cuda").to(torch_dtype)
    ref = F.linear(a.double(), w.double(), b.double())
    tol = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 6e-2}[dtype]
    for cfg in CudaRunner().tiles(dtype)[:4]:
        out = gpu_kernels.linear(a, w, b, config=cfg, tf32=dtype == "tf32")
        close(out.double(), ref, tol)
