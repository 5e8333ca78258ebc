"""Measure what kernels cost: each kernel of a captured model, run alone on real tensors.

A model is exported (`zoo.export_model`); every diagram vertex is named after the exported
graph node it came from, so a kernel's own nodes can be cut out of the graph as a small fx
module and run on random tensors of the recorded shapes and strides. Values the graph builds
from shapes and user inputs alone (attention masks, position ids) are evaluated for real;
integer inputs are drawn in range (embedding indices below the table size, gather and index
indices below the dimension they index).

What is measured for a model (`requests`):
- every eager kernel (one compute op), once per distinct (subdiagram hash, config);
- fusion groups: a matmul and its pointwise epilogue chain (each prefix the autotuner can
  choose), a residual add and the layer norm that reads it, connected pointwise ops of one
  size. Each is a `Diagram.subdiagram` of the group's vertices (with the free views between
  them, as `Plan.kernels` builds it), so its hash is the one the autotuner prices, and it is
  measured twice: unfused (`{"fused": false, "compiler": "eager"}`: its ops one after another)
  and fused (`{"fused": true, "compiler": "inductor"}`: one torch.compile'd fx module).
- an attention whose explicit mask keeps everything or is causal also runs without the mask
  tensor (`"mask": "implicit"`: no mask, or is_causal), checked against the masked call;
- on CUDA also: Triton matmuls over a small legal grid of tiles (`costmodel.kernels`), SDPA
  backends (flash, efficient, math where legal), inductor for layer norm and softmax, and
  inductor's max-autotune for fused groups holding a matmul.
Requests are ordered by usefulness: eager kernels first, then fused/unfused pairs, then other
compilers and backends, then tile sweeps (one tile for every matmul before the next tile);
within each, by the roofline's estimate of the time the kernel's occurrences take.

A measurement's id hashes the source, hardware, subdiagram hash, kernel config and a `key`
naming the software (torch version, threads; on CUDA also GPU name, driver, CUDA and Triton
versions), not the model: the same kernel in another model is the same measurement, and a
re-run skips what exists. `diagram_hash` on the row names the model it was measured in.

`measure` writes through a `ShardWriter` flushed every few results, so an interrupt (Ctrl-C)
loses at most the kernel being timed. `collect` loops `measure` over the zoo within one budget.
"""
from __future__ import annotations

import abc
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.fx

from costmodel.capture import tensors
from costmodel.cost import Roofline
from costmodel.dataset import (
    DATA_DIR,
    Provenance,
    ShardWriter,
    diagram_rows,
    dumps,
    existing_ids,
    measurement_row,
    now,
    read_table,
    subdiagram_row,
)
from costmodel.diagram import COMPUTE_DTYPES, Diagram, Subdiagram
from costmodel.errors import UserError, unknown_choice
from costmodel.hardware import (
    HardwareProfile,
    cpu_profile,
    load_profile,
    profile_for_device_name,
)
from costmodel.plan import (EPILOGUE_KINDS, KernelConfig, check_fusable,
                            compute_readers, epilogue_chain)

TRITON_OPS = ("linear", "addmm", "mm", "bmm")  # ATen ops `costmodel.kernels` runs as Triton matmuls
TILE_GRID = {"block_m": (64, 128), "block_n": (64, 128), "block_k": (32, 64), "num_warps": (4, 8),
             "num_stages": (3, 4)}
MAX_ACCUMULATORS_PER_THREAD = 128  # fp32 accumulators a thread holds without spilling
SDPA_BACKENDS = ("flash", "efficient", "math")
EVALUATE_LIMIT_BYTES = 256 * 2**20  # graph values bigger than this are drawn, not evaluated
LICENCE = "Apache-2.0"  # our own measurements carry the project's licence


# ---------------------------------------------------------------------------------------------
# What runs: the exported graph, cut into kernels


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
            name = _op_name(u)
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


def _op_name(node: torch.fx.Node) -> str:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1]
    return getattr(t, "__name__", str(t))


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


# ---------------------------------------------------------------------------------------------
# Which kernels: eager kernels and fusion groups


@dataclass(frozen=True)
class Site:
    """A kernel of one diagram: its vertices (with the free views between members) and subdiagram.
    `group` is "eager" (one compute op), "epilogue", "epilogue-prefix", "residual-norm" or
    "elementwise"."""

    vertices: tuple[str, ...]
    subdiagram: Subdiagram
    group: str = "eager"

    @property
    def fused(self) -> bool:
        return self.group != "eager"


def fusion_groups(diagram: Diagram) -> dict[tuple[str, ...], str]:
    """Compute-vertex groups one fused kernel can run, each with its kind: a matmul and the
    1..MAX_EPILOGUE pointwise ops after it, each the only reader of the one before ("epilogue"
    for the whole chain, "epilogue-prefix" for a shorter one); an add and a layer norm reading
    it ("residual-norm"); connected floating-point pointwise ops of one size ("elementwise")."""
    groups: dict[tuple[str, ...], str] = {}
    for v in diagram.vertices:
        if v.kind == "matmul":
            chain = epilogue_chain(diagram, v.name)
            for depth in range(1, len(chain) + 1):
                groups.setdefault((v.name, *chain[:depth]),
                                  "epilogue" if depth == len(chain) else "epilogue-prefix")
        elif v.kind == "add":
            for r in compute_readers(diagram, v.outputs[0]):
                if diagram.vertex[r].kind == "layer_norm" and diagram.vertex[r].input_shapes[0] \
                        and math.prod(diagram.vertex[r].input_shapes[0]) == math.prod(v.output_shapes[0]):
                    groups.setdefault((v.name, r), "residual-norm")
    for comp in _pointwise_components(diagram):
        groups.setdefault(comp, "elementwise")
    legal = {}
    for names, kind in groups.items():
        try:
            check_fusable(diagram, names)
        except ValueError:
            continue
        legal[names] = kind
    return legal


