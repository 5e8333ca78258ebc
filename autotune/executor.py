"""The executor side: a plan's decisions applied to the graph a model exports, on a device.

The model is captured as the zoo captures it (`zoo.export_model`: torch.export on meta tensors),
so every diagram vertex is a node of that exported graph, by name. The same graph then runs on
real tensors: the zoo's model built again on the device with seeded random weights
(`build_model`), its parameters and buffers fed to the graph's placeholders (`flat_inputs`).

`partition` cuts the graph into the plan's kernels: each fusion group (its vertices and the free
views between them, as `Plan.kernels` builds the kernel) becomes one submodule call; `compile_group`
compiles one with inductor. Groups with the same code and input shapes (the same projection in
every layer) share one compiled module (`Group.key`).
"""
from __future__ import annotations

import copy
import hashlib
import heapq
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

from costmodel.errors import UserError
from costmodel.ir.zoo import build
from costmodel.measure.slicing import on_device


class PlanError(UserError):
    """A plan that cannot run here: it does not fit the model's graph, a fusion group that
    cannot compile, or one whose result differs from eager PyTorch's."""


def build_model(model: str, batch: int, seq: int, dtype: str, *, seed: int = 0,
                device: torch.device | str = "cpu", attention: str = "sdpa"
                ) -> tuple[nn.Module, tuple, dict]:
    """The module `zoo.export_model(model, ...)` captures, built on `device` with seeded random
    weights and example inputs (`zoo.build`): (module, args, kwargs)."""
    built = build(model, batch, seq, dtype, device=device, seed=seed, attention=attention)
    return built.module, built.args, built.kwargs


def flat_inputs(exported: torch.export.ExportedProgram, module: nn.Module, args: tuple,
                 kwargs: dict) -> list[Any]:
    """The exported graph's placeholders' values: the module's parameters and buffers by name,
    then the user inputs flattened as export flattened them."""
    user, spec = pytree.tree_flatten((args, kwargs))
    if spec != exported.call_spec.in_spec:
        raise ValueError(f"inputs are not shaped as the export's: {spec} vs {exported.call_spec.in_spec}")
    state = {**dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    out, user = [], iter(user)
    for s in exported.graph_signature.input_specs:
        kind = s.kind.name
        if kind in ("PARAMETER", "BUFFER") and s.target in state:
            out.append(state[s.target])
        elif kind == "USER_INPUT":
            out.append(next(user))
        else:
            raise UserError(f"verify cannot feed the exported graph's input {s.arg} ({kind}): "
                            "only parameters, buffers and user inputs are supported")
    return out




@dataclass(frozen=True, eq=False)
class Group:
    """A fusion group's nodes as a standalone fx module with canonical names (placeholders
    in0.., nodes v0..), so groups of the same code have the same `key`."""

    vertices: tuple[str, ...]
    label: str
    module: torch.fx.GraphModule
    inputs: tuple[torch.fx.Node, ...]  # nodes of the whole graph it reads, in placeholder order
    outputs: tuple[torch.fx.Node, ...]  # its nodes the rest of the graph reads, in return order
    key: str


def group_module(nodes: list[torch.fx.Node], label: str, device: torch.device) -> Group:
    inside = set(nodes)
    inputs: list[torch.fx.Node] = []
    for n in nodes:
        inputs.extend(i for i in n.all_input_nodes if i not in inside and i not in inputs)
    graph = torch.fx.Graph()
    env = {i: graph.placeholder(f"in{k}") for k, i in enumerate(inputs)}
    for k, n in enumerate(nodes):
        args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda x: env[x])
        env[n] = graph.create_node(n.op, n.target, on_device(args, device),
                                   on_device(kwargs, device), name=f"v{k}")
        if "val" in n.meta:  # shapes, for kernels that lower the group (`lowering`)
            env[n].meta["val"] = n.meta["val"]
    outputs = [n for n in nodes if any(u not in inside for u in n.users)] or nodes[-1:]
    graph.output(tuple(env[n] for n in outputs))
    module = torch.fx.GraphModule(nn.Module(), graph)
    specs = [_spec(i.meta.get("val")) for i in inputs]
    key = hashlib.blake2b(f"{module.code}|{specs}".encode(), digest_size=16).hexdigest()
    return Group(tuple(n.name for n in nodes), label, module, tuple(inputs), tuple(outputs), key)


