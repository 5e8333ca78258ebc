"""Flash attention forward: softmax(Q K^T * scale + mask) V one block of queries at a time, the
scores never written to memory (online softmax), with the plan's block sizes, warps and
stages, for the mask kinds the IR knows (`rules.MASK_KINDS` less "custom"):

- "none": every key;
- "causal": key j for query i when j <= i + (Sk - Sq) (aligned to the last keys, as capture
  classifies it);
- "padding": the first `key_lengths[b]` keys of batch b;
- "scgpt": the first `context` keys (the cell token and the known genes) for every query, and
  each query itself.

With `config.skip_masked`, the key blocks the mask zeroes are never loaded (`rules.block_kept`
decides which, the same rule the cost model counts); without it every block is computed and
masked element by element. GQA: K and V may have fewer heads than Q (a divisor).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from costmodel.ir.plan import KernelConfig

MASKS = {"none": 0, "causal": 1, "padding": 2, "scgpt": 3}


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, len_ptr, scale, SQ, SK, D, OFFSET, CONTEXT,
                      GROUP, H,
                      sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                      sob, soh, som, sod,
                      MASK: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kv = h // GROUP  # the key/value head this query head reads (grouped-query attention)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < SQ) & (offs_d[None, :] < D), other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.full((BLOCK_M,), 0.0, tl.float32)
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    key_len = SK
    if MASK == 2:
        key_len = tl.load(len_ptr + b)
    q_first = pid_m * BLOCK_M
    q_last = tl.minimum(q_first + BLOCK_M, SQ) - 1
    # Key blocks to visit: all of them, or (SKIP) those holding a pair the mask keeps. Two
    # ranges cover every mask: [lo, hi) and, for scGPT, the diagonal [lo2, hi2).
    lo = 0
    hi = SK
    lo2 = 0
    hi2 = 0
    if SKIP:
        if MASK == 1:
            hi = tl.minimum(SK, q_last + OFFSET + 1)
        if MASK == 2:
            hi = tl.minimum(SK, key_len)
        if MASK == 3:
            hi = tl.minimum(SK, CONTEXT)
            lo2 = tl.maximum(q_first, hi) // BLOCK_N * BLOCK_N  # the diagonal, past the context
            hi2 = tl.minimum(SK, q_last + 1)
            if lo2 < (hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N:  # the context's last block has it
                lo2 = (hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    for part in range(2):
        start = lo
        stop = hi
        if part == 1:
            start = lo2
            stop = hi2
        for n0 in range(start, stop, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(k_ptr + b * skb + kv * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                        mask=(offs_n[None, :] < SK) & (offs_d[:, None] < D), other=0.0)
            s = tl.dot(q, k, input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N)
            keep = (offs_m[:, None] < SQ) & (offs_n[None, :] < SK)
            if MASK == 1:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
            if MASK == 2:
                keep = keep & (offs_n[None, :] < key_len)
            if MASK == 3:
                keep = keep & ((offs_n[None, :] < CONTEXT) | (offs_n[None, :] == offs_m[:, None]))
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing kept yet
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + b * svb + kv * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                        mask=(offs_n[:, None] < SK) & (offs_d[None, :] < D), other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # a row with no key at all: zeros
    tl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < SQ) & (offs_d[None, :] < D))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, config: KernelConfig,
              mask: str = "none", key_lengths: torch.Tensor | None = None, context: int = 0,
              scale: float | None = None, tf32: bool = False) -> torch.Tensor:
    """Attention of q (B, H, Sq, D) over k, v (B, Hkv, Sk, D), Hkv dividing H; the output is
    (B, H, Sq, D) in q's dtype. `mask` as the module docstring says; `key_lengths` (B,) for
    "padding", `context` for "scgpt". ValueError for shapes or masks it does not take."""
    if mask not in MASKS:
        raise ValueError(f"no mask {mask!r}; valid: {', '.join(MASKS)}")
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[-1] != k.shape[-1] \
            or q.shape[0] != k.shape[0] or q.shape[1] % k.shape[1]:
        raise ValueError(f"cannot attend q {tuple(q.shape)} over k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask == "padding" and (key_lengths is None or key_lengths.shape != (q.shape[0],)):
        raise ValueError("a padding mask needs key_lengths, one per batch")
    B, H, SQ, D = q.shape
    SK = k.shape[2]
    out = torch.empty_like(q)
    lengths = key_lengths.to(device=q.device, dtype=torch.int32) if key_lengths is not None else \
        torch.zeros(1, device=q.device, dtype=torch.int32)
    grid = (triton.cdiv(SQ, config.block_m), B * H)
    _attention_kernel[grid](
        q, k, v, out, lengths, scale if scale is not None else 1.0 / math.sqrt(D),
        SQ, SK, D, SK - SQ, context, H // k.shape[1], H,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        MASK=MASKS[mask], SKIP=config.skip_masked, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        PRECISION="tf32" if tf32 and q.dtype == torch.float32 else "ieee",
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def mask_tensor(mask: str, sq: int, sk: int, *, batch: int = 1, key_lengths: torch.Tensor | None = None,
                context: int = 0, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The boolean mask (True: attend) `attention` applies, as (B or 1, 1, Sq, Sk); None for
    "none"."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    if mask == "none":
        return None
    if mask == "causal":
        return (j <= i + (sk - sq))[None, None]
    if mask == "scgpt":
        return ((j < context) | (j == i))[None, None]
    if mask == "padding":
        return (j[None] < key_lengths.to(device)[:, None, None])[:, None]
    raise ValueError(f"no mask {mask!r}")


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: str = "none",
              key_lengths: torch.Tensor | None = None, context: int = 0,
              scale: float | None = None) -> torch.Tensor:
    """What `attention` computes, in PyTorch (fp32 math; rows with no key give zeros)."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1) for t in (k, v))
    keep = mask_tensor(mask, q.shape[2], k.shape[2], key_lengths=key_lengths, context=context,
                       device=q.device)
    s = q.float() @ k.transpose(-2, -1) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ v).to(q.dtype)
