"""The rule book: what kernels may be formed and launched, read by the rewrite space, by
measurement and by the kernels themselves. One home for each rule:

- dtypes: the compute dtypes, their element sizes, the bytes of a tensor dtype;
- fusion candidates: which groups of vertices one kernel may run (a matmul and its pointwise
  epilogue, residual add + layer norm, connected pointwise ops), and which merged groups are
  legal (at most one anchor, no layer norm in a matmul's epilogue); the kernels inductor makes
  of what a plan leaves it (`inductor_groups`);
- kernel legality: the tile grid the space offers and the limits a tile must fit on a target
  (shared memory of all pipeline stages, threads per block, fp32 accumulators per thread);
- masks: which masks leave whole blocks to skip, and how many blocks a mask-aware kernel
  computes (counted exactly for causal and scGPT masks);
- numerics: how far a kernel's output may stray from the reference, per dtype.

Nothing here imports torch or a cost model: these are facts about kernels, not prices. The
dtype facts are defined beside the IR types (`diagram`) and read from here.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from costmodel.ir import diagram
from costmodel.ir.diagram import Diagram, Vertex
from costmodel.ir.plan import KernelConfig, check_fusable

# ---------------------------------------------------------------------------------------------
# Dtypes

# Defined with the IR's types (a vertex's dtype is one of them), read here with every other rule.
COMPUTE_DTYPES = diagram.COMPUTE_DTYPES
element_bytes = diagram.element_bytes


# Allowed max |out - reference| per compute dtype: atol + rtol * max |reference|. Reordered
# reductions and fp32 epilogues drift more at low precision; TF32 keeps 10 mantissa bits.
TOLERANCE = {"fp32": (1e-3, 1e-4), "tf32": (2e-2, 1e-3), "fp16": (2e-2, 1e-3),
             "bf16": (6e-2, 1e-2)}


def allowed_error(dtype: str, scale: float) -> float:
    """The largest max |out - reference| accepted for outputs whose largest |reference| is
    `scale`, in `dtype` (an integer or unknown dtype gets fp32's)."""
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE["fp32"])
    return atol + rtol * scale


# ---------------------------------------------------------------------------------------------
# Fusion candidates

EPILOGUE_KINDS = ("add", "mul", "gelu", "activation", "elementwise")  # pointwise op kinds
MAX_EPILOGUE = 3  # pointwise ops a matmul epilogue may absorb
# The ATen ops a matmul epilogue absorbs (the Triton matmul runs each as a step), and the steps.
EPILOGUE_OPS = ("add", "sub", "rsub", "mul", "div", "relu", "leaky_relu", "gelu", "tanh",
                "sigmoid", "silu", "neg", "exp", "erf")
EPILOGUE_STEPS = ("add", "sub", "mul", "div", "relu", "leaky_relu", "gelu", "gelu_tanh", "tanh",
                  "sigmoid", "silu", "neg", "exp", "erf")
ANCHOR_KINDS = ("matmul", "conv", "attention")  # at most one per kernel
FUSION_KINDS = ("epilogue", "epilogue-prefix", "residual-norm", "pointwise")


@dataclass(frozen=True)
class Candidate:
    """A group of compute vertices one fused kernel may run. `anchor` is the vertex the group
    is named after (the matmul of an epilogue, the layer norm of a residual-norm, the first op
    of a pointwise chain); `vertices` are in diagram order, free views not included."""

    kind: str  # one of FUSION_KINDS
    anchor: str
    vertices: tuple[str, ...]


def compute_readers(diagram: Diagram, name: str) -> list[str]:
    """Non-free vertices reading tensor `name`, looking through free (view-like) vertices."""
    out: list[str] = []
    for c in diagram.consumers[name]:
        v = diagram.vertex[c]
        if v.is_free:
            for o in v.outputs:
                out.extend(compute_readers(diagram, o))
        else:
            out.append(c)
    return list(dict.fromkeys(out))


def compute_producer(diagram: Diagram, name: str) -> str | None:
    """The non-free vertex that writes tensor `name`, looking back through free vertices."""
    src = diagram.propagator[name].producer
    while src is not None and diagram.vertex[src].is_free:
        v = diagram.vertex[src]
        src = diagram.propagator[v.inputs[0]].producer if v.inputs else None
    return src


def is_pointwise(v: Vertex) -> bool:
    """A floating-point pointwise op (what an epilogue or a pointwise kernel may absorb)."""
    return v.kind in EPILOGUE_KINDS and v.dtype in COMPUTE_DTYPES


