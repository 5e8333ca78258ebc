"""Residual add + layer norm in one kernel: s = x + residual, y = (s - mean) / sqrt(var + eps)
* weight + bias over the last dimension, one row a program; the sum is written too when the
rest of the model reads it (a pre-norm transformer's residual stream)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_layer_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, N, eps,
                           HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           WRITE_SUM: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inside = offs < N
    x = tl.load(x_ptr + row * N + offs, mask=inside, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * N + offs, mask=inside, other=0.0).to(tl.float32)
    s = x + r
    if WRITE_SUM:
        tl.store(s_ptr + row * N + offs, s.to(s_ptr.dtype.element_ty), mask=inside)
    mean = tl.sum(s, 0) / N
    d = tl.where(inside, s - mean, 0.0)
    var = tl.sum(d * d, 0) / N
    y = d / tl.sqrt(var + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offs, mask=inside, other=1.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + offs, y.to(y_ptr.dtype.element_ty), mask=inside)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, write_sum: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(layer_norm(x + residual), x + residual or None), normalised over the last dimension;
    residual broadcasts onto x. The outputs are contiguous, in x's dtype."""
    n = x.shape[-1]
    xs = x.contiguous().view(-1, n)
    rs = torch.broadcast_to(residual, x.shape).contiguous().view(-1, n)
    y = torch.empty_like(xs)
    s = torch.empty_like(xs) if write_sum else y
    _add_layer_norm_kernel[(xs.shape[0],)](
        xs, rs, weight if weight is not None else y, bias if bias is not None else y, y, s, n, eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, WRITE_SUM=write_sum,
        BLOCK=triton.next_power_of_2(n), num_warps=4 if n <= 2048 else 8)
    return y.view(x.shape), (s.view(x.shape) if write_sum else None)


def reference(x, residual, weight=None, bias=None, eps: float = 1e-5, *, write_sum: bool = False):
    """What `add_layer_norm` computes, in PyTorch (fp32 math)."""
    s = x.float() + residual.float()
    y = torch.nn.functional.layer_norm(s, (x.shape[-1],), None if weight is None else weight.float(),
                                       None if bias is None else bias.float(), eps)
    return y.to(x.dtype), (s.to(x.dtype) if write_sum else None)
