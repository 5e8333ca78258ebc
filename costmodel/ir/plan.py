"""Plans: frozen, ordered decisions that turn a diagram into kernels.

A plan is a tuple of decisions. `Fuse` makes one kernel of several vertices; `Tile` sets the
kernel parameters of the kernel that holds a vertex; `Runtime` says how the rest of the graph
runs (op by op, or compiled by inductor around the plan's kernels) and whether the whole call is
captured as a CUDA graph (at most one `Runtime`; none: eager, no graph). Applying a plan to a
diagram gives its kernels: each a `Subdiagram` with a `KernelConfig` (None: the library's own
choice, as in eager PyTorch). The eager plan (no decisions) is one kernel per compute op, free ops folded away.
The autotuner searches plans; the cost model prices them; both share these values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.errors import UserError


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of a tiled kernel (Triton-style). Sizes in elements.

    For a matmul: BLOCK_M x BLOCK_N output tiles stepping BLOCK_K along the reduction. For an
    attention (a flash-style kernel): BLOCK_M queries against BLOCK_N keys at a time, BLOCK_K the
    head dimension; `skip_masked` skips the key blocks its mask zeroes entirely (causal, scGPT).
    """

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    split_k: int = 1
    skip_masked: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping) -> KernelConfig:
        """The config a dict of its fields describes (other keys, such as a recorded
        measurement's "compiler", are ignored). Raises ValueError for missing or bad fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            config = cls(**{k: fields[k] for k in names if k in fields})
        except TypeError as e:
            raise ValueError(f"not a kernel config: {dict(fields)} ({e})") from None
        for name in names:
            value = getattr(config, name)
            if name == "skip_masked":
                if not isinstance(value, bool):
                    raise ValueError(f"kernel config field skip_masked must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kernel config field {name} must be a positive integer, got {value!r}")
        return config

    @classmethod
    def from_record(cls, config: Mapping | str | None) -> KernelConfig | None:
        """The config a recorded kernel_config (a dict or its JSON) holds; None where it names
        no tile (the library's or a compiler's own choice)."""
        if isinstance(config, str):
            config = json.loads(config) if config else None
        if not isinstance(config, Mapping) or "block_m" not in config:
            return None
        try:
            return cls.from_dict(config)
        except ValueError:
            return None


@dataclass(frozen=True)
class Fuse:
    """Run `vertices` as one kernel; the first is the anchor (the matmul its epilogue joins)."""

    vertices: tuple[str, ...]


@dataclass(frozen=True)
class Tile:
    """Give the kernel holding `vertex` the launch parameters `config`."""

    vertex: str
    config: KernelConfig


RESTS = ("eager", "inductor")


@dataclass(frozen=True)
class Runtime:
    """How what the plan's kernels leave runs: `rest` "eager" (one ATen op after another) or
    "inductor" (the whole graph compiled around the plan's kernels; the kernels inductor makes
    are the plan's `Fuse` decisions too, so they are priced: `rules.inductor_groups`), and
    `cuda_graph`: the call captured once and replayed, no host launch per kernel."""

    rest: str = "eager"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.rest not in RESTS or not isinstance(self.cuda_graph, bool):
            raise ValueError(f"runtime: rest must be one of {', '.join(RESTS)} and cuda_graph true "
                             f"or false; got {self.rest!r}, {self.cuda_graph!r}")


Decision = Fuse | Tile | Runtime


@dataclass(frozen=True)
class Kernel:
    subdiagram: Subdiagram
    config: KernelConfig | None = None


def eager_partition(diagram: Diagram) -> tuple[Subdiagram, ...]:
    """One kernel per compute op; free (view-like) ops launch nothing and are folded away."""
    return tuple(diagram.subdiagram([v.name]) for v in diagram.vertices if not v.is_free)


def fusion_closure(diagram: Diagram, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` plus the free (view-like) vertices on paths between them, in diagram order."""
    members = set(names)
    for n in names:
        stack = [(c, (c,)) for o in diagram.vertex[n].outputs for c in diagram.consumers[o]]
        while stack:
            v, path = stack.pop()
            if v in members and len(path) > 1:
                members.update(path[:-1])
            if v in members or not diagram.vertex[v].is_free:
                continue
            stack.extend((c, (*path, c)) for o in diagram.vertex[v].outputs
                         for c in diagram.consumers[o])
    return tuple(v.name for v in diagram.vertices if v.name in members)


def check_fusable(diagram: Diagram, names: tuple[str, ...]) -> tuple[str, ...]:
    """The vertices of the kernel that fuses `names` (with the free vertices between them).
    Raises ValueError unless they are known compute vertices whose group is convex: no path
    leaves the group and comes back, which would make a cycle."""
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"a fusion group needs two or more distinct vertices; got {names}")
    for n in names:
        if n not in diagram.vertex:
            raise ValueError(f"no vertex {n!r} in diagram {diagram.name!r}")
        if diagram.vertex[n].is_free:
            raise ValueError(f"vertex {n!r} is free (view-like); fuse the compute vertices around it")
    group = fusion_closure(diagram, names)
    members = set(group)
    # Walk forward from the group's outputs through non-members; reaching a member is a cycle.
    frontier = [c for n in group for o in diagram.vertex[n].outputs
                for c in diagram.consumers[o] if c not in members]
    seen: set[str] = set()
    while frontier:
        v = frontier.pop()
        if v in seen:
            continue
        seen.add(v)
        for o in diagram.vertex[v].outputs:
            for c in diagram.consumers[o]:
                if c in members:
                    raise ValueError(f"fusing {names} would make a cycle through {v!r}")
                frontier.append(c)
    return group