def op_base(v: Vertex) -> str:
    """The ATen base name of a vertex's op: "aten.add.Tensor" -> "add"."""
    parts = v.op.split(".")
    return parts[1] if len(parts) >= 3 else parts[-1]


def epilogue_chain(diagram: Diagram, matmul: str) -> tuple[str, ...]:
    """Pointwise ops that follow `matmul` one by one, each the only reader of the one before
    (through free views), with the matmul's output size, each one the epilogue absorbs
    (`EPILOGUE_OPS`): what its epilogue can run."""
    chain: list[str] = []
    current = diagram.vertex[matmul]
    numel = math.prod(current.output_shapes[0])
    while len(chain) < MAX_EPILOGUE:
        readers = compute_readers(diagram, current.outputs[0])
        if len(readers) != 1:
            break
        nxt = diagram.vertex[readers[0]]
        if not is_pointwise(nxt) or op_base(nxt) not in EPILOGUE_OPS \
                or math.prod(nxt.output_shapes[0]) != numel:
            break
        chain.append(nxt.name)
        current = nxt
    return tuple(chain)


def _residual_norms(diagram: Diagram) -> list[Candidate]:
    """A layer norm whose input an add writes (through free views), of the same size."""
    out = []
    for v in diagram.vertices:
        if v.kind != "layer_norm" or not v.inputs:
            continue
        src = compute_producer(diagram, v.inputs[0])
        if src is not None and diagram.vertex[src].kind == "add" and \
                math.prod(diagram.vertex[src].output_shapes[0]) == math.prod(v.input_shapes[0]):
            out.append(Candidate("residual-norm", v.name, (src, v.name)))
    return out


def _pointwise_chains(diagram: Diagram) -> list[Candidate]:
    """Connected groups (two or more) of pointwise ops of one size, each reading another's
    output: one kernel instead of one per op (GPT-2's tanh GELU is eight)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for v in diagram.vertices:
        if not is_pointwise(v):
            continue
        parent.setdefault(v.name, v.name)
        size = math.prod(v.output_shapes[0])
        for r in compute_readers(diagram, v.outputs[0]):
            rv = diagram.vertex[r]
            if is_pointwise(rv) and math.prod(rv.output_shapes[0]) == size:
                parent.setdefault(r, r)
                parent[root(r)] = root(v.name)
    comps: dict[str, list[str]] = {}
    for v in diagram.vertices:
        if v.name in parent:
            comps.setdefault(root(v.name), []).append(v.name)
    return [Candidate("pointwise", c[0], tuple(c)) for c in comps.values() if len(c) > 1]


def fusion_candidates(diagram: Diagram) -> tuple[Candidate, ...]:
    """Every group one fused kernel can run, legal on its own (`check_fusable`): each matmul
    with every prefix of its epilogue chain ("epilogue" for the whole chain, "epilogue-prefix"
    for a shorter one), residual add + layer norm, connected pointwise chains. In diagram order
    of their anchors; a group appears once, under the first kind that finds it."""
    found: dict[tuple[str, ...], Candidate] = {}
    for v in diagram.vertices:
        if v.kind != "matmul":
            continue
        chain = epilogue_chain(diagram, v.name)
        for depth in range(1, len(chain) + 1):
            kind = "epilogue" if depth == len(chain) else "epilogue-prefix"
            found.setdefault((v.name, *chain[:depth]), Candidate(kind, v.name, (v.name, *chain[:depth])))
    for c in (*_residual_norms(diagram), *_pointwise_chains(diagram)):
        found.setdefault(c.vertices, c)
    legal = []
    for c in found.values():
        try:
            check_fusable(diagram, c.vertices)
        except ValueError:
            continue
        legal.append(c)
    return tuple(legal)


def merge_problem(kinds: Iterable[str]) -> str:
    """Why one kernel may not hold vertices of these kinds ("" when it may): at most one
    matmul, convolution or attention, and no layer norm in a matmul's epilogue."""
    kinds = list(kinds)
    if sum(k in ANCHOR_KINDS for k in kinds) > 1:
        return "holds two matmuls or attentions"
    if "layer_norm" in kinds and any(k in ANCHOR_KINDS for k in kinds):
        return "puts a layer norm in a matmul's epilogue"
    return ""


REDUCTION_KINDS = ("layer_norm", "softmax", "reduction")  # ops that reduce along a dimension


