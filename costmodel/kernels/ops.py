"""The kernels as PyTorch custom operators (`torch.library`), so a graph that calls them can run
eagerly or be compiled around them by inductor (which sees each as one opaque node with a
shape rule), and be captured in a CUDA graph.

    torch.ops.feyntune.matmul(a, b, bias, tile, "gelu,add", scalars, tensors, swaps, operands, tf32)
    torch.ops.feyntune.attention(q, k, v, block, mask, key_lengths, context, scale, tf32)
    torch.ops.feyntune.add_layer_norm(x, residual, weight, bias, eps)

Configs travel as lists of ints (`tile_list`), epilogue steps as parallel lists (their op names
as one comma-separated string): the operator schema takes no other types. The Python functions of `matmul`, `attention` and `layernorm` are
what they run.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from costmodel.ir.plan import KernelConfig
from costmodel.kernels import attention as _attention
from costmodel.kernels import layernorm as _layernorm
from costmodel.kernels import matmul as _matmul


def tile_list(config: KernelConfig) -> list[int]:
    return [config.block_m, config.block_n, config.block_k, config.num_warps, config.num_stages,
            config.split_k, int(config.skip_masked)]


def _config(tile: Sequence[int]) -> KernelConfig:
    return KernelConfig(*tile[:6], bool(tile[6]))


@torch.library.custom_op("feyntune::matmul", mutates_args=())
def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, tile: list[int],
           ops: str, scalars: list[float], tensors: list[bool], swaps: list[bool],
           operands: list[torch.Tensor], tf32: bool) -> torch.Tensor:
    names = ops.split(",") if ops else []
    steps = [_matmul.Step(o, s, t, w) for o, s, t, w in zip(names, scalars, tensors, swaps)]
    return _matmul.matmul(a, b, bias, config=_config(tile), epilogue=steps, operands=operands, tf32=tf32)


@matmul.register_fake
def _(a, b, bias, tile, ops, scalars, tensors, swaps, operands, tf32):
    batch = max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1)
    shape = (batch, a.shape[-2], b.shape[-1]) if a.dim() == 3 or b.dim() == 3 else (a.shape[-2], b.shape[-1])
    return a.new_empty(shape)


@torch.library.custom_op("feyntune::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: list[int], mask: str,
              key_lengths: torch.Tensor | None, context: int, scale: float, tf32: bool) -> torch.Tensor:
    return _attention.attention(q, k, v, config=_config(block), mask=mask, key_lengths=key_lengths,
                                context=context, scale=scale, tf32=tf32)


@attention.register_fake
def _(q, k, v, block, mask, key_lengths, context, scale, tf32):
    return torch.empty_like(q)


@torch.library.custom_op("feyntune::add_layer_norm", mutates_args=())
def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, s = _layernorm.add_layer_norm(x, residual, weight, bias, eps, write_sum=True)
    return y, s


@add_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    return torch.empty_like(x), torch.empty_like(x)
