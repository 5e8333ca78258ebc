"""What is measured of a model: its kernels (sites) and the ways each can run (variants).

- every eager kernel (one compute op), once per distinct (subdiagram hash, config);
- every fusion candidate of the rule book (`rules.fusion_candidates`: a matmul and each prefix
  of its pointwise epilogue, residual add + layer norm, connected pointwise ops). Each is a
  `Diagram.subdiagram` of the group's vertices with the free views between them, as
  `Plan.kernels` builds it, so its hash is the one the autotuner prices; it is measured
  unfused (`{"fused": false, "compiler": "eager"}`: its ops one after another) and fused
  (`{"fused": true, "compiler": "inductor"}`: one torch.compile'd fx module);
- an attention whose explicit mask keeps everything or is causal also runs without the mask
  tensor (`"mask": "implicit"`: no mask, or is_causal), checked against the masked call;
- on a GPU also: Triton matmuls over the space's legal tiles (`rules.legal_tiles`), SDPA
  backends (flash, efficient, math where legal), inductor for layer norm and softmax, and
  inductor's max-autotune for fused groups holding a matmul.

Requests are ordered by usefulness: eager kernels first, then fused/unfused pairs, then other
compilers and backends, then tile sweeps (every matmul gets its first tile before any gets a
second: `tile_order` spreads the grid so the first few tiles differ in every parameter); within
each, by the roofline's estimate of the time the kernel's occurrences take.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from costmodel.data.schema import dumps
from costmodel.hardware import HardwareProfile
from costmodel.ir import rules
from costmodel.ir.diagram import Diagram, Subdiagram, Vertex
from costmodel.ir.plan import KernelConfig, check_fusable
from costmodel.measure.slicing import Program, Workload

TRITON_OPS = ("linear", "addmm", "mm", "bmm", "matmul")  # ATen ops the Triton matmul runs
SDPA_BACKENDS = ("flash", "efficient", "math")


@dataclass(frozen=True)
class Site:
    """A kernel of one diagram: its vertices (with the free views between members) and
    subdiagram. `group` is "eager" (one compute op) or the fusion candidate's kind
    (`rules.FUSION_KINDS`)."""

    vertices: tuple[str, ...]
    subdiagram: Subdiagram
    group: str = "eager"

    @property
    def fused(self) -> bool:
        return self.group != "eager"

    @property
    def label(self) -> str:
        """Its compute op kinds, joined: "matmul+gelu"."""
        return "+".join(k for k in self.subdiagram.kinds if k != "free")


def sites(diagram: Diagram, *, fusion: bool = True) -> list[Site]:
    """Every eager kernel, then (with `fusion`) every fusion candidate, as subdiagrams."""
    out = [Site((v.name,), diagram.subdiagram([v.name])) for v in diagram.vertices if not v.is_free]
    if fusion:
        for c in rules.fusion_candidates(diagram):
            group = check_fusable(diagram, c.vertices)
            out.append(Site(group, diagram.subdiagram(group), c.kind))
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

    @property
    def tile(self) -> KernelConfig | None:
        return KernelConfig.from_record(self.config)


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


def estimate_s(sub: Subdiagram, profile: HardwareProfile | None) -> float:
    """Seconds a kernel may take: the roofline's, or a rough figure where no profile says."""
    from costmodel.models.roofline import Roofline

    if profile is not None:
        try:
            return Roofline().kernel_seconds(sub, profile)
        except (ValueError, ArithmeticError):
            pass
    return sub.flops / 1e12 + (sub.bytes_read + sub.bytes_written) / 1e11 + 5e-6


def tile_order(tiles: Sequence[KernelConfig]) -> list[KernelConfig]:
    """`tiles` in a fixed spread order: each next tile the one farthest (in log2 of its sizes,
    warps, stages and split) from those already chosen, ties broken by a hash of the tile, so a
    budget that measures the first k tiles of every matmul sees k different shapes."""
    import math

    def point(c: KernelConfig) -> tuple[float, ...]:
        return (math.log2(c.block_m), math.log2(c.block_n), math.log2(c.block_k),
                math.log2(c.num_warps), float(c.num_stages), math.log2(c.split_k))

    def tiebreak(c: KernelConfig) -> str:
        return hashlib.blake2b(repr(c).encode(), digest_size=8).hexdigest()

    left = sorted(tiles, key=tiebreak)
    if not left:
        return []
    chosen = [left.pop(0)]
    nearest = {c: sum((a - b) ** 2 for a, b in zip(point(c), point(chosen[0]))) for c in left}
    while left:
        best = max(left, key=lambda c: (nearest[c], tiebreak(c)))
        left.remove(best)
        chosen.append(best)
        for c in left:
            nearest[c] = min(nearest[c], sum((a - b) ** 2 for a, b in zip(point(c), point(best))))
    return chosen


def implicit_mask_legal(v: Vertex) -> bool:
    """Whether an attention's explicit mask tensor says what SDPA can do without one: keep
    everything ("none"), or causal with as many queries as keys (SDPA's is_causal aligns the
    diagonal top-left; the capture's causal pattern is bottom-right, equal when square)."""
    if v.kind != "attention" or len(v.inputs) <= 3:
        return False
    q, k = v.input_shapes[0], v.input_shapes[1]
    return v.mask_kind == "none" or (v.mask_kind == "causal" and q[-2] == k[-2])


def triton_op(v: Vertex) -> bool:
    """Whether the Triton matmul can run this vertex's op as it was called."""
    base = v.op.split(".")[1] if v.op.count(".") >= 2 else ""
    attrs = dict(v.attrs)
    return base in TRITON_OPS and attrs.get("beta", 1) == 1 and attrs.get("alpha", 1) == 1


def sdpa_legal(backend: str, v: Vertex, dtype: str, explicit_mask: bool) -> bool:
    """Whether PyTorch's SDPA `backend` documents support for this attention: flash takes fp16
    or bf16, no explicit mask, head size a multiple of 8 up to 256; efficient takes a float
    mask; math takes anything."""
    head = v.input_shapes[0][-1]
    if backend == "auto":
        return True
    if backend == "flash":
        return dtype in ("fp16", "bf16") and not explicit_mask and head % 8 == 0 and head <= 256
    return backend in ("efficient", "math")


def eager_variants(site: Site, compilers: Sequence[str]) -> list[Variant]:
    """What every runner measures of a site: the eager kernel (or the group's ops one after
    another) and, for a group, inductor's one fused kernel (when `compilers` has inductor)."""
    eager = {"fused": False, "compiler": "eager"}
    if not site.fused:
        out = [Variant.of(eager, f"eager:{site.label}")]
        v = next(v for v in site.subdiagram.vertices if not v.is_free)
        if implicit_mask_legal(v):
            out.append(Variant.of({**eager, "sdpa_backend": "auto", "mask": "implicit"},
                                  "sdpa-auto:attention-implicit-mask", 2))
        return out
    tier = 2 if site.group == "epilogue-prefix" else 1
    out = [Variant.of(eager, f"eager:{site.label}", tier)]
    if "inductor" in compilers:
        out.append(Variant.of({"fused": True, "compiler": "inductor"}, f"inductor:{site.label}", tier))
    return out