def _spec(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return tuple(val.shape), tuple(val.stride()), str(val.dtype)
    return repr(val)


def partition(gm: torch.fx.GraphModule, groups: Sequence[tuple[tuple[str, ...], str]],
               device: torch.device) -> tuple[torch.fx.Graph, list[Group]]:
    """`gm`'s graph with group i (vertex names, label) replaced by a call to a submodule
    `group_<i>` (the groups are returned in the order given); every other node is copied, its
    devices (meta, from the capture) set to `device`. Units (a group, or one other node) are
    ordered topologically, each as early as the original order allows."""
    order = {n: k for k, n in enumerate(gm.graph.nodes)}
    by_name = {n.name: n for n in gm.graph.nodes}
    unit: dict[torch.fx.Node, tuple] = {}
    for g, (names, _) in enumerate(groups):
        for name in names:
            unit[by_name[name]] = ("group", g)
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    members: dict[tuple, list[torch.fx.Node]] = {}
    for n in body:
        members.setdefault(unit.setdefault(n, ("node", order[n])), []).append(n)
    users: dict[tuple, set[tuple]] = {u: set() for u in members}
    waiting = dict.fromkeys(members, 0)
    for n in body:
        for i in n.all_input_nodes:
            if i in unit and unit[i] != unit[n] and unit[n] not in users[unit[i]]:
                users[unit[i]].add(unit[n])
                waiting[unit[n]] += 1
    ready = [(order[members[u][0]], u) for u, w in waiting.items() if w == 0]
    heapq.heapify(ready)
    ranked: list[tuple] = []
    while ready:
        u = heapq.heappop(ready)[1]
        ranked.append(u)
        for v in users[u]:
            waiting[v] -= 1
            if waiting[v] == 0:
                heapq.heappush(ready, (order[members[v][0]], v))
    if len(ranked) < len(members):
        stuck = sorted({groups[u[1]][1] for u in members if u not in ranked and u[0] == "group"})
        raise PlanError(f"fusion groups {stuck} cannot run as kernels: the graph has a path that "
                        "leaves a group and comes back")
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = graph.node_copy(n)
    built: list[Group] = [None] * len(groups)  # type: ignore[list-item]
    for u in ranked:
        if u[0] == "node":
            n = members[u][0]
            new = graph.node_copy(n, lambda x: env[x])
            new.args, new.kwargs = on_device(new.args, device), on_device(new.kwargs, device)
            env[n] = new
            continue
        g = built[u[1]] = group_module(members[u], groups[u[1]][1], device)
        call = graph.call_module(f"group_{u[1]}", tuple(env[i] for i in g.inputs))
        for k, n in enumerate(g.outputs):
            env[n] = graph.call_function(operator.getitem, (call, k))
    graph.node_copy(next(n for n in gm.graph.nodes if n.op == "output"), lambda x: env[x])
    return graph, built


def compile_group(module: torch.fx.GraphModule, example: Sequence[Any]) -> Callable:
    """Inductor on an fx module of ATen ops, for the shapes and strides of `example` (static).
    Inputs that are not tensors (`use_cache=False`, an int) are folded into the graph as the
    constants they are in `example` (inductor takes only tensors and symbolic sizes; some
    releases refuse a bool); the callable returned still takes every input."""
    module = copy.deepcopy(module)
    places = [n for n in module.graph.nodes if n.op == "placeholder"]
    keep = [i for i, x in enumerate(example) if isinstance(x, torch.Tensor)]
    if len(keep) == len(example):
        return torch._inductor.compile(module, list(example))
    for i, node in enumerate(places):
        if i in keep:
            continue
        for user in list(node.users):
            user.args, user.kwargs = torch.fx.node.map_arg(
                (user.args, user.kwargs), lambda a, n=node, v=example[i]: v if a is n else a)
        module.graph.erase_node(node)
    module.recompile()
    fn = torch._inductor.compile(module, [example[i] for i in keep])
    return lambda *xs: fn(*(xs[i] for i in keep))


# ---------------------------------------------------------------------------------------------
# The plan as a callable


@dataclass(frozen=True)
class Applied:
    """How each of a plan's kernels runs: `triton` our kernels (a tile, flash blocks, a fused
    add + layer norm), `inductor` a fusion group compiled by inductor, `eager` a decision run as
    eager PyTorch runs it, with the reason (`fallbacks`)."""

    triton: int
    inductor: int
    eager: int
    tiles_applied: int
    tiles_ignored: int
    fallbacks: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"triton_kernels": self.triton, "inductor_groups": self.inductor,
                "eager_decisions": self.eager, "tiles_applied": self.tiles_applied,
                "tiles_ignored": self.tiles_ignored, "fallbacks": list(self.fallbacks)}