def _pointwise(diagram: Diagram, name: str) -> bool:
    v = diagram.vertex[name]
    return v.kind in EPILOGUE_KINDS and v.dtype in COMPUTE_DTYPES


def _pointwise_components(diagram: Diagram) -> list[tuple[str, ...]]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for v in diagram.vertices:
        if _pointwise(diagram, v.name):
            parent.setdefault(v.name, v.name)
            size = math.prod(v.output_shapes[0])
            for r in compute_readers(diagram, v.outputs[0]):
                if _pointwise(diagram, r) and math.prod(diagram.vertex[r].output_shapes[0]) == size:
                    parent.setdefault(r, r)
                    parent[root(r)] = root(v.name)
    comps: dict[str, list[str]] = {}
    for v in diagram.vertices:
        if v.name in parent:
            comps.setdefault(root(v.name), []).append(v.name)
    return [tuple(c) for c in comps.values() if len(c) > 1]


def sites(diagram: Diagram, *, fusion: bool = True) -> list[Site]:
    """Every eager kernel, then (with `fusion`) every fusion group, as subdiagrams."""
    out = [Site((v.name,), diagram.subdiagram([v.name])) for v in diagram.vertices if not v.is_free]
    if fusion:
        for names, kind in fusion_groups(diagram).items():
            group = check_fusable(diagram, names)
            out.append(Site(group, diagram.subdiagram(group), kind))
    return out


@dataclass(frozen=True)
class Variant:
    """One way to run a kernel. `config` is the kernel_config recorded with the row (JSON text,
    canonical): always "fused" and "compiler"; a tiled kernel adds KernelConfig's fields.
    `tier` orders what is measured first (0: eager kernels, 1: fused/unfused pairs, 2: other
    compilers and backends, 3: tile sweeps); `round` spreads a sweep over all kernels."""

    config_json: str
    name: str
    tier: int = 0
    round: int = 0

    @classmethod
    def of(cls, config: dict, name: str, tier: int = 0, round: int = 0) -> Variant:
        return cls(dumps(config), name, tier, round)

    @cached_property
    def config(self) -> dict:
        return json.loads(self.config_json)


def tile_config(config: dict | str | None) -> KernelConfig | None:
    """The KernelConfig a recorded kernel_config holds (None: the library's or compiler's own)."""
    if isinstance(config, str):
        config = json.loads(config)
    if not config or "block_m" not in config:
        return None
    return KernelConfig(**{k: config[k] for k in KernelConfig.__dataclass_fields__ if k in config})


@dataclass(frozen=True, eq=False)
class Request:
    """Time `variant` of the kernel at `site`. `count` is how many kernels of the model it stands
    for; `priority` estimates the seconds they take (what measuring it is worth)."""

    site: Site
    variant: Variant
    program: Program | None
    dtype: str
    count: int = 1
    priority: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.site.subdiagram.hash, self.variant.config_json

    def workload(self, device: torch.device | str) -> Workload:
        if self.program is None:
            raise ValueError("this request has no program to run")
        return self.program.workload(self.site.vertices, device)


def requests(program: Program, backend: Backend) -> list[Request]:
    """What `backend` measures of a model, one per distinct (subdiagram hash, config), most
    useful first: by tier, then sweep round, then estimated seconds at stake."""
    diagram = program.diagram
    dtype = diagram.info("dtype", "fp32")
    profile = backend.profile()
    first: dict[tuple[str, str], Request] = {}
    counts: dict[tuple[str, str], int] = {}
    for site in sites(diagram, fusion=backend.fusion):
        for variant in backend.configs(site, dtype):
            req = Request(site, variant, program, dtype)
            counts[req.key] = counts.get(req.key, 0) + 1
            first.setdefault(req.key, req)
    out = []
    for k, req in first.items():
        seconds = _estimate_s(req.site.subdiagram, profile)
        out.append(Request(req.site, req.variant, program, dtype, counts[k], counts[k] * seconds))
    out.sort(key=lambda r: (r.variant.tier, r.variant.round, -r.priority, r.site.subdiagram.hash,
                            r.variant.config_json))
    return out


def _estimate_s(sub: Subdiagram, profile: HardwareProfile | None) -> float:
    if profile is not None:
        try:
            return Roofline().kernel_seconds(sub, profile)
        except (ValueError, ArithmeticError):
            pass
    return sub.flops / 1e12 + (sub.bytes_read + sub.bytes_written) / 1e11 + 5e-6


# ---------------------------------------------------------------------------------------------
# Backends


@dataclass(frozen=True)
class Result:
    """Timings of one request in milliseconds (median, IQR, min, max over `repeats` calls), or
    the error that stopped it. `extra` holds backend details (compile seconds, clocks, ...)."""

    runtime_ms: float | None = None
    iqr_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    repeats: int = 0
    error: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, samples_ms: Sequence[float], **extra: Any) -> Result:
        s = sorted(samples_ms)
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else (s[0],) * 3
        return cls(statistics.median(s), q3 - q1, s[0], s[-1], len(s), None, tuple(extra.items()))

    @classmethod
    def failure(cls, error: str, **extra: Any) -> Result:
        return cls(error=error, extra=tuple(extra.items()))


