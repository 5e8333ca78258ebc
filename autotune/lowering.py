"""A plan's kernels as calls to our kernels: each takes a group of the exported graph (its fx
module, `executor.Group`) and computes the group's outputs with one custom operator
(`costmodel.kernels.ops`) where the exported graph ran several ATen ops.

- `MatmulKernel`: a matmul (linear, addmm, mm, bmm, matmul) with the plan's tile, and the
  pointwise ops of its epilogue as the kernel's epilogue steps (views between them are the
  output's shape);
- `AttentionKernel`: scaled dot-product attention with the plan's flash blocks, skipping the
  blocks its mask zeroes where the plan says so;
- `AddLayerNormKernel`: residual add + layer norm.

`lower(group, ...)` picks the one a group is, or raises `NotLowerable` saying why: the executor
then runs that group another way (inductor) and counts it.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx
from torch import nn

from costmodel.ir import rules
from costmodel.kernels import ops as _ops  # registers torch.ops.feyntune
from costmodel.ir.capture import op_name
from costmodel.ir.diagram import Vertex
from costmodel.ir.plan import KernelConfig

VIEWS = ("view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "flatten", "alias", "detach",
         "dropout", "clone", "contiguous")  # shape-only steps between an epilogue's ops (eval mode)
MATMULS = ("linear", "addmm", "mm", "bmm", "matmul")
IDENTITIES = ("dropout", "clone", "alias", "detach", "contiguous")  # value unchanged (eval mode)


class NotLowerable(ValueError):
    """A group our kernels cannot run as one call (the executor says why and runs it otherwise)."""


def _calls(module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in module.graph.nodes if n.op == "call_function"]


def _value(arg: Any, env: dict) -> Any:
    return torch.fx.node.map_arg(arg, lambda n: env[n])


class _GroupKernel(nn.Module):
    """Runs the group's graph with the nodes `fused` replaces computed by `_fused`."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = module
        self.places = [n for n in module.graph.nodes if n.op == "placeholder"]
        self.output = next(n for n in module.graph.nodes if n.op == "output")
        self.skip: set[torch.fx.Node] = set()

    def _fused(self, env: dict) -> None:
        raise NotImplementedError

    def forward(self, *xs: Any) -> Any:
        env = dict(zip(self.places, xs))
        done = False
        for n in _calls(self.graph_module):
            if n in self.skip:
                if not done:
                    self._fused(env)
                    done = True
                continue
            env[n] = n.target(*_value(n.args, env), **_value(n.kwargs, env))
        return _value(self.output.args[0], env)


class MatmulKernel(_GroupKernel):
    """A matmul and its epilogue chain as one `feyntune::matmul` call with `config`."""

    def __init__(self, module: torch.fx.GraphModule, config: KernelConfig, tf32: bool) -> None:
        super().__init__(module)
        calls = _calls(module)
        mm = [n for n in calls if op_name(n.target) in MATMULS]
        if len(mm) != 1:
            raise NotLowerable(f"{len(mm)} matmuls in the group")
        self.mm, self.config, self.tf32 = mm[0], config, tf32
        self.steps: list[tuple[str, float, bool, bool, Any]] = []  # op, scalar, tensor, swap, operand
        running, last = self.mm, self.mm
        for n in calls[calls.index(self.mm) + 1:]:
            name = op_name(n.target)
            if running not in n.all_input_nodes:
                raise NotLowerable(f"{n.name} does not read the epilogue's running value")
            if name in VIEWS or n.target is operator.getitem:
                running = n
                continue
            self.steps.append(_step(n, running))
            running = last = n
        if len(self.steps) > rules.MAX_EPILOGUE:
            raise NotLowerable(f"{len(self.steps)} epilogue steps, over {rules.MAX_EPILOGUE}")
        self.last = last  # the node whose value the kernel computes
        self.skip = {n for n in calls[calls.index(self.mm):calls.index(last) + 1]}

    def _fused(self, env: dict) -> None:
        name = op_name(self.mm.target)
        args = _value(self.mm.args, env)
        if name == "linear":
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else None
            a, b = x.reshape(-1, x.shape[-1]), w.t()
        elif name == "addmm":
            bias, a, b = args[0], args[1], args[2]
        else:
            a, b, bias = args[0], args[1], None
            if name == "matmul" and (a.dim() > 3 or b.dim() > 3):
                lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
                a = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
                b = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
        batched = a.dim() == 3 or b.dim() == 3
        rows = (max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1),) if batched else ()
        flat = (*rows, a.shape[-2], b.shape[-1])
        ops, scalars, tensors, swaps, operands = [], [], [], [], []
        for op, scalar, is_tensor, swap, other in self.steps:
            ops.append(op)
            scalars.append(scalar)
            tensors.append(is_tensor)
            swaps.append(swap)
            if is_tensor:
                operands.append(_onto(env[other[0]], other[1], flat))
        out = torch.ops.feyntune.matmul(a, b, bias, ops_tile(self.config), ",".join(ops), scalars, tensors,
                                        swaps, operands, self.tf32)
        env[self.last] = out.reshape(self.last.meta["val"].shape)


def ops_tile(config: KernelConfig) -> list[int]:
    return _ops.tile_list(config)