def inductor_groups(diagram: Diagram, taken: Iterable[str] = ()) -> list[tuple[str, ...]]:
    """The kernels inductor makes of the compute vertices a plan leaves it (not in `taken`),
    as groups of two or more (a vertex alone stays its own kernel). The model of inductor:
    matmuls, convolutions and attention stay library calls (`ANCHOR_KINDS`, inductor's extern
    kernels at its default settings); every other op joins the kernel of an op it reads when
    that kernel holds at most one reduction with it (inductor fuses pointwise prologues and
    epilogues into one reduction) and no path leaves the kernel and comes back (cheaply
    proven: every other op it reads comes before the kernel's first op in diagram order)."""
    taken = set(taken)
    order = {v.name: i for i, v in enumerate(diagram.vertices)}
    group_of: dict[str, int] = {}
    groups: list[list[str]] = []
    for v in diagram.vertices:
        if v.is_free or v.name in taken or v.kind in ANCHOR_KINDS:
            continue
        producers = [p for p in dict.fromkeys(compute_producer(diagram, i) for i in v.inputs) if p]
        joined = None
        for g in sorted({group_of[p] for p in producers if p in group_of}, key=lambda g: -order[groups[g][-1]]):
            first = order[groups[g][0]]
            reductions = sum(diagram.vertex[n].kind in REDUCTION_KINDS for n in groups[g])
            if reductions + (v.kind in REDUCTION_KINDS) > 1:
                continue
            if all(group_of.get(p) == g or order[p] < first for p in producers):
                joined = g
                break
        if joined is None:
            joined = len(groups)
            groups.append([])
        groups[joined].append(v.name)
        group_of[v.name] = joined
    return [tuple(g) for g in groups if len(g) > 1]


# ---------------------------------------------------------------------------------------------
# Kernel legality: the tile grid and what a target can launch

BLOCKS = (32, 64, 128, 256)  # BLOCK_M and BLOCK_N of matmul tiles
BLOCK_K = (32, 64)
WARPS = (4, 8)
STAGES = (2, 3, 4)
# Split-K: each of `split_k` programs reduces a slice of K into fp32 partial sums that a second
# pass adds (and applies the epilogue to): pays off when the tiles alone fill too few SMs.
SPLIT_K = (1, 2, 4)
ATTENTION_BLOCKS_M = (64, 128)
ATTENTION_BLOCKS_N = (32, 64, 128)
ATTENTION_STAGES = (1, 2, 3)
MAX_ACCUMULATORS_PER_THREAD = 128  # fp32 accumulators a thread holds without spilling
MAX_THREADS_PER_BLOCK = 1024  # CUDA's limit for every compute capability since 2.0
DEFAULT_SHARED_MEMORY = 48 * 1024  # bytes a block may use on any CUDA GPU without opting in
DEFAULT_THREADS_PER_UNIT = 2048  # resident threads per SM where a profile does not say


class Device(Protocol):
    """What legality reads of a target: a `HardwareProfile`, or `Limits`."""

    name: str
    kind: str
    shared_memory_per_unit: int | None
    max_threads_per_unit: int | None


@dataclass(frozen=True)
class Limits:
    """What a device allows a block, for a device no profile describes (a GPU read through
    torch.cuda): the fields of `HardwareProfile` that `launch_problem` reads."""

    name: str
    shared_memory_per_unit: int
    max_threads_per_unit: int
    kind: str = "gpu"


def smem_bytes(config: KernelConfig, dtype: str) -> int:
    """Shared memory the software pipeline holds: one A and one B tile per stage."""
    return config.num_stages * (config.block_m + config.block_n) * config.block_k * element_bytes(dtype)


def launch_problem(config: KernelConfig, hw: Device, dtype: str) -> str:
    """Why a tiled kernel with `config` cannot launch on `hw` in `dtype` ("" when it can)."""
    if hw.kind != "gpu":
        return f"{hw.name} is a {hw.kind}: it takes no tile configs"
    smem = smem_bytes(config, dtype)
    limit = hw.shared_memory_per_unit or DEFAULT_SHARED_MEMORY
    if smem > limit:
        return f"needs {smem} bytes of shared memory, over the {limit} a block may use"
    threads = config.num_warps * 32
    if threads > min(MAX_THREADS_PER_BLOCK, hw.max_threads_per_unit or DEFAULT_THREADS_PER_UNIT):
        return f"{threads} threads per block, over the limit"
    if config.block_m * config.block_n / threads > MAX_ACCUMULATORS_PER_THREAD:
        return f"{config.block_m}x{config.block_n} accumulators over {threads} threads spill registers"
    return ""


