"""The rewrite space on three levels, per target.

- low: kernel parameters. Per matmul class a tile config (BLOCK_M/N/K, warps, stages, split-K)
  from the list legal on the target, or "library" (the vendor library's own choice, as eager
  PyTorch runs it); per attention class a flash-style kernel's block sizes, or "library".
- mid: fusion groups that keep semantics. Per matmul class how many of the pointwise ops after
  it join its epilogue; residual add + layer norm as one kernel; connected chains of pointwise
  ops as one kernel; and for attention under a causal or scGPT mask a mask-aware kernel that
  skips the blocks its mask zeroes ("flash-skip").
- high: architecture what-ifs, priced but never applied: `autotune.whatif`.

Sites with the same content hash form a class and share one decision (a tuner tunes each
distinct workload once). Each class exposes `Param`s: a name, the legal choices as labels
(`choices[0]` is what eager does) and what the choice is about, which priors read. A full
assignment of labels maps to a `Plan` of frozen decisions (`Space.plan_from`); groups that
overlap merge into one kernel when that is legal (one matmul or attention at most, no layer norm
in a matmul's epilogue), else the assignment is illegal and `plan_from` raises ValueError.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from costmodel.diagram import Diagram
from costmodel.hardware import HardwareProfile
from costmodel.plan import (
    EPILOGUE_KINDS,
    Fuse,
    KernelConfig,
    Plan,
    Tile,
    check_fusable,
    compute_readers,
    epilogue_chain,
)

BLOCKS = (32, 64, 128, 256)
BLOCK_K = (32, 64)
WARPS = (4, 8)
STAGES = (2, 3, 4)
SPLIT_K = (1, 2, 4)
MAX_ACCUMULATORS_PER_THREAD = 128  # fp32 accumulators a thread can hold without spilling
ATTENTION_BLOCKS_M = (64, 128)
ATTENTION_BLOCKS_N = (32, 64, 128)
ATTENTION_STAGES = (1, 2, 3)
SKIPPABLE_MASKS = ("causal", "scgpt")  # masks with whole blocks of zeros a kernel can skip
LIBRARY = "library"
ANCHOR_KINDS = ("matmul", "conv", "attention")  # at most one per kernel


@dataclass(frozen=True)
class MatmulClass:
    """Matmuls with the same work and the same epilogue chain, tuned together."""

    key: str  # content hash of the matmul plus its full epilogue chain
    sites: tuple[tuple[str, tuple[str, ...]], ...]  # (matmul vertex, its epilogue chain)
    gemm: tuple[int, int, int, int]  # (batch, M, N, K)
    dtype: str
    epilogue_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Param:
    """One decision of the space: a name, the legal choices (labels; `choices[0]` is what eager
    does), the level, how many sites share it, and what it is about (for priors and reports)."""

    name: str
    level: str  # "low" or "mid"
    choices: tuple[str, ...]
    sites: int
    about: str  # the kernel in words: ops, shapes, dtype
    info: Mapping = field(default_factory=dict, compare=False, hash=False)  # kind, shapes, mask


def tile_label(c: KernelConfig) -> str:
    return f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} k{c.split_k}"


def attention_label(c: KernelConfig) -> str:
    kind = "flash-skip" if c.skip_masked else "flash"
    return f"{kind} {c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}"


def legal_tiles(hw: HardwareProfile, dtype: str) -> tuple[KernelConfig, ...]:
    """Tile configs that launch on `hw`: shared memory of all pipeline stages within the SM's,
    threads within the SM's limit, accumulators per thread within the register budget."""
    if hw.kind != "gpu":
        return ()
    element = 4 if dtype in ("fp32", "tf32") else 2
    out = []
    for bm, bn, bk, warps, stages, split in itertools.product(BLOCKS, BLOCKS, BLOCK_K, WARPS,
                                                              STAGES, SPLIT_K):
        c = KernelConfig(bm, bn, bk, warps, stages, split)
        if _fits(c, hw, element):
            out.append(c)
    return tuple(out)


def legal_attention(hw: HardwareProfile, dtype: str, head_dim: int,
                    skip: bool) -> tuple[KernelConfig, ...]:
    """Flash-style attention configs that launch on `hw` for this head dimension."""
    if hw.kind != "gpu":
        return ()
    element = 4 if dtype in ("fp32", "tf32") else 2
    out = []
    for bm, bn, warps, stages in itertools.product(ATTENTION_BLOCKS_M, ATTENTION_BLOCKS_N, WARPS,
                                                   ATTENTION_STAGES):
        c = KernelConfig(bm, bn, head_dim, warps, stages, 1, skip)
        if _fits(c, hw, element):
            out.append(c)
    return tuple(out)