@dataclass(frozen=True, eq=False)
class Executable:
    """A plan applied to an exported graph on a device: `graph` (groups as submodule calls) and
    `implementations` (submodule name -> callable, compiled on first use) make `module()`;
    `kinds` says which implementation each group got."""

    graph: torch.fx.Graph
    groups: tuple[Group, ...]
    implementations: dict
    applied: Applied
    rest: str  # "eager" or "inductor": how the ops outside the groups run
    cuda_graph: bool = False  # the plan's: capture the call once and replay it

    def module(self, implementations: dict | None = None) -> torch.fx.GraphModule:
        return torch.fx.GraphModule(dict(implementations or self.implementations), copy.deepcopy(self.graph))


def lower_plan(gm: torch.fx.GraphModule, diagram, plan, *, device: torch.device, triton: bool,
               tf32: bool = False, rest: str | None = None) -> Executable:
    """Each kernel of `plan` with a decision as a group of `gm`'s graph, and how it runs:
    our Triton kernels where `triton` (a GPU, or the interpreter), inductor for other fusion
    groups (inline in the graph when the rest is "inductor": the whole graph is compiled), eager
    for a decision that has no kernel here. `rest` (None: the plan's `Runtime`) overrides how
    the rest runs. PlanError when the plan does not fit the graph."""
    from autotune.lowering import AddLayerNormKernel, AttentionKernel, MatmulKernel, NotLowerable

    try:
        kernels = plan.kernels(diagram)
        runtime = plan.runtime
    except ValueError as e:
        raise PlanError(f"the plan does not fit {diagram.name}: {e}") from None
    rest = runtime.rest if rest is None else rest
    if rest not in ("eager", "inductor"):
        raise PlanError(f"the rest of the graph runs eager or inductor, not {rest!r}")
    chosen, fallbacks = [], []
    counts = {"triton": 0, "inductor": 0, "eager": 0, "tiles": 0, "ignored": 0}
    for k in kernels:
        names = tuple(v.name for v in k.subdiagram.vertices)
        compute = [v for v in k.subdiagram.vertices if not v.is_free]
        kinds = [v.kind for v in compute]
        fused = len(compute) > 1
        if k.config is not None or (fused and kinds == ["add", "layer_norm"]):
            if triton:
                chosen.append((names, "triton", k, compute))
                continue
            if k.config is not None:
                counts["ignored"] += 1
                fallbacks.append(f"{_label(k.subdiagram.vertices)}: no Triton here, the config is not applied")
        if fused:
            chosen.append((names, "inductor", k, compute))
        elif k.config is not None:
            counts["eager"] += 1
    groups = [(names, _label(k.subdiagram.vertices)) for names, how, k, _ in chosen
              if how == "triton" or rest == "eager"]
    graph, built = partition(gm, groups, device)
    implementations: dict[str, Callable] = {}
    shared: dict[tuple, Callable] = {}  # groups of the same code, shapes and config: one kernel
    for i, ((names, how, k, compute), group) in enumerate(zip(
            [c for c in chosen if c[1] == "triton" or rest == "eager"], built)):
        same = (group.key, how, k.config)
        if same in shared:
            implementations[f"group_{i}"] = shared[same]
            counts[_how(shared[same])] += 1
            counts["tiles"] += how == "triton" and k.config is not None and \
                not isinstance(shared[same], _Compiled)
            continue
        impl = None
        if how == "triton":
            try:
                if any(v.kind == "matmul" for v in compute):
                    impl = MatmulKernel(group.module, k.config, tf32)
                    counts["tiles"] += 1
                elif compute[0].kind == "attention":
                    impl = AttentionKernel(group.module, compute[0], k.config, tf32)
                    counts["tiles"] += 1
                else:
                    impl = AddLayerNormKernel(group.module)
                counts["triton"] += 1
            except NotLowerable as e:
                fallbacks.append(f"{group.label}: {e}; run by inductor")
                counts["ignored"] += k.config is not None
        if impl is None:
            impl = _Compiled(group) if len(compute) > 1 else group.module
            counts["inductor" if len(compute) > 1 else "eager"] += 1
        implementations[f"group_{i}"] = shared[same] = impl
    if rest == "inductor":
        counts["inductor"] += sum(1 for c in chosen if c[1] == "inductor")
    return Executable(graph, tuple(built), implementations,
                      Applied(counts["triton"], counts["inductor"], counts["eager"], counts["tiles"],
                              counts["ignored"], tuple(fallbacks)), rest, runtime.cuda_graph)


