"""Run a plan for real on this machine (the host CPU, or the CUDA GPU when the target is the GPU
here): check it computes what eager PyTorch computes, and time it.

The model is captured as the zoo captures it (`zoo.export_model`: torch.export on meta tensors),
so every diagram vertex is a node of that exported graph, by name. The same graph then runs on
real tensors on the device: the zoo's model class built again with seeded random weights (in
eval mode), its parameters and buffers fed to the graph's placeholders, and seeded example
inputs. Three ways:

- eager: the exported ATen graph, one op after another (the diagram's eager partition);
- plan: the same graph with each fusion group of the plan (its vertices and the free views
  between them, as `Plan.kernels` builds the kernel) cut out as one fx module compiled by
  inductor, everything else eager. Groups with the same code and input shapes (the same
  projection in every layer) share one compiled module;
- compiled: the whole graph compiled by inductor at once.

Inductor is called on the fx modules directly (`torch._inductor.compile`, what torch.compile runs
after dynamo's capture): dynamo's guard checks cost over 100 µs a call here, more than a small
fused kernel takes, and would be charged to the plan once per group.

Before timing, one checked run calls every group compiled and eager on the same inputs and
compares (naming the first group that differs), and the plan's and the whole compile's outputs
are compared with the model's own eager forward. Tiles (`Tile` decisions) are not applied:
inductor picks its own launch parameters (on a GPU, its Triton kernels' tiles), so they are
counted as ignored.

On a GPU, fp32 runs with TF32 off (`torch.set_float32_matmul_precision("highest")`, as
`costmodel measure` times fp32) and tf32 with it on; each timed call ends with a device
synchronisation, so a call's time is its kernels' time plus the launches.
"""
from __future__ import annotations

import copy
import hashlib
import heapq
import json
import operator
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

from costmodel.capture import TORCH_DTYPES, tensors
from costmodel.dataset import (
    DATA_DIR,
    ShardWriter,
    dumps,
    existing_ids,
    measurement_row,
)
from costmodel.diagram import Diagram
from costmodel.errors import UserError
from costmodel.measure import (
    Backend,
    CudaBackend,
    HostBackend,
    Result,
    add_context_rows,
    backend,
    matmul_precision,
    on_device,
)
from costmodel.plan import Plan, Tile

# Allowed max |plan - eager| per dtype: rtol times the largest |eager| value, plus atol. Inductor
# reorders reductions and keeps epilogues in fp32, so low precisions drift more.
TOLERANCE = {"fp32": (1e-3, 1e-4), "tf32": (1e-3, 1e-4), "fp16": (2e-2, 1e-3), "bf16": (6e-2, 1e-2)}


class PlanError(UserError):
    """A plan that cannot run here: it does not fit the model's graph, a fusion group inductor
    cannot compile, or one whose result differs from eager PyTorch's."""


@dataclass(frozen=True)
class FusedKernel:
    """One fusion group of the plan as it ran. `compile_s` is the first call's wall time
    (compile plus one run) for the group that compiled its code, None for groups that reuse it."""

    vertices: tuple[str, ...]  # the kernel's vertices, free views included, in graph order
    subdiagram_hash: str
    compile_s: float | None
    max_abs_error: float  # against the same nodes run eagerly on the same inputs


@dataclass(frozen=True)
class Verification:
    """What running a plan on this machine gave. Times in milliseconds (median over `repeats`
    interleaved calls after `warmup`). Compile times in seconds: first calls, compile included;
    inductor's on-disk cache makes them shorter when the same code compiled before."""

    model: str
    batch: int
    seq: int
    dtype: str
    plan: Plan
    plan_hash: str
    hardware: str  # the host's or the GPU's hardware name, as `costmodel measure` rows name it
    device: str  # "cpu" or "cuda:0"
    threads: int
    repeats: int
    warmup: int
    eager: Result  # the exported graph run op by op
    planned: Result  # the plan: fusion groups compiled, the rest eager
    compiled: Result  # the whole graph compiled by inductor; a Result with `error` if it failed
    plan_compile_s: float  # all distinct fusion groups
    compiled_compile_s: float | None
    max_abs_error: float  # the plan's outputs against the model's eager forward
    compiled_max_abs_error: float | None
    tolerance: float  # the largest max_abs_error accepted for these outputs
    kernels: tuple[FusedKernel, ...]
    ignored_tiles: int  # Tile decisions: inductor chose its own
    loadavg_1m: float | None  # the host's load when timing ended: other processes skew timings
    diagram: Diagram = field(repr=False, compare=False)

    @property
    def diagram_hash(self) -> str:
        return self.diagram.hash

    @property
    def eager_ms(self) -> float:
        return self.eager.runtime_ms

    @property
    def plan_ms(self) -> float:
        return self.planned.runtime_ms

    @property
    def compiled_ms(self) -> float | None:
        return self.compiled.runtime_ms

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