def blocks_per_unit(config: KernelConfig, hw: Device, dtype: str) -> int:
    """Resident blocks per SM under the thread and shared-memory limits; 0 when it cannot
    launch (`launch_problem`)."""
    if launch_problem(config, hw, dtype):
        return 0
    threads = config.num_warps * 32
    by_threads = (hw.max_threads_per_unit or DEFAULT_THREADS_PER_UNIT) // threads
    smem = smem_bytes(config, dtype)
    by_smem = (hw.shared_memory_per_unit or DEFAULT_SHARED_MEMORY) // smem if smem else by_threads
    return max(0, min(by_threads, by_smem, 32))


def legal_tiles(hw: Device, dtype: str) -> tuple[KernelConfig, ...]:
    """The matmul tiles the space offers on `hw` for `dtype`: the grid, less what cannot
    launch there. Empty off GPUs."""
    if hw.kind != "gpu":
        return ()
    grid = itertools.product(BLOCKS, BLOCKS, BLOCK_K, WARPS, STAGES, SPLIT_K)
    return tuple(c for c in (KernelConfig(bm, bn, bk, w, s, k) for bm, bn, bk, w, s, k in grid)
                 if not launch_problem(c, hw, dtype))


def legal_attention(hw: Device, dtype: str, head_dim: int, skip: bool
                    ) -> tuple[KernelConfig, ...]:
    """Flash-style attention configs that launch on `hw` for this head dimension (BLOCK_K is
    the head dimension, padded up to a power of two as the kernel loads it)."""
    if hw.kind != "gpu":
        return ()
    out = []
    for bm, bn, warps, stages in itertools.product(ATTENTION_BLOCKS_M, ATTENTION_BLOCKS_N, WARPS,
                                                   ATTENTION_STAGES):
        c = KernelConfig(bm, bn, head_dim, warps, stages, 1, skip)
        if not launch_problem(c, hw, dtype):
            out.append(c)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Masks

SKIPPABLE_MASKS = ("causal", "scgpt")  # masks with whole blocks of zeros a kernel can skip
FLASH_MASKS = ("none", "causal", "padding", "scgpt")  # masks the flash kernel applies itself


def scgpt_context(sq: int, sk: int, density: float) -> int:
    """Keys every query sees under an scGPT mask (the cell token and the known genes), from the
    mask's density: rows see `context` keys, query rows also themselves, so
    density * sq * sk = sq * context + (sq - context)."""
    if sk <= 1:
        return sk
    return max(0, min(sk, round((density * sq * sk - sq) / (sk - 1))))


def block_kept(kind: str | None, i: int, j: int, bm: int, bn: int, sq: int, sk: int,
               context: int = 0) -> bool:
    """Whether query block i x key block j holds any pair the mask keeps (queries aligned to
    the last keys for causal; `context` keys open to all for scGPT, and the diagonal)."""
    q0, q1 = i * bm, min((i + 1) * bm, sq) - 1
    k0, k1 = j * bn, min((j + 1) * bn, sk) - 1
    if kind == "causal":
        return k0 <= q1 + (sk - sq)
    if kind == "scgpt":  # a context key, or the diagonal of a query past the context
        return k0 < context or max(q0, k0, context) <= min(q1, k1)
    return True


def mask_block_fraction(v: Vertex, bm: int, bn: int) -> float:
    """Fraction of (query block, key block) pairs a mask-skipping attention kernel computes
    for attention vertex `v` with BLOCK_M x BLOCK_N blocks: exact for causal and scGPT masks
    (every block with a kept pair is computed), 1 for masks with no blocks to skip."""
    *_, sq, _ = v.input_shapes[0]
    sk = v.input_shapes[1][-2]
    if v.mask_kind not in SKIPPABLE_MASKS:
        return 1.0
    context = scgpt_context(sq, sk, v.mask_density or 1.0) if v.mask_kind == "scgpt" else 0
    nq, nk = math.ceil(sq / bm), math.ceil(sk / bn)
    if v.mask_kind == "causal":  # closed form: block row i keeps the key blocks up to its diagonal
        kept = sum(min(nk, (min((i + 1) * bm, sq) - 1 + sk - sq) // bn + 1) for i in range(nq))
    else:
        kept = sum(block_kept("scgpt", i, j, bm, bn, sq, sk, context)
                   for i in range(nq) for j in range(nk))
    return kept / (nq * nk)
