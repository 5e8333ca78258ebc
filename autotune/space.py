"""The rewrite space on three levels, per target. Every group and config it offers comes from the
rule book (`costmodel.ir.rules`), so measurement can time each one and the kernels launch it.

- low: kernel parameters. Per matmul class a tile config (BLOCK_M/N/K, warps, stages, split-K)
  from the tiles legal on the target (`rules.legal_tiles`), or None (the vendor library's own
  choice, as eager PyTorch runs it); per attention class a flash-style kernel's block sizes
  (`rules.legal_attention`), or None.
- mid: fusion groups that keep semantics (`rules.fusion_candidates`). Per matmul class how many
  of the pointwise ops after it join its epilogue; residual add + layer norm as one kernel;
  connected chains of pointwise ops as one kernel; and for attention under a causal or scGPT
  mask a mask-aware kernel that skips the blocks its mask zeroes (`skip_masked`).
- graph: how the rest of the graph runs, eager or compiled by inductor around the plan's
  kernels (then inductor's own kernels, `rules.inductor_groups`, join the plan as fusion
  groups, so they are priced), and on a GPU whether the call is captured as a CUDA graph (no
  host launch per kernel). Whole-model `torch.compile` is a point of the space: every other
  choice eager, the rest by inductor.
- high: architecture what-ifs, priced but never applied: `autotune.whatif`.

Sites with the same content hash form a class and share one decision (a tuner tunes each
distinct workload once). Each class exposes a `Param`: a name, the legal choices as frozen
values (`choices[0]` is what eager does: None, 0 or False) and what the choice is about, which
priors read. Labels (`Param.label`) exist only at the edges: Optuna's storage, prompts,
reports. A full assignment of values maps to a `Plan` of frozen decisions (`Space.plan_from`);
groups that overlap merge into one kernel when that is legal (`rules.merge_problem`), else the
assignment is illegal and `plan_from` raises ValueError.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Union

from costmodel.hardware import HardwareProfile
from costmodel.ir import rules
from costmodel.ir.diagram import Diagram
from costmodel.ir.plan import RESTS, Fuse, KernelConfig, Plan, Runtime, Tile, check_fusable

Choice = Union[None, bool, int, str, KernelConfig]  # a config, a fusion depth, a flag or a runtime
LIBRARY = "library"  # the label of None: the vendor library's own kernel


def tile_label(c: KernelConfig) -> str:
    return f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} k{c.split_k}"


def attention_label(c: KernelConfig) -> str:
    kind = "flash-skip" if c.skip_masked else "flash"
    return f"{kind} {c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}"


@dataclass(frozen=True)
class MatmulClass:
    """Matmuls with the same work and the same epilogue chain, tuned together."""

    key: str  # content hash of the matmul plus its longest legal epilogue
    sites: tuple[tuple[str, tuple[str, ...]], ...]  # (matmul vertex, its epilogue chain)
    gemm: tuple[int, int, int, int]  # (batch, M, N, K)
    dtype: str
    epilogue_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Param:
    """One decision of the space: a name, the legal choices (frozen values; `choices[0]` is
    what eager does), the level, how many sites share it, and what it is about (for priors and
    reports). `kind` says what a choice is: "epilogue" (ops fused, an int), "fuse" (a bool),
    "tile" or "attention" (a KernelConfig, or None for the library's kernel), "rest" (eager or
    inductor), "cuda_graph" (a bool)."""

    name: str
    level: str  # "low", "mid" or "graph"
    kind: str
    choices: tuple[Choice, ...]
    sites: int
    about: str  # the kernel in words: ops, shapes, dtype
    info: Mapping = field(default_factory=dict, compare=False, hash=False)  # shapes, mask

    def label(self, value: Choice) -> str:
        """The value as text (Optuna's storage, prompts, reports)."""
        if value is None:
            return LIBRARY
        if isinstance(value, KernelConfig):
            return attention_label(value) if self.kind == "attention" else tile_label(value)
        if isinstance(value, str):
            return value
        return str(int(value))

    @cached_property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label(c) for c in self.choices)

    def value(self, label: str) -> Choice:
        """The choice a label names; ValueError for one that is not a legal choice."""
        try:
            return self.choices[self.labels.index(label)]
        except ValueError:
            raise ValueError(f"{label!r} is not a legal choice for {self.name}; choose from "
                             f"{list(self.labels)[:6]}...") from None


def _describe(diagram: Diagram, names: tuple[str, ...]) -> str:
    parts = []
    for n in names:
        v = diagram.vertex[n]
        shapes = ",".join("x".join(map(str, s)) for s in v.input_shapes[:2])
        mask = f" mask={v.mask_kind}" if v.kind == "attention" else ""
        parts.append(f"{v.kind}({shapes})->{'x'.join(map(str, v.output_shapes[0]))} {v.dtype}{mask}")
    return " ; ".join(parts)


@dataclass(frozen=True)
class _Rule:
    """How a param's value becomes decisions: per site (anchor vertex, candidate members), a
    fusion group or a config."""

    param: Param
    sites: tuple