def plan_hash(plan: Plan) -> str:
    """A stable content hash of a plan's decisions (order does not matter)."""
    items = sorted(json.dumps(d, sort_keys=True) for d in plan.to_list())
    return hashlib.blake2b(json.dumps(items).encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------
# The real model


def build_model(model: str, batch: int, seq: int, dtype: str, *, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[nn.Module, tuple, dict]:
    """The module `zoo.export_model(model, ...)` captures, built on `device` with seeded random
    weights (the model's own initialisation) in eval mode, and example inputs for it (token ids
    drawn below the vocabulary size): (module, args, kwargs). The weights are initialised on
    the device itself (a GPU's random stream differs from the CPU's), and the global RNG is left
    as it was."""
    from costmodel.zoo import ScGPT, ScGPTConfig, model_config

    config = model_config(model)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    torch_dtype = TORCH_DTYPES[dtype]
    forked = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), device:
        torch.manual_seed(seed)
        if isinstance(config, ScGPTConfig):
            module = ScGPT(config)
            args = (torch.randint(0, config.n_genes, (batch, seq), generator=gen),
                    torch.randn(batch, seq, generator=gen).to(torch_dtype))
            kwargs: dict = {}
        else:
            module, cfg = _hf_module(config)
            args = (torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen),)
            kwargs = {"use_cache": False} if hasattr(cfg, "use_cache") else {}
    return module.to(torch_dtype).eval(), args, kwargs


