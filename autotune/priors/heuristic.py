"""The heuristic prior: documented rules a kernel engineer would start from."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from autotune.priors.base import Prior
from autotune.space import Choice, Param, Space
from costmodel.hardware import HardwareProfile
from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig

K_PER_SPLIT = 512  # split-K only while each split still reduces over this many elements
LONG_SEQUENCE = 512  # query length from which attention takes 128-row blocks
MATMUL_STAGES = 3  # software-pipeline depth preferred for matmul tiles
ATTENTION_STAGES = 2


class HeuristicPrior(Prior):
    """Rules a kernel engineer would start from. Each reads only a param's choices and `info`
    and the target's profile; nothing is specific to a model.

    Fusion (every target):
    1. every matmul takes its whole epilogue chain (the deepest legal `mmI.fuse`);
    2. every chain of pointwise ops runs as one kernel (`ewI.fuse` = True) where legal;
    3. residual add + layer norm runs as one kernel (`lnI.fuse` = True) where that does not
       conflict with a matmul epilogue. Both orders are suggested: matmul epilogues first
       (a conflicting layer norm stays apart) and layer norms first (a conflicting epilogue
       shrinks to its deepest legal depth); the search keeps whichever prices better.
    GPU kernels:
    4. matmul tiles by the wave rule: for each legal BLOCK_M x BLOCK_N (x split-K), blocks =
       ceil(M/BM) * ceil(N/BN) * batch * split; the useful fraction of issued work is the
       padding M*N / (padded M * padded N) times the wave fill blocks / (waves * compute
       units). The tile with the highest fraction wins, ties (within about 1%) to the larger
       tile (more reuse).
       Split-K > 1 only when the tiles alone fill less than one wave and K / split >=
       `K_PER_SPLIT`. Then 8 warps from 128x128 up, else 4; `MATMUL_STAGES` stages (or the
       nearest legal); BLOCK_K 32 for 4-byte dtypes, 64 for 2-byte ones.
    5. attention: flash-skip where the mask lets whole blocks be skipped (a skipping config
       is legal) and the keys span more than one 64-key block; else flash where its blocks
       (batch * heads * 64-query blocks) fill at least one wave of the compute units; else
       the library's kernel. 128x64 blocks from `LONG_SEQUENCE` queries up, else 64x64; 8
       warps for 128-row blocks, else 4; the nearest legal config where that one is not.
    Variants, for `n` > 1: the other fusion order, the next-ranked tiles, the other attention
    block size, and the fusion alone with the library's kernels.
    """

    name = "heuristic"

    def _candidates(self, space: Space, n: int) -> Iterator[dict[str, Choice]]:
        hw = space.target
        fused = {"epilogue first": _fusion(space, ("epilogue", "pointwise", "residual-norm")),
                 "norm first": _fusion(space, ("residual-norm", "pointwise", "epilogue"))}
        tiles = {p.name: rank_tiles(p, hw) for p in space.params if p.kind == "tile"}
        attention = {p.name: attention_picks(p, hw) for p in space.params if p.kind == "attention"}

        def kernels(rank: int, attention_pick: int | None) -> dict[str, Choice]:
            out: dict[str, Choice] = {name: ranked[min(rank, len(ranked) - 1)]
                                      for name, ranked in tiles.items() if ranked}
            if attention_pick is not None:
                out.update({name: picks[min(attention_pick, len(picks) - 1)]
                            for name, picks in attention.items() if picks})
            return out

        # (fusion order, tile rank or None for the library's, attention pick or None)
        for order, rank, pick in (("epilogue first", 0, 0), ("norm first", 0, 0),
                                  ("epilogue first", None, None), ("norm first", None, None),
                                  ("epilogue first", 1, 1), ("norm first", 1, 1),
                                  ("epilogue first", 0, None), ("epilogue first", 2, 0),
                                  ("norm first", 2, 1), ("epilogue first", 3, 0)):
            yield {**fused[order], **(kernels(rank, pick) if rank is not None else {})}


def _group(p: Param) -> str:
    return "epilogue" if p.kind == "epilogue" else p.info.get("group", "")


def _fusion(space: Space, order: Sequence[str]) -> dict[str, Choice]:
    """Greedy: the fusion params of each group kind in `order` take their deepest choice that
    keeps the assignment legal given those already taken."""
    out: dict[str, Choice] = {}
    for kind in order:
        for p in space.params:
            if p.kind not in ("epilogue", "fuse") or _group(p) != kind:
                continue
            for value in reversed(p.choices[1:]):
                try:
                    space.plan_from({**out, p.name: value})
                except ValueError:
                    continue
                out[p.name] = value
                break
    return out


def rank_tiles(p: Param, hw: HardwareProfile) -> list[KernelConfig]:
    """The matmul's legal tiles, best first by the wave rule (one per BM x BN x split-K, with
    the preferred warps, stages and BLOCK_K)."""
    batch, m, n, k = p.info["gemm"]
    element = rules.element_bytes(p.info.get("dtype", "fp32"))
    units = hw.compute_units
    best: dict[tuple[int, int, int], tuple[tuple, str, KernelConfig]] = {}
    for c in p.choices:
        if not isinstance(c, KernelConfig):
            continue
        bm, bn, bk, warps, stages, split = (c.block_m, c.block_n, c.block_k, c.num_warps,
                                            c.num_stages, c.split_k)
        tiles = math.ceil(m / bm) * math.ceil(n / bn) * batch
        if split > 1 and (tiles >= units or k // split < K_PER_SPLIT):
            continue
        blocks = tiles * split
        padding = m * n / (math.ceil(m / bm) * bm * math.ceil(n / bn) * bn)
        fill = blocks / (math.ceil(blocks / units) * units)
        detail = (-abs(warps - (8 if bm * bn >= 128 * 128 else 4)),
                  -abs(stages - MATMUL_STAGES), -abs(bk - (32 if element == 4 else 64)))
        # Fractions within about 1% of each other tie (log buckets), so the larger tile wins.
        key = (round(math.log(padding * fill), 2), -split, bm * bn, bm, detail)
        entry = (key, p.label(c), c)
        if (bm, bn, split) not in best or key > best[(bm, bn, split)][0]:
            best[(bm, bn, split)] = entry
    return [c for *_, c in sorted(best.values(), key=lambda e: e[:2], reverse=True)]


def attention_picks(p: Param, hw: HardwareProfile) -> list[KernelConfig]:
    """Flash-style configs by the attention rule: the preferred one, then the other block size;
    none where a plain flash kernel would not fill one wave."""
    *lead, seq, _ = p.info["q"]
    keys = p.info["k"][-2]
    configs = [c for c in p.choices if isinstance(c, KernelConfig)]
    # One key block has nothing to skip.
    skip = keys > 64 and any(c.skip_masked for c in configs)
    kept = [c for c in configs if c.skip_masked == skip]
    if not kept or not skip and math.prod(lead) * math.ceil(seq / 64) < hw.compute_units:
        return []
    out: list[KernelConfig] = []
    for bm, bn in ((128, 64), (64, 64)) if seq >= LONG_SEQUENCE else ((64, 64), (128, 64)):
        warps = 8 if bm >= 128 else 4

        def distance(c: KernelConfig, bm: int = bm, bn: int = bn, warps: int = warps) -> tuple:
            return ((c.block_m != bm) + (c.block_n != bn), abs(c.block_m - bm) + abs(c.block_n - bn),
                    c.num_warps != warps, abs(c.num_stages - ATTENTION_STAGES), p.label(c))

        pick = min(kept, key=distance)
        if pick not in out:
            out.append(pick)
    return out
