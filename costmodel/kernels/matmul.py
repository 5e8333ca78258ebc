"""The tiled matmul: (batched) A @ B with the plan's tile, warps, stages and split-K, and a fused
epilogue of up to `rules.MAX_EPILOGUE` pointwise steps (bias, GELU in both forms, ReLU, a
residual add, scaling, ...), each checked against `reference`.

Accumulation is in fp32; fp32 inputs multiply in IEEE fp32 unless `tf32` is set. With split-K,
each of `split_k` programs per tile reduces a slice of K into an fp32 workspace, and a second
kernel adds the slices and applies the epilogue. Thin wrappers take the signatures of the ATen
ops measurement times (`linear`, `addmm`, `mm`, `bmm`: `OPS`).

Triton reads TRITON_INTERPRET when a kernel is defined, so set it before importing this module
to run the kernels on the CPU (slowly: for correctness tests, not for timing).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig

GROUP_M = 8  # rows of output tiles visited together, so neighbouring programs share B tiles in L2

# Epilogue op codes: binary ops take a scalar or a tensor operand, optionally swapped
# (other - x); unary ops may read a scalar (leaky_relu's slope).
CODES = {"add": 1, "sub": 2, "mul": 3, "div": 4, "relu": 10, "leaky_relu": 11, "gelu": 12,
         "gelu_tanh": 13, "tanh": 14, "sigmoid": 15, "silu": 16, "neg": 17, "exp": 18, "erf": 19}
BINARY = ("add", "sub", "mul", "div")
assert set(CODES) == set(rules.EPILOGUE_STEPS), "the kernel serves every step the rule book allows"


@dataclass(frozen=True)
class Step:
    """One epilogue step applied to the running value x: `op` (a key of `CODES`) with a number
    (`scalar`) or a tensor broadcast onto the output (`tensor`, given at call time in order) as
    its other operand; `swap`: other op x instead of x op other."""

    op: str
    scalar: float = 0.0
    tensor: bool = False
    swap: bool = False

    def __post_init__(self) -> None:
        if self.op not in CODES:
            raise ValueError(f"no epilogue step {self.op!r}; valid: {', '.join(CODES)}")
        if self.tensor and self.op not in BINARY:
            raise ValueError(f"epilogue step {self.op!r} takes no tensor operand")


# Core builtins only (tl.exp, tl.erf; not tl.sigmoid or tl.cdiv, which are jit functions of
# Triton's standard library), so the kernels also run under TRITON_INTERPRET when triton was
# imported before it was set.
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _step(x, OP: tl.constexpr, TENSOR: tl.constexpr, SWAP: tl.constexpr, ptr, s_b, s_m, s_n,
          scalar, batch, offs_m, offs_n, inside):
    """x after one epilogue step (every branch is resolved when the kernel compiles)."""
    out = x
    if OP != 0:
        if TENSOR:
            y = tl.load(ptr + batch * s_b + offs_m[:, None] * s_m + offs_n[None, :] * s_n,
                        mask=inside, other=0.0).to(tl.float32)
        else:
            y = scalar
        if SWAP:
            a = y
            b = x
        else:
            a = x
            b = y
        if OP == 1:
            out = a + b
        elif OP == 2:
            out = a - b
        elif OP == 3:
            out = a * b
        elif OP == 4:
            out = a / b
        elif OP == 10:
            out = tl.maximum(x, 0.0)
        elif OP == 11:
            out = tl.where(x >= 0.0, x, x * scalar)
        elif OP == 12:
            out = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
        elif OP == 13:
            out = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
        elif OP == 14:
            out = _tanh(x)
        elif OP == 15:
            out = _sigmoid(x)
        elif OP == 16:
            out = x * _sigmoid(x)
        elif OP == 17:
            out = -x
        elif OP == 18:
            out = tl.exp(x)
        elif OP == 19:
            out = tl.erf(x)
    return out


@triton.jit
def _finish(acc, c_ptr, bias_ptr, e0, e1, e2, s0, s1, s2, batch, pid_m, pid_n, M, N,
            stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
            e0b, e0m, e0n, e1b, e1m, e1n, e2b, e2m, e2n,
            HAS_BIAS: tl.constexpr, OP0: tl.constexpr, T0: tl.constexpr, W0: tl.constexpr,
            OP1: tl.constexpr, T1: tl.constexpr, W1: tl.constexpr,
            OP2: tl.constexpr, T2: tl.constexpr, W2: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Bias, the epilogue steps, and the store of one output tile."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_m[:, None] * stride_biasm + offs_n[None, :] * stride_biasn,
                       mask=inside, other=0.0)
        acc += bias.to(tl.float32)
    acc = _step(acc, OP0, T0, W0, e0, e0b, e0m, e0n, s0, batch, offs_m, offs_n, inside)
    acc = _step(acc, OP1, T1, W1, e1, e1b, e1m, e1n, s1, batch, offs_m, offs_n, inside)
    acc = _step(acc, OP2, T2, W2, e2, e2b, e2m, e2n, s2, batch, offs_m, offs_n, inside)
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, w_ptr, bias_ptr, e0, e1, e2, s0, s1, s2, M, N, K, K_SPLIT,
                   stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                   stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
                   e0b, e0m, e0n, e1b, e1m, e1n, e2b, e2m, e2n,
                   HAS_BIAS: tl.constexpr, OP0: tl.constexpr, T0: tl.constexpr, W0: tl.constexpr,
                   OP1: tl.constexpr, T1: tl.constexpr, W1: tl.constexpr,
                   OP2: tl.constexpr, T2: tl.constexpr, W2: tl.constexpr,
                   SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)
    tiles_m = (M + BLOCK_M - 1) // BLOCK_M
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    # Grouped order: GROUP rows of tiles sweep the columns together.
    per_group = GROUP * tiles_n
    first_m = (pid // per_group) * GROUP
    rows = tl.minimum(tiles_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = part * K_SPLIT  # this program's slice of K (a multiple of BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None] * stride_am + (k_start + offs_k[None, :]) * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + (k_start + offs_k[:, None]) * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    k_end = tl.minimum(K, k_start + K_SPLIT)
    for k in range((K_SPLIT + BLOCK_K - 1) // BLOCK_K):
        k_left = k_end - k_start - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if SPLIT == 1:
        _finish(acc, c_ptr, bias_ptr, e0, e1, e2, s0, s1, s2, batch, pid_m, pid_n, M, N,
                stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
                e0b, e0m, e0n, e1b, e1m, e1n, e2b, e2m, e2n,
                HAS_BIAS, OP0, T0, W0, OP1, T1, W1, OP2, T2, W2, BLOCK_M, BLOCK_N)
    else:  # fp32 partial sums: workspace (split, batch, M, N), contiguous
        inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        w_ptrs = w_ptr + ((part * tl.num_programs(1) + batch) * M + offs_m[:, None]) * N + offs_n[None, :]
        tl.store(w_ptrs, acc, mask=inside)


@triton.jit
def _reduce_kernel(w_ptr, c_ptr, bias_ptr, e0, e1, e2, s0, s1, s2, M, N,
                   stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
                   e0b, e0m, e0n, e1b, e1m, e1n, e2b, e2m, e2n,
                   HAS_BIAS: tl.constexpr, OP0: tl.constexpr, T0: tl.constexpr, W0: tl.constexpr,
                   OP1: tl.constexpr, T1: tl.constexpr, W1: tl.constexpr,
                   OP2: tl.constexpr, T2: tl.constexpr, W2: tl.constexpr,
                   SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The split-K partial sums of one output tile added, then bias and epilogue, then stored."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    batches = tl.num_programs(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for part in range(SPLIT):
        w_ptrs = w_ptr + ((part * batches + batch) * M + offs_m[:, None]) * N + offs_n[None, :]
        acc += tl.load(w_ptrs, mask=inside, other=0.0)
    _finish(acc, c_ptr, bias_ptr, e0, e1, e2, s0, s1, s2, batch, pid_m, pid_n, M, N,
            stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
            e0b, e0m, e0n, e1b, e1m, e1n, e2b, e2m, e2n,
            HAS_BIAS, OP0, T0, W0, OP1, T1, W1, OP2, T2, W2, BLOCK_M, BLOCK_N)


def _epilogue_args(epilogue: Sequence[Step], operands: Sequence[torch.Tensor], out: torch.Tensor
                   ) -> tuple[list, list, dict]:
    """Pointers and scalars, strides and constexprs of up to three steps; tensor operands
    broadcast onto the (batch, M, N) output (stride 0 where they broadcast)."""
    if len(epilogue) > rules.MAX_EPILOGUE:
        raise ValueError(f"at most {rules.MAX_EPILOGUE} epilogue steps; got {len(epilogue)}")
    if sum(s.tensor for s in epilogue) != len(operands):
        raise ValueError(f"{sum(s.tensor for s in epilogue)} tensor operands expected, "
                         f"{len(operands)} given")
    shape = out.shape if out.dim() == 3 else (1, *out.shape)
    ptrs, scalars, strides, consts = [], [], [], {}
    given = iter(operands)
    for i in range(rules.MAX_EPILOGUE):
        step = epilogue[i] if i < len(epilogue) else None
        if step is not None and step.tensor:
            t = torch.broadcast_to(next(given), shape)
            strides += [t.stride(0) if shape[0] > 1 else 0, t.stride(1), t.stride(2)]
            ptrs.append(t)
        else:
            strides += [0, 0, 0]
            ptrs.append(out)  # never read: the step takes no tensor
        scalars.append(float(step.scalar) if step is not None else 0.0)
        consts.update({f"OP{i}": CODES[step.op] if step else 0, f"T{i}": bool(step and step.tensor),
                       f"W{i}": bool(step and step.swap)})
    return ptrs + scalars, strides, consts


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: KernelConfig, epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = (),
           tf32: bool = False) -> torch.Tensor:
    """a @ b (+ bias), then the epilogue steps: a (M, K) or (batch, M, K), b (K, N) or
    (batch, K, N), any strides; bias and tensor operands broadcast onto (M, N) or (batch, M, N).
    The output is contiguous, in a's dtype. ValueError for a config that `rules` does not allow
    or shapes that do not multiply."""
    if a.dim() not in (2, 3) or b.dim() not in (2, 3) or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
    if config.split_k not in rules.SPLIT_K:
        raise ValueError(f"split_k {config.split_k} is not one of {rules.SPLIT_K}")
    batched = a.dim() == 3 or b.dim() == 3
    batch = max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1)
    M, K = a.shape[-2:]
    N = b.shape[-1]
    c = torch.empty((batch, M, N) if batched else (M, N), device=a.device, dtype=a.dtype)
    a_b = a.stride(0) if a.dim() == 3 and a.shape[0] > 1 else 0  # stride 0: one matrix for all
    b_b = b.stride(0) if b.dim() == 3 and b.shape[0] > 1 else 0
    c_b = c.stride(0) if batched else 0
    if bias is not None:
        bias2 = bias.expand(M, N)
        bias_strides = bias2.stride()
    else:
        bias2, bias_strides = c, (0, 0)  # never read: HAS_BIAS is False
    extra, e_strides, consts = _epilogue_args(epilogue, operands, c)
    split = config.split_k
    # Each split reduces a whole number of BLOCK_K steps; the last may be shorter.
    k_split = math.ceil(math.ceil(K / split) / config.block_k) * config.block_k
    split = max(1, math.ceil(K / k_split))
    workspace = torch.empty((split, batch, M, N), device=a.device, dtype=torch.float32) \
        if split > 1 else c
    common = dict(HAS_BIAS=bias is not None, **consts, BLOCK_M=config.block_m, BLOCK_N=config.block_n)
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), batch, split)
    _matmul_kernel[grid](
        a, b, c, workspace, bias2, *extra, M, N, K, k_split,
        a_b, a.stride(-2), a.stride(-1), b_b, b.stride(-2), b.stride(-1),
        bias_strides[0], bias_strides[1], c_b, c.stride(-2), c.stride(-1), *e_strides,
        **common, SPLIT=split, BLOCK_K=config.block_k, GROUP=GROUP_M,
        PRECISION="tf32" if tf32 and a.dtype == torch.float32 else "ieee",
        num_warps=config.num_warps, num_stages=config.num_stages)
    if split > 1:
        _reduce_kernel[(triton.cdiv(M, config.block_m), triton.cdiv(N, config.block_n), batch)](
            workspace, c, bias2, *extra, M, N, bias_strides[0], bias_strides[1],
            c_b, c.stride(-2), c.stride(-1), *e_strides, **common, SPLIT=split,
            num_warps=config.num_warps)
    return c


def reference(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *,
              epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """What `matmul` computes, in PyTorch (fp32 math, the result in a's dtype)."""
    x = torch.matmul(a.float(), b.float())
    if bias is not None:
        x = x + bias.float()
    given = iter(operands)
    for step in epilogue:
        if step.op in BINARY:
            other = next(given).float() if step.tensor else torch.tensor(step.scalar, device=x.device)
            lhs, rhs = (other, x) if step.swap else (x, other)
            x = _BINARY[step.op](lhs, rhs)
        else:
            x = _UNARY[step.op](x, step.scalar)
    return x.to(a.dtype)


_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
_UNARY = {"relu": lambda x, _: torch.relu(x), "leaky_relu": torch.nn.functional.leaky_relu,
          "gelu": lambda x, _: torch.nn.functional.gelu(x),
          "gelu_tanh": lambda x, _: torch.nn.functional.gelu(x, approximate="tanh"),
          "tanh": lambda x, _: torch.tanh(x), "sigmoid": lambda x, _: torch.sigmoid(x),
          "silu": lambda x, _: torch.nn.functional.silu(x), "neg": lambda x, _: -x,
          "exp": lambda x, _: torch.exp(x), "erf": lambda x, _: torch.erf(x)}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: KernelConfig, tf32: bool = False, epilogue: Sequence[Step] = (),
           operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """aten.linear: x (..., K) @ weight (N, K)^T + bias (N), then the epilogue (its tensor
    operands shaped as the output, (..., N), or broadcasting onto it)."""
    lead = x.shape[:-1]
    rows = math.prod(lead)
    flat = [torch.broadcast_to(t, (*lead, weight.shape[0])).reshape(rows, weight.shape[0])
            for t in operands]
    out = matmul(x.reshape(rows, x.shape[-1]), weight.t(), bias, config=config, tf32=tf32,
                 epilogue=epilogue, operands=flat)
    return out.view(*lead, weight.shape[0])


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1,
          alpha: float = 1, config: KernelConfig, tf32: bool = False,
          epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """aten.addmm with beta = alpha = 1 (what the captured models call)."""
    if beta != 1 or alpha != 1:
        raise ValueError(f"the Triton addmm takes beta = alpha = 1; got beta {beta}, alpha {alpha}")
    return matmul(a, b, bias, config=config, tf32=tf32, epilogue=epilogue, operands=operands)


def mm(a: torch.Tensor, b: torch.Tensor, *, config: KernelConfig, tf32: bool = False,
       epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    return matmul(a, b, config=config, tf32=tf32, epilogue=epilogue, operands=operands)


def bmm(a: torch.Tensor, b: torch.Tensor, *, config: KernelConfig, tf32: bool = False,
        epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    return matmul(a, b, config=config, tf32=tf32, epilogue=epilogue, operands=operands)


def matmul_nd(a: torch.Tensor, b: torch.Tensor, *, config: KernelConfig, tf32: bool = False,
              epilogue: Sequence[Step] = (), operands: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """aten.matmul of 2- to 4-dimensional operands (eager attention's Q K^T and P V): leading
    dimensions broadcast and flatten into the batch."""
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    shape = (*lead, a.shape[-2], b.shape[-1])
    flat = [torch.broadcast_to(t, shape).reshape(a3.shape[0], a.shape[-2], b.shape[-1]) for t in operands]
    out = matmul(a3, b3, config=config, tf32=tf32, epilogue=epilogue, operands=flat)
    return out.reshape(shape)


OPS = {"linear": linear, "addmm": addmm, "mm": mm, "bmm": bmm, "matmul": matmul_nd}