class Backend(abc.ABC):
    """Where kernels run and how they are timed.

    Invariants every implementation keeps (`tests/costmodel/test_measure.py` checks them):
    - `run(requests)` returns exactly one `Result` per request, in order;
    - a failure (compile error, out of memory, timeout, output mismatch against eager PyTorch)
      is a Result with `error` set: never an exception that ends the run (KeyboardInterrupt
      excepted), never a missing result;
    - timings are medians in milliseconds over repeated calls after a warm-up, with IQR, min,
      max and the repeat count;
    - `key()` names the software and machine (never what varies run to run, like clocks), so
      the same kernel measured again on the same set-up has the same measurement id.
    """

    name: str = ""  # what `backend()` resolves
    source: str = ""  # the provenance source of its rows
    kind: str = ""  # the hardware kind: "cpu" or "gpu"
    dtypes: tuple[str, ...] = ("fp32",)
    fusion: bool = True  # whether fusion groups are measured

    @property
    @abc.abstractmethod
    def hardware(self) -> str:
        """The hardware column of its rows (a profile name where one matches)."""

    @abc.abstractmethod
    def configs(self, site: Site, dtype: str) -> list[Variant]:
        """The variants of `site` this backend measures."""

    @abc.abstractmethod
    def run(self, requests: Sequence[Request]) -> list[Result]:
        """One Result per request, in order (see the class docstring)."""

    def environment(self) -> dict:
        """Measurement columns that describe the software and machine."""
        return {"framework": "torch", "framework_version": torch.__version__,
                "threads": torch.get_num_threads()}

    def key(self) -> dict:
        env = self.environment()
        return {"torch": env["framework_version"], "threads": env["threads"]}

    def profile(self) -> HardwareProfile | None:
        return None

    def provenance(self) -> Provenance:
        return Provenance(self.source, now()[:10], LICENCE, origin=self.hardware)

    def hardware_row(self) -> dict:
        """The hardware table's row for this machine."""
        p = self.profile()
        return {"hardware": self.hardware, "kind": self.kind,
                "display_name": p.display_name if p else self.hardware,
                "descriptor_json": dumps(p.descriptor()) if p else None,
                "profile_json": dumps(p.to_dict()) if p else None, "source": self.source}


def _kinds(site: Site) -> str:
    return "+".join(k for k in site.subdiagram.kinds if k != "free")


class _TorchBackend(Backend):
    """Shared by the CPU and CUDA backends: build each request's callable, check it against
    eager PyTorch, time it (`_time`), and turn any failure into a Result."""

    device = torch.device("cpu")

    def __init__(self, *, target_s: float, min_repeats: int, max_repeats: int, warmup_s: float,
                 timeout_s: float, compilers: Sequence[str], check: bool, fusion: bool, seed: int) -> None:
        self.target_s = target_s  # timed calls stop once they add up to about this
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.warmup_s = warmup_s
        self.timeout_s = timeout_s  # a call longer than this is a "timeout" failure
        self.compilers = tuple(compilers)
        self.check = check
        self.fusion = fusion
        self.seed = seed

    def run(self, requests: Sequence[Request]) -> list[Result]:
        out = []
        for r in requests:
            try:
                out.append(self._measure(r))
            except Exception as e:  # noqa: BLE001 - failures are data: compile errors, OOM, illegal configs
                out.append(Result.failure(_describe(e)))
            finally:
                self._cleanup(r)
        return out

    def _measure(self, request: Request) -> Result:
        cfg = request.variant.config
        wl = request.workload(self.device)
        sets = self._input_sets(wl)
        with torch.no_grad():
            reference = None
            if self.check and (cfg.get("compiler") != "eager" or cfg.get("sdpa_backend", "auto") != "auto"
                               or "mask" in cfg):
                with self._numerics(request.dtype):
                    reference = wl.module.forward(*sets[0])
            with self._context(request):
                fn = self._callable(request, wl)
                start = time.perf_counter()
                out = fn(*sets[0])
                self._sync()
                first_s = time.perf_counter() - start
                if reference is not None and (bad := _mismatch(out, reference, request.dtype)):
                    return Result.failure(f"mismatch against eager PyTorch: {bad}", first_call_s=first_s)
                del out, reference
                samples = self._time(fn, sets)
        return Result.of(samples, first_call_s=round(first_s, 6), input_sets=len(sets),
                         input_bytes=wl.input_bytes, **self._row_extra())

    def _callable(self, request: Request, wl: Workload) -> Callable:
        cfg = request.variant.config
        compiler = cfg.get("compiler")
        if compiler not in self.compilers:
            raise ValueError(f"compiler {compiler!r} is not one of this backend's {self.compilers}")
        if compiler == "eager" and cfg.get("mask") == "implicit":
            v = next(v for v in request.site.subdiagram.vertices if v.kind == "attention")
            return wl.with_target(_implicit_mask_sdpa(v.mask_kind == "causal"))
        if compiler == "eager":
            return wl.module.forward
        if compiler == "inductor":
            return torch.compile(wl.module, backend="inductor", fullgraph=True, dynamic=False,
                                 mode=cfg.get("mode"))
        if compiler == "triton":
            return self._triton(request, wl)
        raise ValueError(f"unknown compiler {compiler!r}")

    def _triton(self, request: Request, wl: Workload) -> Callable:
        raise ValueError(f"{self.name} runs no Triton kernels")

    def _cleanup(self, request: Request) -> None:
        if request.variant.config.get("compiler") == "inductor":
            torch._dynamo.reset()  # drop compiled graphs: memory, and dynamo's cache limits

    def _numerics(self, dtype: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _context(self, request: Request) -> contextlib.AbstractContextManager:
        return self._numerics(request.dtype)

    def _sync(self) -> None:
        pass

    def _row_extra(self) -> dict:
        return {}

    @abc.abstractmethod
    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]: ...

    @abc.abstractmethod
    def _time(self, fn: Callable, sets: list[list[torch.Tensor]]) -> list[float]: ...


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:500] if text else ''}".rstrip(": ")


_TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "fp16": 2e-2, "bf16": 6e-2}  # relative to max |ref|


def _mismatch(out: Any, ref: Any, dtype: str) -> str | None:
    """Why `out` differs from `ref` beyond the dtype's tolerance, or None when it does not."""
    outs, refs = tensors(out), tensors(ref)
    if len(outs) != len(refs):
        return f"{len(outs)} outputs, eager gives {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            return f"output {i} has shape {tuple(o.shape)}, eager {tuple(r.shape)}"
        if not r.dtype.is_floating_point:
            if not torch.equal(o.cpu(), r.cpu()):
                return f"output {i} ({r.dtype}) differs"
            continue
        o, r = o.detach().float().cpu(), r.detach().float().cpu()
        if bool((o.isnan() != r.isnan()).any()):
            return f"output {i} has NaNs where eager has none (or the reverse)"
        finite = r.isfinite() & o.isfinite()
        if not finite.any():
            continue
        err = (o[finite] - r[finite]).abs().max().item()
        scale = r[finite].abs().max().item()
        if err > _TOLERANCE.get(dtype, 1e-3) * max(scale, 1.0):
            return f"output {i}: max abs error {err:.3g} (max |eager| {scale:.3g})"
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


class HostBackend(_TorchBackend):
    """This machine's CPU. Each request: its inputs made once (warm caches), a first call (it
    compiles for inductor), warm-up calls for `warmup_s`, then timed calls (perf_counter, one
    by one) until they add up to `target_s`, at least `min_repeats` and at most `max_repeats`.
    Rows record `torch.get_num_threads()`; hardware is "cpu-" and the CPU model."""

    name = "cpu"
    source = "host"
    kind = "cpu"
    dtypes = ("fp32", "fp16", "bf16")

    def __init__(self, *, target_s: float = 0.1, min_repeats: int = 5, max_repeats: int = 1000,
                 warmup_s: float = 0.02, timeout_s: float = 60.0,
                 compilers: Sequence[str] = ("eager", "inductor"), check: bool = True,
                 fusion: bool = True, seed: int = 0) -> None:
        super().__init__(target_s=target_s, min_repeats=min_repeats, max_repeats=max_repeats,
                         warmup_s=warmup_s, timeout_s=timeout_s, compilers=compilers, check=check,
                         fusion=fusion, seed=seed)

    @cached_property
    def hardware(self) -> str:
        return f"cpu-{_slug(self.profile().display_name)}"

    def profile(self) -> HardwareProfile:
        return cpu_profile()

    def environment(self) -> dict:
        return {**super().environment(), "clocks_json": dumps(_cpu_clock())}

    def _row_extra(self) -> dict:
        # Other processes on a small host skew timings; the load lets noisy rows be found.
        return {"loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "cache": "warm (one input set)"}

    def key(self) -> dict:
        return {**super().key(), "cpu": self.profile().display_name, "machine": platform.machine()}

    def configs(self, site: Site, dtype: str) -> list[Variant]:
        kinds = _kinds(site)
        if not site.fused:
            out = [Variant.of({"fused": False, "compiler": "eager"}, f"eager:{kinds}")]
            v = next(v for v in site.subdiagram.vertices if not v.is_free)
            if _implicit_mask_legal(v):
                out.append(Variant.of({"fused": False, "compiler": "eager", "sdpa_backend": "auto",
                                       "mask": "implicit"}, "sdpa-auto:attention-implicit-mask", 2))
            return out
        tier = 2 if site.group == "epilogue-prefix" else 1
        out = [Variant.of({"fused": False, "compiler": "eager"}, f"eager:{kinds}", tier)]
        if "inductor" in self.compilers:
            out.append(Variant.of({"fused": True, "compiler": "inductor"}, f"inductor:{kinds}", tier))
        return out

    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]:
        return [wl.make_inputs(self.device, torch.Generator().manual_seed(self.seed))]

    def _time(self, fn: Callable, sets: list[list[torch.Tensor]]) -> list[float]:
        x = sets[0]
        start = time.perf_counter()
        calls = 0
        while calls < 1 or (time.perf_counter() - start < self.warmup_s and calls < 1000):
            fn(*x)
            calls += 1
        per_call = (time.perf_counter() - start) / calls
        if per_call > self.timeout_s:
            raise TimeoutError(f"one call takes {per_call:.1f} s, over the {self.timeout_s} s limit")
        n = min(self.max_repeats, max(self.min_repeats, int(self.target_s / max(per_call, 1e-9))))
        samples = []
        for _ in range(n):
            t = time.perf_counter_ns()
            fn(*x)
            samples.append((time.perf_counter_ns() - t) / 1e6)
        return samples


def _cpu_clock() -> dict | None:
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq").read_text().strip()
        return {"cpu0_mhz": int(khz) / 1e3}
    except (OSError, ValueError):
        return None