def _hf_module(config: dict) -> tuple[nn.Module, Any]:
    """The class `zoo.export_hf` builds from `config`, on the CPU (zoo has already checked it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cfg = transformers.AutoConfig.for_model(
        **{k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")})
    cfg._attn_implementation = "sdpa"
    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch) if arch else None
    return (cls(cfg) if cls else transformers.AutoModel.from_config(cfg)), cfg


def _flat_inputs(exported: torch.export.ExportedProgram, module: nn.Module, args: tuple,
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


# ---------------------------------------------------------------------------------------------
# The graph, cut into fusion groups


@dataclass(frozen=True, eq=False)
class _Group:
    """A fusion group's nodes as a standalone fx module with canonical names (placeholders
    in0.., nodes v0..), so groups of the same code have the same `key`."""

    vertices: tuple[str, ...]
    label: str
    module: torch.fx.GraphModule
    inputs: tuple[torch.fx.Node, ...]  # nodes of the whole graph it reads, in placeholder order
    outputs: tuple[torch.fx.Node, ...]  # its nodes the rest of the graph reads, in return order
    key: str


def _group(nodes: list[torch.fx.Node], label: str, device: torch.device) -> _Group:
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
    outputs = [n for n in nodes if any(u not in inside for u in n.users)] or nodes[-1:]
    graph.output(tuple(env[n] for n in outputs))
    module = torch.fx.GraphModule(nn.Module(), graph)
    specs = [_spec(i.meta.get("val")) for i in inputs]
    key = hashlib.blake2b(f"{module.code}|{specs}".encode(), digest_size=16).hexdigest()
    return _Group(tuple(n.name for n in nodes), label, module, tuple(inputs), tuple(outputs), key)


def _spec(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return tuple(val.shape), tuple(val.stride()), str(val.dtype)
    return repr(val)


def _partition(gm: torch.fx.GraphModule, groups: Sequence[tuple[tuple[str, ...], str]],
               device: torch.device) -> tuple[torch.fx.Graph, list[_Group]]:
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
    built: list[_Group] = [None] * len(groups)  # type: ignore[list-item]
    for u in ranked:
        if u[0] == "node":
            n = members[u][0]
            new = graph.node_copy(n, lambda x: env[x])
            new.args, new.kwargs = on_device(new.args, device), on_device(new.kwargs, device)
            env[n] = new
            continue
        g = built[u[1]] = _group(members[u], groups[u[1]][1], device)
        call = graph.call_module(f"group_{u[1]}", tuple(env[i] for i in g.inputs))
        for k, n in enumerate(g.outputs):
            env[n] = graph.call_function(operator.getitem, (call, k))
    graph.node_copy(next(n for n in gm.graph.nodes if n.op == "output"), lambda x: env[x])
    return graph, built


def _compile(module: torch.fx.GraphModule, example: Sequence[Any]) -> Callable:
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


class _Checked(nn.Module):
    """Runs a group compiled (compiling its code on the first call of any group that shares it)
    and eager on the same inputs; raises PlanError naming the group when the compile fails or
    the results differ. Returns the compiled result."""

    def __init__(self, group: _Group, shared: dict[str, Callable], dtype: str) -> None:
        super().__init__()
        self.group, self.shared, self.dtype = group, shared, dtype
        self.compile_s: float | None = None  # set on the group that compiled the shared code
        self.max_abs_error = 0.0

    def forward(self, *xs: Any) -> Any:
        start = time.perf_counter()
        try:
            if self.group.key not in self.shared:
                self.shared[self.group.key] = _compile(self.group.module, xs)
                out = self.shared[self.group.key](*xs)
                self.compile_s = time.perf_counter() - start
            else:
                out = self.shared[self.group.key](*xs)
        except Exception as e:  # inductor fails in many ways: say which group
            raise PlanError(f"fusion group {self.group.label}: inductor failed: {_describe(e)}") from e
        ref = self.group.module(*xs)
        err, allowed = _error(out, ref, self.dtype)
        self.max_abs_error = err
        if err > allowed:
            raise PlanError(f"fusion group {self.group.label} compiled by inductor differs from "
                            f"eager: max abs error {err:.3g}, allowed {allowed:.3g} ({self.dtype})")
        return out


def _describe(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _error(out: Any, ref: Any, dtype: str) -> tuple[float, float]:
    """(max |out - ref| over every floating-point output, the most the dtype allows); integer
    outputs must be equal, NaNs where the other has none count as infinite error."""
    outs, refs = tensors(out), tensors(ref)
    if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
        return float("inf"), 0.0
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE["fp32"])
    err, scale = 0.0, 0.0
    for o, r in zip(outs, refs):
        if not r.dtype.is_floating_point:
            err = max(err, 0.0 if torch.equal(o, r) else float("inf"))
            continue
        o, r = o.detach().float(), r.detach().float()
        if bool((o.isnan() != r.isnan()).any()):
            return float("inf"), 0.0
        finite = r.isfinite() & o.isfinite()
        if finite.any():
            err = max(err, (o[finite] - r[finite]).abs().max().item())
            scale = max(scale, r[finite].abs().max().item())
    return err, atol + rtol * scale


# ---------------------------------------------------------------------------------------------
# Verifying a plan


def verify_plan(model: str, batch: int, seq: int, dtype: str, plan: Plan, *, repeats: int = 20,
                warmup: int = 3, seed: int = 0, threads: int | None = None,
                device: str = "cpu", progress: bool = True) -> Verification:
    """Run `plan` for `model` (a zoo name or a Hugging Face config.json path) at (batch, seq,
    dtype) on `device` ("cpu", or "cuda" for this machine's GPU 0): check its outputs against
    eager PyTorch, then time eager, the plan and the whole graph compiled by inductor,
    interleaved, `repeats` times each after `warmup` calls. `threads` sets torch's CPU threads
    for the run (None: as they are).

    Raises PlanError (a UserError) naming the fusion group when the plan does not fit the
    model's graph, a group fails to compile, or its result differs from eager beyond TOLERANCE;
    UserError when `device` is not here.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be at least 1 and warmup at least 0; got {repeats}, {warmup}")
    be = _backend(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    precision = "high" if dtype == "tf32" else "highest"
    try:
        with torch.no_grad(), matmul_precision(precision):
            return _verify(model, batch, seq, dtype, plan, repeats=repeats, warmup=warmup,
                           seed=seed, be=be, progress=progress)
    finally:
        torch.set_num_threads(before)


def _backend(device: str) -> HostBackend | CudaBackend:
    """The measuring backend of `device`, for the hardware name and the rows' provenance."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise UserError(f"verify runs on cpu or cuda, not {device!r}")
    return backend(kind)  # cuda says plainly when there is no GPU


def _device(be: Backend) -> torch.device:
    return getattr(be, "device", torch.device("cpu"))


def _verify(model: str, batch: int, seq: int, dtype: str, plan: Plan, *, repeats: int,
            warmup: int, seed: int, be: Backend, progress: bool) -> Verification:
    from costmodel.zoo import export_model

    say = _say if progress else lambda *_: None
    say(f"verify: capturing {model} batch {batch} seq {seq} {dtype}")
    exported, diagram = export_model(model, batch, seq, dtype)
    try:
        kernels = [k for k in plan.kernels(diagram) if len(k.subdiagram.vertices) > 1]
    except ValueError as e:
        raise PlanError(f"the plan does not fit {diagram.name}: {e}") from None
    ignored = sum(isinstance(d, Tile) for d in plan.decisions)
    device = _device(be)
    say(f"verify: building {diagram.name} on {device} with random weights (seed {seed})")
    module, args, kwargs = build_model(model, batch, seq, dtype, seed=seed, device=device)
    inputs = _flat_inputs(exported, module, args, kwargs)
    reference = [t for t in pytree.tree_leaves(module(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    gm = exported.graph_module
    user_outputs = [k for k, s in enumerate(exported.graph_signature.output_specs)
                    if s.kind.name == "USER_OUTPUT"]

    def outputs(flat: Any) -> list:
        return [flat[k] for k in user_outputs]

    graph, _ = _partition(gm, [], device)
    eager = torch.fx.GraphModule({}, graph)
    err, allowed = _error(outputs(eager(*inputs)), reference, dtype)
    if err > allowed:  # the captured graph must compute the model, or nothing below means anything
        raise PlanError(f"the exported graph of {diagram.name} differs from the model's forward "
                        f"(max abs error {err:.3g}); cannot verify plans on it")

    groups = [(tuple(v.name for v in k.subdiagram.vertices), _label(k.subdiagram.vertices))
              for k in kernels]
    graph, built = _partition(gm, groups, device)
    shared: dict[str, Callable] = {}
    checks = {f"group_{i}": _Checked(g, shared, dtype) for i, g in enumerate(built)}
    say(f"verify: compiling the plan's {len(built)} fusion groups "
        f"({len({g.key for g in built})} distinct) with inductor, checking each against eager")
    planned = torch.fx.GraphModule(dict(checks), copy.deepcopy(graph))
    plan_err, plan_allowed = _error(outputs(planned(*inputs)), reference, dtype)
    if plan_err > plan_allowed:
        raise PlanError(f"the plan's outputs differ from eager: max abs error {plan_err:.3g}, "
                        f"allowed {plan_allowed:.3g} ({dtype}), though each group matched alone")
    plan_compile_s = sum(c.compile_s or 0.0 for c in checks.values())
    planned = torch.fx.GraphModule({name: shared[c.group.key] for name, c in checks.items()}, graph)

    say("verify: compiling the whole model with inductor")
    start = time.perf_counter()
    try:
        whole = _compile(eager, inputs)
        whole_err, _ = _error(outputs(whole(*inputs)), reference, dtype)
        whole_s: float | None = time.perf_counter() - start
        whole_error = None
        if whole_err > plan_allowed:
            say(f"verify: warning: the whole-model compile differs from eager by {whole_err:.3g}")
    except Exception as e:  # noqa: BLE001 - a failed baseline is reported, not fatal
        whole_err, whole_s, whole_error = None, None, _describe(e)
        say(f"verify: the whole-model compile failed: {whole_error}")

    fns = {"eager": eager, "plan": planned}
    if whole_error is None:
        fns["compiled"] = whole
    where = f"on {torch.get_num_threads()} threads" if device.type == "cpu" else f"on {be.hardware}"
    say(f"verify: timing {', '.join(fns)}: {warmup} warm-up and {repeats} timed calls each {where}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    samples = _time(fns, inputs, repeats=repeats, warmup=warmup, sync=sync)
    compiled = Result.of(samples["compiled"]) if whole_error is None else Result.failure(whole_error)
    fused = tuple(FusedKernel(g.vertices, k.subdiagram.hash, checks[f"group_{i}"].compile_s,
                              checks[f"group_{i}"].max_abs_error)
                  for i, (g, k) in enumerate(zip(built, kernels)))
    return Verification(
        model=diagram.name, batch=batch, seq=seq, dtype=dtype, plan=plan, plan_hash=plan_hash(plan),
        hardware=be.hardware, device=str(device), threads=torch.get_num_threads(),
        repeats=repeats, warmup=warmup, eager=Result.of(samples["eager"]), planned=Result.of(samples["plan"]),
        compiled=compiled, plan_compile_s=round(plan_compile_s, 3),
        compiled_compile_s=None if whole_s is None else round(whole_s, 3),
        max_abs_error=plan_err, compiled_max_abs_error=whole_err, tolerance=plan_allowed,
        kernels=fused, ignored_tiles=ignored,
        loadavg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, diagram=diagram)


def _label(vertices: Sequence) -> str:
    """A group as people read it: its compute vertices and the module it sits in."""
    names = "+".join(v.name for v in vertices if not v.is_free)
    module = next((v.module for v in vertices if v.module), "")
    return f"{names} ({module})" if module else names


def _time(fns: dict[str, Callable], inputs: list, *, repeats: int, warmup: int,
          sync: Callable[[], None]) -> dict[str, list[float]]:
    """Milliseconds of each call, `sync` (the device's synchronisation) ending each, the
    callables interleaved (rotated each round) so load from other processes falls on all of
    them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(*inputs)
    sync()
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter_ns()
            fns[name](*inputs)
            sync()
            samples[name].append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Into the dataset


def record(verification: Verification, *, root: str | Path = DATA_DIR) -> dict[str, int]:
    """Append the whole-model timings (eager, plan, whole-model compile) to the dataset at
    `root` as "model"-scope rows of source "host" or "cuda" (where it ran), with the diagram and
    hardware rows they refer to, the way `costmodel measure` writes its rows. Rows already there
    (same model, plan, machine and software) are skipped. Returns {"written", "skipped"}.

    Like NeuSight's whole-model rows: `diagram_hash` names the graph, `extra_json` holds the
    workload, and runs whose kernels are not the graph's eager ops carry "fusion": true (the
    plan, the whole compile), so `costmodel.evaluate.model_workloads` leaves them out of eager
    composition."""
    v = verification
    be = _backend(v.device)
    if v.hardware != be.hardware:
        raise ValueError(f"this verification ran on {v.hardware}, not on this machine ({be.hardware})")
    prov, env = be.provenance(), be.environment()
    if isinstance(be, CudaBackend):  # the GPU's clocks, temperature and power just after timing
        env["clocks_json"] = dumps(be.clocks())
    key = {**be.key(), "threads": v.threads}
    base = {"model": v.model, "batch": v.batch, "seq": v.seq, "dtype": v.dtype,
            "workload": f"{v.model}-inf-{v.seq}-{v.batch}", "warmup": v.warmup,
            "loadavg_1m": v.loadavg_1m, "cache": "warm (one input set)", "device": v.device}
    runs = [
        ("eager", v.eager, {"plan": "eager", "compiler": "eager"}, {"plan": "eager"}),
        ("plan", v.planned, {"plan": v.plan_hash, "compiler": "inductor", "fused": True},
         {"plan": "plan", "plan_hash": v.plan_hash, "fusion": True, "decisions": v.plan.to_list(),
          "fused_kernels": len(v.kernels), "ignored_tiles": v.ignored_tiles,
          "compile_s": v.plan_compile_s, "max_abs_error": v.max_abs_error}),
        ("compiled", v.compiled, {"plan": "whole-graph", "compiler": "inductor", "fused": True},
         {"plan": "compiled", "fusion": True, "compile_s": v.compiled_compile_s,
          "max_abs_error": v.compiled_max_abs_error}),
    ]
    done = existing_ids(root, be.source)
    counts = {"written": 0, "skipped": 0}
    with ShardWriter(root, source=be.source) as writer:
        rows = []
        for name, result, config, extra in runs:
            row = measurement_row(
                prov, hardware=be.hardware, runtime_ms=result.runtime_ms, scope="model",
                diagram_hash=v.diagram_hash, kernel_config=config, error=result.error, key=key,
                kernel_name=f"{name}:model", runtime_iqr_ms=result.iqr_ms,
                runtime_min_ms=result.min_ms, runtime_max_ms=result.max_ms, repeats=result.repeats,
                framework=env.get("framework"), framework_version=env.get("framework_version"),
                driver_version=env.get("driver_version"), cuda_version=env.get("cuda_version"),
                clocks_json=env.get("clocks_json"), threads=v.threads,
                extra_json=dumps({**base, **extra}))
            counts["skipped" if row["measurement_id"] in done else "written"] += 1
            if row["measurement_id"] not in done:
                rows.append(row)
        if rows:
            add_context_rows(writer, be, v.diagram, root)
            for row in rows:
                writer.add("measurements", row)
    return counts