@dataclass(frozen=True)
class Space:
    diagram: Diagram
    target: HardwareProfile

    @cached_property
    def candidates(self) -> tuple[rules.Candidate, ...]:
        return rules.fusion_candidates(self.diagram)

    @cached_property
    def classes(self) -> tuple[MatmulClass, ...]:
        epilogues: dict[str, int] = {}  # matmul -> its longest legal epilogue
        for c in self.candidates:
            if c.kind.startswith("epilogue"):
                epilogues[c.anchor] = max(epilogues.get(c.anchor, 0), len(c.vertices) - 1)
        groups: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for v in self.diagram.vertices:
            if v.kind != "matmul":
                continue
            chain = rules.epilogue_chain(self.diagram, v.name)[:epilogues.get(v.name, 0)]
            key = self.diagram.subdiagram((v.name, *chain)).hash
            groups.setdefault(key, []).append((v.name, chain))
        out = []
        for key, sites in groups.items():
            first = self.diagram.vertex[sites[0][0]]
            out.append(MatmulClass(key, tuple(sites), first.gemm_shape(), first.dtype,
                                   tuple(self.diagram.vertex[n].kind for n in sites[0][1])))
        return tuple(out)

    @cached_property
    def tiles(self) -> dict[str, tuple[KernelConfig, ...]]:
        """Legal tile configs per dtype present among the matmuls."""
        return {c.dtype: rules.legal_tiles(self.target, c.dtype) for c in self.classes}

    @cached_property
    def _rules(self) -> tuple[_Rule, ...]:
        d = self.diagram
        out: list[_Rule] = []
        for i, cls in enumerate(self.classes):
            depth = len(cls.sites[0][1])
            about = _describe(d, (cls.sites[0][0], *cls.sites[0][1]))
            info = {"gemm": cls.gemm, "dtype": cls.dtype, "epilogue": cls.epilogue_kinds}
            if depth:
                out.append(_Rule(Param(f"mm{i}.fuse", "mid", "epilogue", tuple(range(depth + 1)),
                                       len(cls.sites), about,
                                       {**info, "meaning": "pointwise ops fused into the epilogue"}),
                                 cls.sites))
            tiles = self.tiles.get(cls.dtype, ())
            if tiles:
                out.append(_Rule(Param(f"mm{i}.tile", "low", "tile", (None, *tiles), len(cls.sites),
                                       about, {**info, "meaning": "BLOCK_MxBLOCK_NxBLOCK_K warps "
                                                                  "stages split-K"}),
                                 tuple((m, ()) for m, _ in cls.sites)))
        for j, sites in enumerate(self._classes_of(self._attention_sites()).values()):
            v = d.vertex[sites[0][0]]
            if v.mask_kind not in rules.FLASH_MASKS:  # a custom mask: only the library's kernel
                continue
            skip = v.mask_kind in rules.SKIPPABLE_MASKS
            configs = rules.legal_attention(self.target, v.dtype, v.input_shapes[0][-1], False)
            if skip:
                configs += rules.legal_attention(self.target, v.dtype, v.input_shapes[0][-1], True)
            if not configs:
                continue
            out.append(_Rule(Param(f"at{j}.kernel", "mid" if skip else "low", "attention",
                                   (None, *configs), len(sites), _describe(d, (v.name,)),
                                   {"q": v.input_shapes[0], "k": v.input_shapes[1],
                                    "dtype": v.dtype, "mask": v.mask_kind, "density": v.mask_density,
                                    "meaning": "library, or flash/flash-skip BLOCK_MxBLOCK_N warps stages"}),
                             tuple(sites)))
        for prefix, kind, what in (("ln", "residual-norm", "residual add + layer norm as one kernel"),
                                   ("ew", "pointwise", "chain of pointwise ops as one kernel")):
            found = [(c.anchor, c.vertices) for c in self.candidates if c.kind == kind]
            for k, sites in enumerate(self._classes_of(found).values()):
                out.append(_Rule(Param(f"{prefix}{k}.fuse", "mid", "fuse", (False, True), len(sites),
                                       _describe(d, sites[0][1]), {"group": kind, "meaning": what}),
                                 tuple(sites)))
        out.append(_Rule(Param("rt.rest", "graph", "rest", RESTS, 1, "the ops no other decision takes",
                               {"meaning": "eager op by op, or compiled by inductor around the plan's kernels"}), ()))
        if self.target.kind == "gpu":
            out.append(_Rule(Param("rt.cuda_graph", "graph", "cuda_graph", (False, True), 1, "the whole call",
                                   {"meaning": "captured once as a CUDA graph and replayed"}), ()))
        return tuple(out)

    def _classes_of(self, sites: list[tuple[str, tuple[str, ...]]]) -> dict[str, list]:
        out: dict[str, list] = {}
        for anchor, members in sites:
            out.setdefault(self.diagram.subdiagram(members).hash, []).append((anchor, members))
        return out

    def _attention_sites(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(v.name, (v.name,)) for v in self.diagram.vertices if v.kind == "attention"]

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """Every decision of the space, low and mid level, in a stable order."""
        return tuple(r.param for r in self._rules)

    @cached_property
    def param(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    @cached_property
    def compile_points(self) -> tuple[dict[str, Choice], ...]:
        """Whole-model torch.compile as assignments: the rest by inductor, every other choice
        eager; then the same replayed as a CUDA graph where the target runs them."""
        points: list[dict[str, Choice]] = [{"rt.rest": "inductor"}]
        if "rt.cuda_graph" in self.param:
            points.append({"rt.rest": "inductor", "rt.cuda_graph": True})
        return tuple(points)

    def groups(self, assignment: Mapping[str, Choice]) -> list[tuple[str, ...]]:
        """The fusion groups an assignment asks for, one per site, before merging: each is a
        fusion candidate of the rule book."""
        out = []
        for r in self._rules:
            value = assignment.get(r.param.name, r.param.choices[0])
            if r.param.kind in ("epilogue", "fuse") and value:
                depth = value if r.param.kind == "epilogue" else None
                out += [(anchor, *members[:depth]) if depth is not None else tuple(members)
                        for anchor, members in r.sites]
        return out

    def plan_from(self, assignment: Mapping[str, Choice]) -> Plan:
        """The plan for an assignment of values to params (a missing param takes choices[0]).
        Raises ValueError for an unknown param or value, or an illegal combination."""
        for name, value in assignment.items():
            if name not in self.param:
                raise ValueError(f"no parameter {name!r} in this space")
            if value not in self.param[name].choices or isinstance(value, bool) != isinstance(
                    self.param[name].choices[-1], bool):
                raise ValueError(f"{value!r} is not a legal choice for {name}; choose from "
                                 f"{list(self.param[name].labels)[:6]}...")
        configs: list[tuple[str, KernelConfig]] = []
        for r in self._rules:
            value = assignment.get(r.param.name, r.param.choices[0])
            if r.param.kind in ("tile", "attention") and value is not None:
                configs += [(anchor, value) for anchor, _ in r.sites]
        groups = self._merge(self.groups(assignment))
        runtime = Runtime(assignment.get("rt.rest", "eager"), assignment.get("rt.cuda_graph", False))
        if runtime.rest == "inductor":
            groups += rules.inductor_groups(self.diagram, {n for g in groups for n in g})
        decisions: list[Fuse | Tile | Runtime] = [Fuse(g) for g in groups]
        decisions += [Tile(v, c) for v, c in configs]
        if runtime != Runtime():
            decisions.append(runtime)
        return Plan(tuple(decisions))

    def plan_from_labels(self, labels: Mapping[str, str]) -> Plan:
        """`plan_from` for an assignment of labels (Optuna's storage, an LLM's answer)."""
        unknown = set(labels) - set(self.param)
        if unknown:
            raise ValueError(f"no parameter {sorted(unknown)[0]!r} in this space")
        return self.plan_from({k: self.param[k].value(v) for k, v in labels.items()})

    def _merge(self, groups: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Overlapping groups merged into one kernel; ValueError where that kernel is illegal."""
        merged: list[set[str]] = []
        for g in groups:
            overlapping = [m for m in merged if m & set(g)]
            union = set(g).union(*overlapping)
            merged = [m for m in merged if not m & set(g)] + [union]
        order = {v.name: i for i, v in enumerate(self.diagram.vertices)}
        out = []
        for m in merged:
            members = tuple(sorted(m, key=order.__getitem__))
            problem = rules.merge_problem(self.diagram.vertex[n].kind for n in members)
            if problem:
                raise ValueError(f"group {members} {problem}")
            check_fusable(self.diagram, members)
            out.append(members)
        return out

    def plan(self, choices: dict[str, tuple[int, KernelConfig | None]]) -> Plan:
        """A plan from per-matmul-class choices: class key -> (epilogue ops fused, tile or None)."""
        assignment: dict[str, Choice] = {}
        for i, cls in enumerate(self.classes):
            depth, tile = choices.get(cls.key, (0, None))
            if depth:
                assignment[f"mm{i}.fuse"] = depth
            if tile is not None:
                assignment[f"mm{i}.tile"] = tile
        return self.plan_from(assignment)

    def check(self, plan: Plan) -> None:
        """Raise ValueError if any decision of `plan` is illegal on this diagram and target."""
        for d in plan.decisions:
            if isinstance(d, Fuse):
                check_fusable(self.diagram, d.vertices)
                continue
            if isinstance(d, Runtime):
                if d.cuda_graph and self.target.kind != "gpu":
                    raise ValueError(f"{self.target.name} runs no CUDA graphs")
                continue
            if self.target.kind != "gpu":
                raise ValueError(f"{self.target.name} takes no tile configs")
            v = self.diagram.vertex[d.vertex]
            legal = rules.legal_attention(self.target, v.dtype, v.input_shapes[0][-1],
                                          d.config.skip_masked) \
                if v.kind == "attention" else rules.legal_tiles(self.target, v.dtype)
            if d.config not in legal:
                raise ValueError(f"{d.config} is not legal on {self.target.name}")
            if d.config.skip_masked and v.mask_kind not in rules.SKIPPABLE_MASKS:
                raise ValueError(f"{d.vertex} has mask {v.mask_kind!r}: no blocks to skip")
        plan.kernels(self.diagram)
