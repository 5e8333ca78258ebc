"""Graph slicing: a kernel's own nodes of an exported model, cut out as a small fx module that
runs alone on random tensors of the recorded shapes and strides.

A model is exported (`zoo.export_model`); every diagram vertex is named after the exported graph
node it came from. Values the graph builds from shapes and user inputs alone (attention masks,
position ids) are evaluated for real; integer inputs are drawn in range (embedding indices below
the table size, gather and index indices below the dimension they index).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from costmodel.ir.capture import op_name
from costmodel.ir.diagram import Diagram

EVALUATE_LIMIT_BYTES = 256 * 2**20  # graph values bigger than this are drawn, not evaluated



@dataclass(frozen=True, eq=False)
class InputSpec:
    """One tensor a kernel reads: its shape, strides and dtype as the graph recorded them."""

    name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    high: int | None = None  # integer inputs: values are drawn in [0, high); None: [0, 2)
    value: torch.Tensor | None = None  # the real value (CPU) where the graph builds it from shapes

    @property
    def extent(self) -> int:
        """Elements of storage the strided view spans (an expanded dim counts once)."""
        if any(s == 0 for s in self.shape):
            return 0
        return 1 + sum((s - 1) * abs(st) for s, st in zip(self.shape, self.stride))

    @property
    def nbytes(self) -> int:
        if self.value is not None:
            return self.value.numel() * self.value.element_size()
        return self.extent * torch.empty((), dtype=self.dtype).element_size()

    def make(self, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=device)
        if self.value is not None:  # a copy: an in-place op of one kernel must not reach the next
            return self.value.to(device, copy=True)
        n = self.extent
        if self.dtype.is_floating_point:
            base = torch.randn(n, generator=generator, device=device).to(self.dtype)
        elif self.dtype == torch.bool:
            base = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
        else:
            base = torch.randint(0, self.high or 2, (n,), generator=generator, device=device,
                                 dtype=self.dtype)
        return base.as_strided(self.shape, self.stride)


@dataclass(frozen=True, eq=False)
class Workload:
    """A kernel's own exported-graph nodes as a standalone fx module (placeholders for what it
    reads, in `inputs` order; it returns what the rest of the model reads of it)."""

    module: torch.fx.GraphModule
    inputs: tuple[InputSpec, ...]

    @property
    def input_bytes(self) -> int:
        return sum(s.nbytes for s in self.inputs)

    def make_inputs(self, device: torch.device, generator: torch.Generator | None = None
                    ) -> list[torch.Tensor]:
        return [s.make(device, generator) for s in self.inputs]

    def with_target(self, target: Callable) -> Callable:
        """A callable that runs `target` in place of this kernel's one compute node, with the
        node's arguments (placeholders become the tensors it is called with)."""
        calls = [n for n in self.module.graph.nodes if n.op == "call_function"]
        if len(calls) != 1:
            raise ValueError(f"with_target needs a one-node kernel; this one has {len(calls)} nodes")
        node = calls[0]
        index = {n: i for i, n in enumerate(n for n in self.module.graph.nodes if n.op == "placeholder")}

        def resolve(a: Any, xs: tuple) -> Any:
            if isinstance(a, torch.fx.Node):
                return xs[index[a]]
            if isinstance(a, (list, tuple)):
                return type(a)(resolve(x, xs) for x in a)
            return a

        def call(*xs: torch.Tensor) -> Any:
            return target(*resolve(node.args, xs), **{k: resolve(v, xs) for k, v in node.kwargs.items()})

        return call