def _how(impl: Callable) -> str:
    if isinstance(impl, _Compiled):
        return "inductor"
    return "eager" if isinstance(impl, torch.fx.GraphModule) else "triton"


class _Compiled(nn.Module):
    """A fusion group compiled by inductor on its first call (for the shapes it sees then)."""

    def __init__(self, group: Group) -> None:
        super().__init__()
        self.group = group
        self.fn: Callable | None = None

    def forward(self, *xs: Any) -> Any:
        if self.fn is None:
            self.fn = compile_group(self.group.module, xs)
        return self.fn(*xs)


def _label(vertices: Sequence) -> str:
    """A group as people read it: its compute vertices and the module it sits in."""
    names = "+".join(v.name for v in vertices if not v.is_free)
    module = next((v.module for v in vertices if v.module), "")
    return f"{names} ({module})" if module else names


class CudaGraphed:
    """`fn` captured once as a CUDA graph for `example` (static shapes and addresses); a call
    copies its inputs into the captured buffers and replays the graph."""

    def __init__(self, fn: Callable, example: Sequence[Any]) -> None:
        self.static = [x.clone() if isinstance(x, torch.Tensor) else x for x in example]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: compiles and allocator state settle outside the capture
                fn(*self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(*self.static)

    def __call__(self, *xs: Any) -> Any:
        for s, x in zip(self.static, xs):
            if isinstance(s, torch.Tensor) and s.data_ptr() != x.data_ptr():
                s.copy_(x)
        self.graph.replay()
        return self.out


def executor(exe: Executable, example: Sequence[Any], *, cuda_graph: bool | None = None,
             compile_rest: Callable | None = None) -> Callable:
    """The callable that runs the plan: the graph with its groups' implementations; with rest
    "inductor", the whole graph compiled (our kernels stay opaque custom operators in it); with
    `cuda_graph` (None: the plan's), captured once and replayed (a GPU only)."""
    cuda_graph = exe.cuda_graph if cuda_graph is None else cuda_graph
    module = exe.module()
    fn: Callable = module
    if exe.rest == "inductor":  # one ATen graph, our kernels in it as custom operators
        from torch.fx.experimental.proxy_tensor import make_fx

        flat = make_fx(module, tracing_mode="fake")(*example)
        fn = (compile_rest or compile_group)(flat, example)
    if cuda_graph:
        if not any(isinstance(x, torch.Tensor) and x.is_cuda for x in example):
            raise PlanError("a CUDA graph needs the model on a CUDA GPU")
        fn = CudaGraphed(fn, example)
    return fn
