"""The first rewrite space: epilogue fusion into matmuls, and a tile config per matmul.

Matmuls are grouped into classes by the content hash of the matmul and its epilogue chain, so
the same projection in every layer shares one decision (as a tuner tunes each distinct workload
once). Per class the search chooses how many of the pointwise ops after the matmul fuse into it
(0 keeps eager), and, on GPUs, a tile config from the list legal on the target or "library" (the
vendor library's own choice, as eager PyTorch runs it).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

from costmodel.diagram import Diagram
from costmodel.hardware import HardwareProfile
from costmodel.plan import Fuse, KernelConfig, Plan, Tile, check_fusable, epilogue_chain

BLOCKS = (32, 64, 128, 256)
BLOCK_K = (32, 64)
WARPS = (4, 8)
STAGES = (2, 3, 4)
SPLIT_K = (1, 2, 4)
MAX_ACCUMULATORS_PER_THREAD = 128  # fp32 accumulators a thread can hold without spilling


@dataclass(frozen=True)
class MatmulClass:
    """Matmuls with the same work and the same epilogue chain, tuned together."""

    key: str  # content hash of the matmul plus its full epilogue chain
    sites: tuple[tuple[str, tuple[str, ...]], ...]  # (matmul vertex, its epilogue chain)
    gemm: tuple[int, int, int, int]  # (batch, M, N, K)
    dtype: str
    epilogue_kinds: tuple[str, ...]


def legal_tiles(hw: HardwareProfile, dtype: str) -> tuple[KernelConfig, ...]:
    """Tile configs that launch on `hw`: shared memory of all pipeline stages within the SM's,
    threads within the SM's limit, accumulators per thread within the register budget."""
    if hw.kind != "gpu":
        return ()
    element = 4 if dtype in ("fp32", "tf32") else 2
    smem_limit = hw.shared_memory_per_unit or 48 * 1024
    threads_limit = hw.max_threads_per_unit or 1024
    out = []
    for bm, bn, bk, warps, stages, split in itertools.product(BLOCKS, BLOCKS, BLOCK_K, WARPS,
                                                              STAGES, SPLIT_K):
        c = KernelConfig(bm, bn, bk, warps, stages, split)
        if c.smem_bytes(element) > smem_limit or warps * 32 > min(threads_limit, 1024):
            continue
        if bm * bn / (warps * 32) > MAX_ACCUMULATORS_PER_THREAD:
            continue
        out.append(c)
    return tuple(out)


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
            key = self.diagram.subdiagram((v.name, *chain)).hash if chain else \
                self.diagram.subdiagram((v.name,)).hash
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

    def plan(self, choices: dict[str, tuple[int, KernelConfig | None]]) -> Plan:
        """A plan from per-class choices: class key -> (epilogue ops fused, tile or None)."""
        decisions: list[Fuse | Tile] = []
        for cls in self.classes:
            depth, tile = choices.get(cls.key, (0, None))
            for matmul, chain in cls.sites:
                if depth:
                    decisions.append(Fuse((matmul, *chain[:depth])))
                if tile is not None:
                    decisions.append(Tile(matmul, tile))
        return Plan(tuple(decisions))

    def check(self, plan: Plan) -> None:
        """Raise ValueError if any decision of `plan` is illegal on this diagram and target."""
        for d in plan.decisions:
            if isinstance(d, Fuse):
                check_fusable(self.diagram, d.vertices)
            elif self.target.kind != "gpu":
                raise ValueError(f"{self.target.name} takes no tile configs")
            elif d.config not in legal_tiles(self.target, self.diagram.vertex[d.vertex].dtype):
                raise ValueError(f"{d.config} is not legal on {self.target.name}")
        plan.kernels(self.diagram)
