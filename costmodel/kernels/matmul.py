"""Triton kernels that measurement runs with explicit launch parameters (a `KernelConfig`).

One tiled matmul (optionally batched, with a bias broadcast onto the output) and thin wrappers
with the signatures of the ATen ops it serves (`linear`, `addmm`, `mm`, `bmm`), so a captured
kernel can run with BLOCK_M/N/K, num_warps and num_stages of our choosing instead of the vendor
library's. Accumulation is in fp32; fp32 inputs multiply in IEEE fp32 unless `tf32` is set.

Triton reads TRITON_INTERPRET when a kernel is defined, so set it before importing this module
to run the kernels on the CPU (slowly: that is for correctness tests, not for timing).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from costmodel.ir.plan import KernelConfig

SUPPORTED_OPS = ("linear", "addmm", "mm", "bmm")  # ATen base names these wrappers serve
GROUP_M = 8  # rows of output tiles visited together, so neighbouring programs share B tiles in L2


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K,
                   stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                   stride_biasm, stride_biasn, stride_cb, stride_cm, stride_cn,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    # Core builtins only (no tl.cdiv, tl.zeros: those are jit functions of Triton's standard
    # library), so the kernel also runs under TRITON_INTERPRET when triton was imported before.
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
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range((K + BLOCK_K - 1) // BLOCK_K):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_m[:, None] * stride_biasm + offs_n[None, :] * stride_biasn,
                       mask=inside, other=0.0)
        acc += bias.to(tl.float32)
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=inside)


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: KernelConfig, tf32: bool = False) -> torch.Tensor:
    """a @ b (+ bias): a (M, K) or (batch, M, K), b (K, N) or (batch, K, N), any strides; bias
    broadcasts to (M, N). The output is contiguous, in a's dtype. Split-K is not implemented:
    a config with split_k > 1 raises ValueError."""
    if config.split_k != 1:
        raise ValueError(f"the Triton matmul runs split_k=1 only; got {config}")
    if a.dim() not in (2, 3) or b.dim() not in (2, 3) or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
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
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), batch)
    _matmul_kernel[grid](
        a, b, bias2, c, M, N, K,
        a_b, a.stride(-2), a.stride(-1), b_b, b.stride(-2), b.stride(-1),
        bias_strides[0], bias_strides[1], c_b, c.stride(-2), c.stride(-1),
        HAS_BIAS=bias is not None, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_K=config.block_k, GROUP=GROUP_M,
        PRECISION="tf32" if tf32 and a.dtype == torch.float32 else "ieee",
        num_warps=config.num_warps, num_stages=config.num_stages)
    return c


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           config: KernelConfig, tf32: bool = False) -> torch.Tensor:
    """aten.linear: x (..., K) @ weight (N, K)^T + bias (N)."""
    lead = x.shape[:-1]
    out = matmul(x.reshape(math.prod(lead), x.shape[-1]), weight.t(), bias, config=config, tf32=tf32)
    return out.view(*lead, weight.shape[0])


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1,
          alpha: float = 1, config: KernelConfig, tf32: bool = False) -> torch.Tensor:
    """aten.addmm with beta = alpha = 1 (what the captured models call)."""
    if beta != 1 or alpha != 1:
        raise ValueError(f"the Triton addmm takes beta = alpha = 1; got beta {beta}, alpha {alpha}")
    return matmul(a, b, bias, config=config, tf32=tf32)


def mm(a: torch.Tensor, b: torch.Tensor, *, config: KernelConfig, tf32: bool = False) -> torch.Tensor:
    return matmul(a, b, config=config, tf32=tf32)


def bmm(a: torch.Tensor, b: torch.Tensor, *, config: KernelConfig, tf32: bool = False) -> torch.Tensor:
    return matmul(a, b, config=config, tf32=tf32)


OPS = {"linear": linear, "addmm": addmm, "mm": mm, "bmm": bmm}