def _onto(t: torch.Tensor, shape: tuple[int, ...], flat: tuple[int, ...]) -> torch.Tensor:
    """An epilogue operand broadcast onto the chain's `shape`, laid out as the matmul's `flat`
    output (a view when it can be; a bias-like row stays a row)."""
    n = flat[-1]
    if t.dim() >= 1 and t.shape[-1] == n and math.prod(t.shape[:-1]) == 1:
        return t.reshape(n)
    full = torch.broadcast_to(t, shape)
    return full.reshape(flat)


def _step(n: torch.fx.Node, running: torch.fx.Node) -> tuple:
    """One pointwise node as an epilogue step: (op, scalar, tensor operand?, swap, operand)."""
    name = op_name(n.target)
    if name not in rules.EPILOGUE_OPS:
        raise NotLowerable(f"{n.name} ({name}) is no epilogue step")
    args = list(n.args)
    if name in ("relu", "tanh", "sigmoid", "silu", "neg", "exp", "erf"):
        return (name, 0.0, False, False, None)
    if name == "gelu":
        approx = n.kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return ("gelu_tanh" if approx == "tanh" else "gelu", 0.0, False, False, None)
    if name == "leaky_relu":
        return ("leaky_relu", float(args[1] if len(args) > 1 else n.kwargs.get("negative_slope", 0.01)),
                False, False, None)
    if n.kwargs.get("alpha", 1) != 1 or (len(args) > 2 and args[2] != 1):
        raise NotLowerable(f"{n.name}: {name} with alpha")
    first = args[0] is running
    other = args[1] if first else args[0]
    op = {"add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "div"}[name]
    swap = (not first) if name != "rsub" else first
    if isinstance(other, torch.fx.Node):
        return (op, 0.0, True, swap, (other, tuple(n.meta["val"].shape)))
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return (op, float(other), False, swap, None)
    raise NotLowerable(f"{n.name}: an operand of type {type(other).__name__}")


class AttentionKernel(_GroupKernel):
    """Scaled dot-product attention as one `feyntune::attention` call with `config`."""

    def __init__(self, module: torch.fx.GraphModule, vertex: Vertex, config: KernelConfig,
                 tf32: bool) -> None:
        super().__init__(module)
        calls = _calls(module)
        sdpa = [n for n in calls if op_name(n.target) == "scaled_dot_product_attention"]
        if len(sdpa) != 1 or len(calls) != 1:
            raise NotLowerable("not one scaled_dot_product_attention")
        if vertex.mask_kind not in rules.FLASH_MASKS:
            raise NotLowerable(f"a {vertex.mask_kind} mask")
        self.node, self.vertex, self.config, self.tf32 = sdpa[0], vertex, config, tf32
        self.skip = {self.node}
        sq, sk = vertex.input_shapes[0][-2], vertex.input_shapes[1][-2]
        causal = self.node.kwargs.get("is_causal", self.node.args[5] if len(self.node.args) > 5 else False)
        if causal and sq != sk:
            raise NotLowerable("is_causal with more keys than queries aligns top-left")
        self.context = rules.scgpt_context(sq, sk, vertex.mask_density or 1.0) \
            if vertex.mask_kind == "scgpt" else 0

    def _fused(self, env: dict) -> None:
        args = _value(self.node.args, env)
        kwargs = _value(self.node.kwargs, env)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
        lengths = None
        if self.vertex.mask_kind == "padding":
            keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            keep = keep.reshape(keep.shape[0], -1, keep.shape[-1])[:, 0, :]  # one row a batch
            lengths = keep.sum(-1).to(torch.int32)
        env[self.node] = torch.ops.feyntune.attention(
            q, k, v, ops_tile(self.config), self.vertex.mask_kind, lengths, self.context,
            float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1]), self.tf32)


class AddLayerNormKernel(_GroupKernel):
    """Residual add + layer norm as one `feyntune::add_layer_norm` call."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        calls = _calls(module)
        adds = [n for n in calls if op_name(n.target) == "add"]
        norms = [n for n in calls if op_name(n.target) == "layer_norm"]
        if len(adds) != 1 or len(norms) != 1 or len(norms[0].args[1]) != 1:
            raise NotLowerable("not one add and one layer norm over the last dimension")
        self.add, self.norm = adds[0], norms[0]
        if len(self.add.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in self.add.args):
            raise NotLowerable("the add is not of two tensors")
        self.between = calls[calls.index(self.add) + 1:calls.index(self.norm)]
        for n in self.between:  # the sum passes unchanged to the norm (dropout in eval mode)
            name = op_name(n.target)
            if name not in IDENTITIES or (name == "dropout" and _training(n)):
                raise NotLowerable(f"{n.name} ({name}) between the add and the layer norm")
        self.skip = {self.add, self.norm, *self.between}

    def _fused(self, env: dict) -> None:
        x, r = _value(self.add.args, env)
        args = _value(self.norm.args[1:], env)
        weight = args[1] if len(args) > 1 else None
        bias = args[2] if len(args) > 2 else None
        eps = args[3] if len(args) > 3 else 1e-5
        y, s = torch.ops.feyntune.add_layer_norm(x, r, weight, bias, float(eps))
        env[self.norm] = y
        for n in (self.add, *self.between):
            env[n] = s


def _training(n: torch.fx.Node) -> bool:
    return bool(n.kwargs.get("train", n.args[2] if len(n.args) > 2 else True))