def _fits(c: KernelConfig, hw: HardwareProfile, element: int) -> bool:
    smem_limit = hw.shared_memory_per_unit or 48 * 1024
    threads_limit = hw.max_threads_per_unit or 1024
    return (c.smem_bytes(element) <= smem_limit and c.num_warps * 32 <= min(threads_limit, 1024)
            and c.block_m * c.block_n / (c.num_warps * 32) <= MAX_ACCUMULATORS_PER_THREAD)


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
    """How a param's chosen label becomes decisions: per site, a fusion group or a config."""

    param: Param
    values: Mapping  # label -> per-site value: a fusion depth, a bool, or a KernelConfig
    sites: tuple  # per site: (anchor vertex, candidate group members)
    kind: str  # "epilogue", "tile", "attention", "fuse"


@dataclass(frozen=True)
class Space:
    diagram: Diagram
    target: HardwareProfile

    @cached_property
    def classes(self) -> tuple[MatmulClass, ...]:
        groups: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for v in self.diagram.vertices:
            if v.kind != "matmul":
                continue
            chain = epilogue_chain(self.diagram, v.name)
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
        return {c.dtype: legal_tiles(self.target, c.dtype) for c in self.classes}

    @cached_property
    def _rules(self) -> tuple[_Rule, ...]:
        d = self.diagram
        rules: list[_Rule] = []
        for i, cls in enumerate(self.classes):
            depth = len(cls.sites[0][1])
            about = _describe(d, (cls.sites[0][0], *cls.sites[0][1]))
            info = {"kind": "matmul", "gemm": cls.gemm, "dtype": cls.dtype,
                    "epilogue": cls.epilogue_kinds}
            if depth:
                labels = tuple(str(k) for k in range(depth + 1))
                rules.append(_Rule(Param(f"mm{i}.fuse", "mid", labels, len(cls.sites), about,
                                         {**info, "meaning": "pointwise ops fused into the epilogue"}),
                                   {lb: int(lb) for lb in labels}, cls.sites, "epilogue"))
            tiles = self.tiles.get(cls.dtype, ())
            if tiles:
                values = {LIBRARY: None, **{tile_label(c): c for c in tiles}}
                rules.append(_Rule(Param(f"mm{i}.tile", "low", tuple(values), len(cls.sites), about,
                                         {**info, "meaning": "BLOCK_MxBLOCK_NxBLOCK_K warps stages split-K"}),
                                   values, tuple((m, ()) for m, _ in cls.sites), "tile"))
        for j, (key, sites) in enumerate(self._classes_of(self._attention_sites()).items()):
            v = d.vertex[sites[0][0]]
            skip = v.mask_kind in SKIPPABLE_MASKS
            configs = legal_attention(self.target, v.dtype, v.input_shapes[0][-1], False)
            if skip:
                configs += legal_attention(self.target, v.dtype, v.input_shapes[0][-1], True)
            if not configs:
                continue
            values = {LIBRARY: None, **{attention_label(c): c for c in configs}}
            rules.append(_Rule(Param(f"at{j}.kernel", "low" if not skip else "mid", tuple(values),
                                     len(sites), _describe(d, (v.name,)),
                                     {"kind": "attention", "q": v.input_shapes[0],
                                      "k": v.input_shapes[1], "dtype": v.dtype,
                                      "mask": v.mask_kind, "density": v.mask_density,
                                      "meaning": "library, or flash/flash-skip BLOCK_MxBLOCK_N warps stages"}),
                               values, sites, "attention"))
        for prefix, found, what in (("ln", self._norm_sites(), "residual add + layer norm as one kernel"),
                                    ("ew", self._pointwise_sites(), "chain of pointwise ops as one kernel")):
            for k, (key, sites) in enumerate(self._classes_of(found).items()):
                rules.append(_Rule(Param(f"{prefix}{k}.fuse", "mid", ("0", "1"), len(sites),
                                         _describe(d, sites[0][1]),
                                         {"kind": prefix, "meaning": what}),
                                   {"0": False, "1": True}, sites, "fuse"))
        return tuple(rules)

    def _classes_of(self, sites: list[tuple[str, tuple[str, ...]]]) -> dict[str, list]:
        out: dict[str, list] = {}
        for anchor, members in sites:
            out.setdefault(self.diagram.subdiagram(members).hash, []).append((anchor, members))
        return out

    def _attention_sites(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(v.name, (v.name,)) for v in self.diagram.vertices if v.kind == "attention"]

    def _norm_sites(self) -> list[tuple[str, tuple[str, ...]]]:
        """Layer norms whose input comes straight from an add (the residual)."""
        d, out = self.diagram, []
        producer = {o: v.name for v in d.vertices for o in v.outputs}
        for v in d.vertices:
            if v.kind != "layer_norm":
                continue
            src = producer.get(v.inputs[0])
            while src is not None and d.vertex[src].is_free:
                src = producer.get(d.vertex[src].inputs[0]) if d.vertex[src].inputs else None
            if src is not None and d.vertex[src].kind == "add":
                out.append((v.name, (src, v.name)))
        return out

    def _pointwise_sites(self) -> list[tuple[str, tuple[str, ...]]]:
        """Connected groups (two or more) of pointwise ops of one size, each reading another's
        output: one kernel instead of one per op (GPT-2's tanh GELU is eight)."""
        d = self.diagram
        pointwise = {v.name for v in d.vertices if v.kind in EPILOGUE_KINDS}
        numel = {n: math.prod(d.vertex[n].output_shapes[0]) for n in pointwise}
        parent = {n: n for n in pointwise}

        def root(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for n in pointwise:
            for r in compute_readers(d, d.vertex[n].outputs[0]):
                if r in pointwise and numel[r] == numel[n]:
                    parent[root(r)] = root(n)
        groups: dict[str, list[str]] = {}
        for v in d.vertices:
            if v.name in pointwise:
                groups.setdefault(root(v.name), []).append(v.name)
        out = []
        for members in groups.values():
            if len(members) < 2:
                continue
            try:
                check_fusable(d, tuple(members))
            except ValueError:
                continue
            out.append((members[0], tuple(members)))
        return out

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """Every decision of the space, low and mid level, in a stable order."""
        return tuple(r.param for r in self._rules)

    def plan_from(self, assignment: Mapping[str, str]) -> Plan:
        """The plan for an assignment of labels to params (a missing param takes choices[0]).
        Raises ValueError for an unknown param or label, or an illegal combination."""
        rules = {r.param.name: r for r in self._rules}
        for name, label in assignment.items():
            if name not in rules:
                raise ValueError(f"no parameter {name!r} in this space")
            if label not in rules[name].values:
                raise ValueError(f"{label!r} is not a legal choice for {name}; "
                                 f"choose from {list(rules[name].param.choices)[:6]}...")
        groups: list[tuple[str, ...]] = []
        configs: list[tuple[str, KernelConfig]] = []
        for r in self._rules:
            value = r.values[assignment.get(r.param.name, r.param.choices[0])]
            for anchor, members in r.sites:
                if r.kind == "epilogue" and value:
                    groups.append((anchor, *members[:value]))
                elif r.kind == "fuse" and value:
                    groups.append(tuple(members))
                elif r.kind in ("tile", "attention") and value is not None:
                    configs.append((anchor, value))
        decisions: list[Fuse | Tile] = [Fuse(g) for g in self._merge(groups)]
        decisions += [Tile(v, c) for v, c in configs]
        return Plan(tuple(decisions))

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
            kinds = [self.diagram.vertex[n].kind for n in members]
            if sum(k in ANCHOR_KINDS for k in kinds) > 1:
                raise ValueError(f"group {members} holds two matmuls or attentions")
            if "layer_norm" in kinds and any(k in ANCHOR_KINDS for k in kinds):
                raise ValueError(f"group {members} puts a layer norm in a matmul's epilogue")
            check_fusable(self.diagram, members)
            out.append(members)
        return out

    def plan(self, choices: dict[str, tuple[int, KernelConfig | None]]) -> Plan:
        """A plan from per-matmul-class choices: class key -> (epilogue ops fused, tile or None)."""
        assignment = {}
        for i, cls in enumerate(self.classes):
            depth, tile = choices.get(cls.key, (0, None))
            if depth:
                assignment[f"mm{i}.fuse"] = str(depth)
            if tile is not None:
                assignment[f"mm{i}.tile"] = tile_label(tile)
        return self.plan_from(assignment)

    def check(self, plan: Plan) -> None:
        """Raise ValueError if any decision of `plan` is illegal on this diagram and target."""
        for d in plan.decisions:
            if isinstance(d, Fuse):
                check_fusable(self.diagram, d.vertices)
                continue
            if self.target.kind != "gpu":
                raise ValueError(f"{self.target.name} takes no tile configs")
            v = self.diagram.vertex[d.vertex]
            legal = legal_attention(self.target, v.dtype, v.input_shapes[0][-1], d.config.skip_masked) \
                if v.kind == "attention" else legal_tiles(self.target, v.dtype)
            if d.config not in legal:
                raise ValueError(f"{d.config} is not legal on {self.target.name}")
            if d.config.skip_masked and v.mask_kind not in SKIPPABLE_MASKS:
                raise ValueError(f"{d.vertex} has mask {v.mask_kind!r}: no blocks to skip")
        plan.kernels(self.diagram)