class Program:
    """An exported model whose kernels can run alone: `workload(vertex names, device)`.

    At construction, user inputs are drawn (integer inputs in the range their readers index)
    and every node computed from them and from shapes alone (no weights) is evaluated on the
    CPU, so masks and position ids are the model's own."""

    def __init__(self, exported: torch.export.ExportedProgram, diagram: Diagram, *, seed: int = 0) -> None:
        self.diagram = diagram
        self.graph = exported.graph_module.graph
        self.nodes = {n.name: n for n in self.graph.nodes}
        user = {s.arg.name for s in exported.graph_signature.input_specs
                if s.kind.name == "USER_INPUT" and hasattr(s.arg, "name")}
        self.seed = seed
        self.known = self._evaluate(user)

    def _evaluate(self, user: set[str]) -> dict[torch.fx.Node, Any]:
        gen = torch.Generator().manual_seed(self.seed)
        known: dict[torch.fx.Node, Any] = {}
        cpu = torch.device("cpu")
        for n in self.graph.nodes:
            val = n.meta.get("val")
            if n.op == "placeholder":
                if n.name in user and isinstance(val, torch.Tensor):
                    known[n] = self.spec(n, with_value=False).make(cpu, gen)
                continue
            if n.op != "call_function" or any(i not in known for i in n.all_input_nodes):
                continue
            if _value_bytes(val) > EVALUATE_LIMIT_BYTES:
                continue
            try:
                args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda x: known[x])
                known[n] = n.target(*on_device(args, cpu), **on_device(kwargs, cpu))
            except Exception:  # noqa: BLE001, S112 - an op that cannot run here: its readers get drawn values
                continue
        return known

    def index_bound(self, node: torch.fx.Node) -> int | None:
        """The exclusive upper bound on the values of an integer tensor, from what its readers
        index with it (looking through view-like nodes); None when nothing indexes with it."""
        bounds: list[int] = []
        for u in node.users:
            name = op_name(u.target)
            if name == "embedding" and len(u.args) > 1 and u.args[1] is node:
                bounds.append(u.args[0].meta["val"].shape[0])
            elif name == "index" and isinstance(u.args[1], (list, tuple)):
                src = u.args[0].meta["val"]
                bounds += [src.shape[k] for k, i in enumerate(u.args[1]) if i is node]
            elif name in ("gather", "index_select") and len(u.args) > 2 and u.args[2] is node:
                bounds.append(u.args[0].meta["val"].shape[u.args[1]])
            elif (v := self.diagram.vertex.get(u.name)) is not None and v.is_free \
                    and (b := self.index_bound(u)) is not None:
                bounds.append(b)
        return min(bounds) if bounds else None

    def spec(self, node: torch.fx.Node, *, with_value: bool = True) -> InputSpec:
        val = node.meta["val"]
        high = None if val.dtype.is_floating_point or val.dtype == torch.bool else self.index_bound(node)
        value = self.known.get(node) if with_value else None
        if not (isinstance(value, torch.Tensor) and value.shape == val.shape and value.dtype == val.dtype):
            value = None
        return InputSpec(node.name, tuple(val.shape), tuple(val.stride()), val.dtype, high, value)

    def workload(self, vertices: Sequence[str], device: torch.device | str) -> Workload:
        """The named vertices (graph nodes, in graph order) as a module on `device`."""
        device = torch.device(device)
        wanted = set(vertices)
        members = [n for n in self.graph.nodes if n.name in wanted]
        if len(members) != len(wanted):
            missing = wanted - {n.name for n in members}
            raise KeyError(f"no graph nodes named {sorted(missing)}")
        inside = set(members)
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        specs: list[InputSpec] = []
        for m in members:
            for i in m.all_input_nodes:
                if i not in inside and i not in env:
                    env[i] = graph.placeholder(_identifier(i.name))
                    specs.append(self.spec(i))
        for m in members:
            new = graph.node_copy(m, lambda x: env[x])
            new.args, new.kwargs = on_device(new.args, device), on_device(new.kwargs, device)
            env[m] = new
        outs = [m for m in members if any(u not in inside for u in m.users)] or members[-1:]
        graph.output(tuple(env[m] for m in outs))
        return Workload(torch.fx.GraphModule(torch.nn.Module(), graph), tuple(specs))


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"x_{ident}"


def on_device(value: Any, device: torch.device) -> Any:
    """`value` with every torch.device in it (the exported graph says "meta") replaced."""
    if isinstance(value, torch.device):
        return device
    if isinstance(value, (list, tuple)):
        return type(value)(on_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: on_device(v, device) for k, v in value.items()}
    return value


def _value_bytes(val: Any) -> int:
    if isinstance(val, torch.Tensor):
        return val.numel() * val.element_size()
    if isinstance(val, (list, tuple)):
        return sum(_value_bytes(v) for v in val)
    return 0


def implicit_mask_sdpa(causal: bool) -> Callable:
    """aten.scaled_dot_product_attention's signature, ignoring the mask tensor: is_causal
    (or nothing) stands for it. The mismatch check against the masked call guards it."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=enable_gqa)

    return sdpa