@dataclass(frozen=True)
class Plan:
    """An ordered tuple of decisions. Hashable, so plans can be cached and compared."""

    decisions: tuple[Decision, ...] = ()

    @property
    def runtime(self) -> Runtime:
        found = [d for d in self.decisions if isinstance(d, Runtime)]
        if len(found) > 1:
            raise ValueError(f"a plan has at most one runtime decision; got {len(found)}")
        return found[0] if found else Runtime()

    def launches(self, kernels: int) -> int:
        """Kernel launches the host makes to run `kernels` kernels: none per kernel when the
        call replays a CUDA graph (the composition's per-launch cost is host time)."""
        return 0 if self.runtime.cuda_graph else kernels

    def kernels(self, diagram: Diagram) -> tuple[Kernel, ...]:
        """The plan applied to `diagram`, in the diagram's order. Raises ValueError if illegal."""
        self.runtime  # at most one
        group_of: dict[str, tuple[str, ...]] = {}
        for d in self.decisions:
            if isinstance(d, Fuse):
                group = check_fusable(diagram, d.vertices)
                for n in group:
                    if n in group_of:
                        raise ValueError(f"vertex {n!r} is in two fusion groups")
                    group_of[n] = group
        configs: dict[tuple[str, ...], KernelConfig] = {}
        for d in self.decisions:
            if isinstance(d, Tile):
                if d.vertex not in diagram.vertex:
                    raise ValueError(f"no vertex {d.vertex!r} in diagram {diagram.name!r}")
                configs[group_of.get(d.vertex, (d.vertex,))] = d.config
        out, done = [], set()
        for v in diagram.vertices:
            if v.is_free or v.name in done:
                continue
            group = group_of.get(v.name, (v.name,))
            done.update(group)
            out.append(Kernel(diagram.subdiagram(group), configs.get(group)))
        return tuple(out)

    def digest(self) -> str:
        """A stable content hash of the decisions (their order does not matter)."""
        items = sorted(json.dumps(d, sort_keys=True) for d in self.to_list())
        return hashlib.blake2b(json.dumps(items).encode(), digest_size=8).hexdigest()

    def to_list(self) -> list[dict]:
        out = []
        for d in self.decisions:
            if isinstance(d, Fuse):
                out.append({"fuse": list(d.vertices)})
            elif isinstance(d, Tile):
                out.append({"tile": d.vertex, "config": d.config.to_dict()})
            else:
                out.append({"runtime": {"rest": d.rest, "cuda_graph": d.cuda_graph}})
        return out

    @classmethod
    def from_list(cls, items: list[dict]) -> Plan:
        """Inverse of `to_list`. Raises ValueError naming the entry that is malformed."""
        if not isinstance(items, list):
            raise ValueError(f"decisions must be a list, got {type(items).__name__}")
        decisions: list[Decision] = []
        for item in items:
            if isinstance(item, dict) and "fuse" in item:
                names = item["fuse"]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError(f"decision {item!r}: 'fuse' must be a list of vertex names")
                decisions.append(Fuse(tuple(names)))
            elif isinstance(item, dict) and "tile" in item:
                if not isinstance(item["tile"], str) or not isinstance(item.get("config"), dict):
                    raise ValueError(f"decision {item!r}: 'tile' must name a vertex and "
                                     "'config' hold its kernel config")
                decisions.append(Tile(item["tile"], KernelConfig.from_dict(item["config"])))
            elif isinstance(item, dict) and "runtime" in item:
                fields = item["runtime"]
                if not isinstance(fields, dict) or set(fields) - {"rest", "cuda_graph"}:
                    raise ValueError(f"decision {item!r}: 'runtime' holds 'rest' and 'cuda_graph'")
                decisions.append(Runtime(**fields))
            else:
                raise ValueError(f"unknown decision {item!r}: expected a 'fuse', 'tile' or "
                                 "'runtime' entry")
        plan = cls(tuple(decisions))
        plan.runtime  # at most one
        return plan


def load_plan_file(path: str | Path) -> tuple[Plan, dict]:
    """Read a plan.json written by `autotune`: the plan and the whole document."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {str(path)!r} does not exist; use --plan eager or a plan.json "
                        "written by autotune")
    try:
        doc = json.loads(p.read_text())
        return Plan.from_list(doc["decisions"]), doc
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"plan file {str(path)!r} is not a valid plan: {e}") from None