class CudaBackend(_TorchBackend):
    """GPU 0 through torch.cuda. Each request: enough input sets that together they exceed twice
    the L2 cache (at most `max_sets`, within a quarter of free memory), visited in turn so every
    call reads cold inputs; a first call (compile), warm-up for `warmup_s`, then each call timed
    by its own pair of CUDA events until they add up to `target_s`. Matmuls also run as Triton
    kernels over the legal tiles of TILE_GRID; attention under each legal SDPA backend; layer
    norm, softmax and fusion groups under inductor. A "tf32" diagram runs with
    torch.set_float32_matmul_precision("high"), any other with "highest". GPU name, driver and
    clocks (sampled after each request) come from NVML (nvidia-ml-py)."""

    name = "cuda"
    source = "cuda"
    kind = "gpu"
    dtypes = ("fp32", "tf32", "fp16", "bf16")

    def __init__(self, *, target_s: float = 0.05, min_repeats: int = 10, max_repeats: int = 2000,
                 warmup_s: float = 0.025, timeout_s: float = 30.0, max_sets: int = 32,
                 compilers: Sequence[str] = ("eager", "inductor", "triton"),
                 sdpa_backends: Sequence[str] = SDPA_BACKENDS, check: bool = True,
                 fusion: bool = True, seed: int = 0) -> None:
        super().__init__(target_s=target_s, min_repeats=min_repeats, max_repeats=max_repeats,
                         warmup_s=warmup_s, timeout_s=timeout_s, compilers=compilers, check=check,
                         fusion=fusion, seed=seed)
        self.max_sets = max_sets
        self.sdpa_backends = tuple(sdpa_backends)
        self._nvml = None
        self._probe()

    def _probe(self) -> None:
        if not torch.cuda.is_available():
            raise UserError("target cuda: torch.cuda.is_available() is False (this torch build has "
                            "no CUDA, or no GPU is visible); use --target cpu, or install a CUDA "
                            "build of torch on a machine with an NVIDIA GPU")
        self.device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(self.device)
        self._gpu_name, self._driver = props.name, None
        self._nvml = _nvml_handle(props, self.device.index)
        if self._nvml is not None:
            import pynvml

            with contextlib.suppress(pynvml.NVMLError):
                name = pynvml.nvmlDeviceGetName(self._nvml)
                self._gpu_name = name.decode() if isinstance(name, bytes) else name
            with contextlib.suppress(pynvml.NVMLError):
                driver = pynvml.nvmlSystemGetDriverVersion()
                self._driver = driver.decode() if isinstance(driver, bytes) else driver
        self._profile_name = profile_for_device_name(self._gpu_name)
        p = self.profile()
        self._smem = getattr(props, "shared_memory_per_block_optin", 0) or \
            (p.shared_memory_per_unit if p else None) or 48 * 1024
        self._l2 = getattr(props, "L2_cache_size", 0) or (p.l2_bytes if p else None) or 40 * 2**20
        self._cuda_version = torch.version.cuda

    @property
    def hardware(self) -> str:
        return self._profile_name or _slug(self._gpu_name)

    def profile(self) -> HardwareProfile | None:
        return load_profile(self._profile_name) if self._profile_name else None

    def environment(self) -> dict:
        return {**super().environment(), "driver_version": self._driver,
                "cuda_version": self._cuda_version}

    def key(self) -> dict:
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        return {**super().key(), "gpu": self._gpu_name, "driver": self._driver,
                "cuda": self._cuda_version, "triton": triton_version}

    # -- what is measured

    def configs(self, site: Site, dtype: str) -> list[Variant]:
        kinds = _kinds(site)
        eager = {"fused": False, "compiler": "eager"}
        if site.fused:
            tier = 2 if site.group == "epilogue-prefix" else 1
            out = [Variant.of(eager, f"eager:{kinds}", tier)]
            if "inductor" in self.compilers:
                out.append(Variant.of({"fused": True, "compiler": "inductor"}, f"inductor:{kinds}", tier))
                if "matmul" in site.subdiagram.kinds:
                    out.append(Variant.of({"fused": True, "compiler": "inductor",
                                           "mode": "max-autotune-no-cudagraphs"},
                                          f"inductor-max-autotune:{kinds}", 2))
            return out
        v = next(v for v in site.subdiagram.vertices if not v.is_free)
        if v.kind == "attention":
            out = [Variant.of({**eager, "sdpa_backend": "auto"}, "sdpa-auto:attention")]
            explicit = len(v.inputs) > 3
            out += [Variant.of({**eager, "sdpa_backend": b}, f"sdpa-{b}:attention", 2)
                    for b in self.sdpa_backends if _sdpa_legal(b, v, dtype, explicit)]
            if _implicit_mask_legal(v):
                out += [Variant.of({**eager, "sdpa_backend": b, "mask": "implicit"},
                                   f"sdpa-{b}:attention-implicit-mask", 2)
                        for b in ("auto", *self.sdpa_backends) if _sdpa_legal(b, v, dtype, False)]
            return out
        out = [Variant.of(eager, f"eager:{kinds}")]
        if v.kind == "matmul" and "triton" in self.compilers and _triton_op(v):
            out += [Variant.of({**eager, "compiler": "triton", **asdict(tile)}, "triton:matmul", 3, i)
                    for i, tile in enumerate(self.tiles(dtype))]
        elif v.kind in ("layer_norm", "softmax") and "inductor" in self.compilers:
            out.append(Variant.of({"fused": False, "compiler": "inductor"}, f"inductor:{kinds}", 2))
        return out

    def tiles(self, dtype: str) -> list[KernelConfig]:
        """TILE_GRID's configs that launch here: all pipeline stages within shared memory,
        accumulators per thread within MAX_ACCUMULATORS_PER_THREAD."""
        element = 4 if dtype in ("fp32", "tf32") else 2
        out = []
        for values in itertools.product(*TILE_GRID.values()):
            c = KernelConfig(**dict(zip(TILE_GRID, values)))
            if c.smem_bytes(element) <= self._smem and \
                    c.block_m * c.block_n / (c.num_warps * 32) <= MAX_ACCUMULATORS_PER_THREAD:
                out.append(c)
        return out

    # -- how it runs

    def _triton(self, request: Request, wl: Workload) -> Callable:
        from costmodel import kernels

        v = next(v for v in request.site.subdiagram.vertices if not v.is_free)
        op = kernels.OPS[v.op.split(".")[1]]
        tile, tf32 = tile_config(request.variant.config), request.dtype == "tf32"
        return wl.with_target(lambda *a, **k: op(*a, **k, config=tile, tf32=tf32))

    def _numerics(self, dtype: str) -> contextlib.AbstractContextManager:
        return matmul_precision("high" if dtype == "tf32" else "highest")

    @contextlib.contextmanager
    def _context(self, request: Request) -> Iterator[None]:
        backend = request.variant.config.get("sdpa_backend", "auto")
        with self._numerics(request.dtype):
            if backend == "auto":
                yield
                return
            from torch.nn.attention import SDPBackend, sdpa_kernel

            chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                      "math": SDPBackend.MATH}[backend]
            with sdpa_kernel(chosen):
                yield

    def _sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def _cleanup(self, request: Request) -> None:
        super()._cleanup(request)
        torch.cuda.empty_cache()  # an OOM or a big request must not starve the next

    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]:
        per_set = max(wl.input_bytes, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        n = max(1, min(self.max_sets, math.ceil(2 * self._l2 / per_set), free // 4 // per_set))
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        return [wl.make_inputs(self.device, gen) for _ in range(n)]

    def _time(self, fn: Callable, sets: list[list[torch.Tensor]]) -> list[float]:
        n = len(sets)
        begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        begin.record()
        start, calls = time.perf_counter(), 0
        while calls < 3 or (time.perf_counter() - start < self.warmup_s and calls < 1000):
            fn(*sets[calls % n])
            calls += 1
        end.record()
        end.synchronize()
        per_call_ms = begin.elapsed_time(end) / calls
        if per_call_ms > self.timeout_s * 1e3:
            raise TimeoutError(f"one call takes {per_call_ms / 1e3:.1f} s, over the {self.timeout_s} s limit")
        reps = min(self.max_repeats, max(self.min_repeats, int(self.target_s * 1e3 / max(per_call_ms, 1e-6))))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            starts[i].record()
            fn(*sets[i % n])
            ends[i].record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    def _row_extra(self) -> dict:
        return {"clocks": self.clocks(), "cache": "cold (rotating input sets over 2x L2)"}

    def clocks(self) -> dict:
        """SM and memory clocks (MHz), temperature (C), power (W) and the clock-event reasons
        bitmask now, from NVML; empty where NVML is not available."""
        if self._nvml is None:
            return {}
        import pynvml

        out: dict[str, Any] = {}
        probes = {
            "sm_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "mem_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "sm_max_mhz": lambda h: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "temperature_c": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "power_w": lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
            "clock_event_reasons": lambda h: getattr(
                pynvml, "nvmlDeviceGetCurrentClocksEventReasons",
                getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))(h),
        }
        for k, probe in probes.items():
            with contextlib.suppress(pynvml.NVMLError, TypeError, AttributeError):
                out[k] = probe(self._nvml)
        return out


def _nvml_handle(props: Any, index: int) -> Any:
    """The NVML handle of the torch device (by PCI bus id, which CUDA_VISIBLE_DEVICES does not
    renumber), or None where NVML is missing or fails (rows then carry no clocks)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, or NVMLError without a driver
        return None
    with contextlib.suppress(Exception):
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    with contextlib.suppress(Exception):
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    return None


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul precision for the block ("highest": TF32 off, "high": on), then
    restored."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _implicit_mask_legal(v: Any) -> bool:
    """Whether an attention's explicit mask tensor says what SDPA can do without one: keep
    everything ("none"), or causal with as many queries as keys (SDPA's is_causal aligns the
    diagonal top-left; the capture's causal pattern is bottom-right, equal when square)."""
    if v.kind != "attention" or len(v.inputs) <= 3:
        return False
    q, k = v.input_shapes[0], v.input_shapes[1]
    return v.mask_kind == "none" or (v.mask_kind == "causal" and q[-2] == k[-2])


def _implicit_mask_sdpa(causal: bool) -> Callable:
    """aten.scaled_dot_product_attention's signature, ignoring the mask tensor: is_causal
    (or nothing) stands for it. The mismatch check against the masked call guards it."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=enable_gqa)

    return sdpa


def _triton_op(v: Any) -> bool:
    base = v.op.split(".")[1] if v.op.count(".") >= 2 else ""
    attrs = dict(v.attrs)
    return base in TRITON_OPS and attrs.get("beta", 1) == 1 and attrs.get("alpha", 1) == 1


def _sdpa_legal(backend: str, v: Any, dtype: str, explicit_mask: bool) -> bool:
    """Whether PyTorch's SDPA `backend` documents support for this attention: flash takes fp16
    or bf16, no explicit mask, head size a multiple of 8 up to 256; efficient takes a float
    mask; math takes anything."""
    head = v.input_shapes[0][-1]
    if backend == "auto":
        return True
    if backend == "flash":
        return dtype in ("fp16", "bf16") and not explicit_mask and head % 8 == 0 and head <= 256
    return backend in ("efficient", "math")


# FakeBackend's time for each way of running a kernel, relative to the roofline (made up).
_FAKE_FACTORS = {"eager": 1.0, "inductor": 0.95, "triton": 1.1, "sdpa-auto": 1.0, "sdpa-flash": 0.9,
                 "sdpa-efficient": 1.2, "sdpa-math": 2.5, "inductor-max-autotune": 0.9}


class FakeBackend(CudaBackend):
    """A GPU that is not there, for tests and for running the CUDA plumbing on a CPU machine:
    CudaBackend's configs, keys and rows, with each request's graph still built and run on meta
    tensors, and a seeded timing: the roofline of `hardware`'s profile (the sum of its ops' for
    an unfused group) times a per-compiler factor and lognormal noise (`noise` sigma), over
    `repeats` draws. `fail_rate` of requests (chosen by the seed) fail on purpose."""

    name = "fake"
    source = "fake"

    def __init__(self, *, hardware: str = "a100-sxm4-80gb", seed: int = 0, noise: float = 0.05,
                 repeats: int = 25, fail_rate: float = 0.0,
                 compilers: Sequence[str] = ("eager", "inductor", "triton"),
                 sdpa_backends: Sequence[str] = SDPA_BACKENDS, fusion: bool = True) -> None:
        self._fake_profile = load_profile(hardware)
        self.noise, self.repeats, self.fail_rate = noise, repeats, fail_rate
        super().__init__(compilers=compilers, sdpa_backends=sdpa_backends, fusion=fusion, seed=seed)

    def _probe(self) -> None:
        p = self._fake_profile
        self.device = torch.device("meta")
        self._gpu_name, self._driver, self._cuda_version = f"{p.display_name} (fake)", "fake", "fake"
        self._profile_name = p.name
        self._smem = p.shared_memory_per_unit or 48 * 1024
        self._l2 = p.l2_bytes or 40 * 2**20

    def profile(self) -> HardwareProfile:
        return self._fake_profile

    def _measure(self, request: Request) -> Result:
        wl = request.workload(self.device)
        with torch.no_grad():
            wl.module.forward(*wl.make_inputs(self.device))  # the graph must build and run
        rng = random.Random(f"{self.seed}|{request.site.subdiagram.hash}|{request.variant.config_json}")
        if rng.random() < self.fail_rate:
            return Result.failure("injected failure (FakeBackend fail_rate)")
        cfg, p, roofline = request.variant.config, self._fake_profile, Roofline()
        if request.site.fused and cfg.get("compiler") == "eager":
            diagram = request.program.diagram
            seconds = sum(roofline.kernel_seconds(diagram.subdiagram([v.name]), p)
                          for v in request.site.subdiagram.vertices if not v.is_free)
        else:
            seconds = roofline.kernel_seconds(request.site.subdiagram, p, tile_config(cfg))
        factor = _FAKE_FACTORS.get(request.variant.name.split(":")[0], 1.0)
        samples = [seconds * 1e3 * factor * rng.lognormvariate(0.0, self.noise) for _ in range(self.repeats)]
        return Result.of(samples, input_sets=1, input_bytes=wl.input_bytes, **self._row_extra())

    def clocks(self) -> dict:
        return {"sm_mhz": self._fake_profile.boost_clock_mhz, "fake": True}

    def _cleanup(self, request: Request) -> None:
        pass


BACKENDS: dict[str, type[Backend]] = {"cpu": HostBackend, "cuda": CudaBackend, "fake": FakeBackend}


def backend(spec: str | Backend = "cpu") -> Backend:
    """A backend from its name ("cpu", "cuda", "fake") or an instance (returned as it is)."""
    if isinstance(spec, Backend):
        return spec
    if spec not in BACKENDS:
        raise unknown_choice("measurement target", spec, BACKENDS)
    return BACKENDS[spec]()


# ---------------------------------------------------------------------------------------------
# Measuring a model


def measure(model: str | tuple[torch.export.ExportedProgram, Diagram], *, target: str | Backend = "cpu",
            batch: int = 1, seq: int = 128, dtype: str = "fp32", budget_s: float = 600.0,
            root: str | Path = DATA_DIR, progress: bool = True, flush_every: int = 16) -> dict:
    """Measure a model's kernels on `target` for about `budget_s` seconds (capture included),
    most useful first, writing rows under `root` (measurements, and the diagram, subdiagram and
    hardware rows they refer to); what already exists there is skipped.

    `model` is a zoo name or Hugging Face config path (captured at batch, seq, dtype) or an
    (exported program, diagram) pair from `zoo.export_*`. No request starts once the budget is
    spent; one that started runs to its end. Rows are flushed every `flush_every` results and on
    any exit; Ctrl-C while kernels are timed stops the loop, flushes, and returns with
    "interrupted": True (a command line should then exit with status 130). Ctrl-C during the
    capture, before anything is written, raises KeyboardInterrupt as usual.

    Returns {"model", "hardware", "diagram_hash", "requests", "measured" (rows with a time),
    "failed" (rows with an error), "skipped" (already measured), "remaining" (left by the
    budget), "interrupted", "seconds"}.
    """
    start = time.perf_counter()
    be = backend(target)
    if isinstance(model, str):
        if dtype not in be.dtypes:
            raise unknown_choice(f"dtype for target {be.name}", dtype, be.dtypes)
        from costmodel.zoo import export_model

        exported, diagram = export_model(model, batch, seq, dtype)
    else:
        exported, diagram = model
    program = Program(exported, diagram, seed=getattr(be, "seed", 0))
    reqs = requests(program, be)
    prov, key, env = be.provenance(), be.key(), be.environment()
    done = existing_ids(root, be.source)
    todo = [r for r in reqs if _row_id(r, be, prov, key) not in done]
    counts = {"model": diagram.name, "hardware": be.hardware, "diagram_hash": diagram.hash,
              "requests": len(reqs), "measured": 0, "failed": 0, "skipped": len(reqs) - len(todo),
              "remaining": len(todo), "interrupted": False}
    have_subs = _existing_subdiagrams(root, be.source, diagram.hash)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{diagram.name} on {be.hardware}", unit="kernel",
               file=sys.stderr, disable=not progress)
    try:
        with ShardWriter(root, source=be.source) as writer:
            if todo:
                add_context_rows(writer, be, diagram, root)
            try:
                for n, req in enumerate(todo, start=1):
                    if time.perf_counter() - start > budget_s:
                        break
                    result = be.run([req])[0]
                    writer.add("measurements", _row(req, result, be, prov, key, env, diagram))
                    if req.site.subdiagram.hash not in have_subs:
                        writer.add("subdiagrams", subdiagram_row(req.site.subdiagram, be.source, diagram.hash))
                        have_subs.add(req.site.subdiagram.hash)
                    counts["failed" if result.error else "measured"] += 1
                    counts["remaining"] -= 1
                    bar.update()
                    if n % flush_every == 0:
                        writer.flush()
            except KeyboardInterrupt:
                counts["interrupted"] = True
    finally:
        bar.close()
    counts["seconds"] = round(time.perf_counter() - start, 3)
    return counts


def _row(req: Request, result: Result, be: Backend, prov: Provenance, key: dict, env: dict,
         diagram: Diagram) -> dict:
    extra = dict(result.extra)
    clocks = extra.pop("clocks", None)
    row = measurement_row(
        prov, hardware=be.hardware, runtime_ms=result.runtime_ms, scope="kernel",
        subdiagram_hash=req.site.subdiagram.hash, diagram_hash=None,
        kernel_config=req.variant.config, kernel_name=req.variant.name, error=result.error, key=key,
        runtime_iqr_ms=result.iqr_ms, runtime_min_ms=result.min_ms, runtime_max_ms=result.max_ms,
        repeats=result.repeats, framework=env.get("framework"),
        framework_version=env.get("framework_version"), driver_version=env.get("driver_version"),
        cuda_version=env.get("cuda_version"),
        clocks_json=dumps(clocks) if clocks is not None else env.get("clocks_json"),
        threads=env.get("threads"),
        extra_json=dumps({"model": diagram.name, "batch": diagram.info("batch"),
                          "seq": diagram.info("seq"), "dtype": req.dtype, "group": req.site.group,
                          "vertices": list(req.site.vertices), "count": req.count,
                          "mask_kinds": sorted({v.mask_kind for v in req.site.subdiagram.vertices
                                                if v.mask_kind}), **extra}))
    # The id leaves the model out (a kernel costs the same in any model); the row still names
    # the diagram it was measured in.
    row["diagram_hash"] = diagram.hash
    return row


def _row_id(req: Request, be: Backend, prov: Provenance, key: dict) -> str:
    return measurement_row(prov, hardware=be.hardware, runtime_ms=None, scope="kernel",
                           subdiagram_hash=req.site.subdiagram.hash, diagram_hash=None,
                           kernel_config=req.variant.config, key=key)["measurement_id"]


def _existing_subdiagrams(root: str | Path, source: str, diagram_hash: str) -> set[str]:
    subs = read_table("subdiagrams", root, columns=["subdiagram_hash", "diagram_hash", "source"])
    mine = subs[(subs["diagram_hash"] == diagram_hash) & (subs["source"] == source)]
    return set(mine["subdiagram_hash"])


def add_context_rows(writer: ShardWriter, be: Backend, diagram: Diagram, root: str | Path) -> None:
    """The diagram's and the hardware's rows, unless `root` has them for this source already."""
    diagrams = read_table("diagrams", root, columns=["diagram_hash", "source"])
    if not ((diagrams["diagram_hash"] == diagram.hash) & (diagrams["source"] == be.source)).any():
        writer.add_rows(diagram_rows(diagram, be.source))
    hardware = read_table("hardware", root, columns=["hardware", "source"])
    if not ((hardware["hardware"] == be.hardware) & (hardware["source"] == be.source)).any():
        writer.add("hardware", be.hardware_row())


def collect(models: Sequence[str] | None = None, *, target: str | Backend = "cpu",
            batches: Sequence[int] = (1, 4), seqs: Sequence[int] = (64, 256),
            dtypes: Sequence[str] = ("fp32",), budget_s: float = 3600.0, root: str | Path = DATA_DIR,
            progress: bool = True) -> dict:
    """Run `measure` over every (model, batch, seq, dtype), smallest batch x seq first, within
    `budget_s` seconds in all: each run gets an equal share of what is left, so time one run
    does not spend passes to the next. Sizes a model cannot take (a seq over its positions) are
    reported as errors and skipped. Stops at Ctrl-C. Returns the per-run counts and totals.

    Host collection (the lead runs it on a quiet machine):
        from costmodel.measure import collect
        collect(target="cpu", batches=(1, 4), seqs=(64, 256), budget_s=4 * 3600)
    """
    from costmodel.zoo import ZOO_NAMES

    models = list(models or ZOO_NAMES)
    be = backend(target)
    combos = sorted(itertools.product(models, batches, seqs, dtypes),
                    key=lambda c: (c[1] * c[2], models.index(c[0]), c[3]))
    start = time.perf_counter()
    runs: list[dict] = []
    interrupted = False
    for i, (model, b, s, dt) in enumerate(combos):
        left = budget_s - (time.perf_counter() - start)
        if left <= 0:
            break
        try:
            r = measure(model, target=be, batch=b, seq=s, dtype=dt, budget_s=left / (len(combos) - i),
                        root=root, progress=progress)
        except UserError as e:
            runs.append({"model": model, "batch": b, "seq": s, "dtype": dt, "error": str(e)})
            continue
        except KeyboardInterrupt:  # Ctrl-C during a capture: nothing was being written
            interrupted = True
            break
        runs.append({"batch": b, "seq": s, "dtype": dt, **r})
        if r["interrupted"]:
            interrupted = True
            break
    totals = {k: sum(r.get(k, 0) for r in runs) for k in ("measured", "failed", "skipped", "remaining")}
    return {"runs": runs, **totals, "interrupted": interrupted,
            "seconds": round(time.perf_counter() - start, 3)}
