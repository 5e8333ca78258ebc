"""A kernel (subdiagram + kernel config + hardware) as a `torch_geometric.data.Data` graph.

Nodes are the kernel's vertices and the tensors it reads and writes at its boundary, so a
single-op kernel is still a graph (inputs -> op -> output). Edges follow the data: boundary input
-> reading vertex, vertex -> vertex for tensors kept on chip, vertex -> boundary output. Graph-level
tensors (one row per graph, so they stack under batching): `hw` (hardware descriptors), `config`
(kernel parameters), `roofline` (the analytical terms, log10 seconds) and `fill` (how the kernel
fills the machine: work, waves and bytes per compute unit and per L2). Sizes enter as log2.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import math
import textwrap
from collections.abc import Sequence

import torch
from torch_geometric.data import Batch, Data

from costmodel.hardware import profile
from costmodel.hardware import HardwareProfile
from costmodel.ir import rules
from costmodel.ir.diagram import MASK_KINDS, OP_KINDS, Propagator, Subdiagram
from costmodel.ir.plan import KernelConfig
from costmodel.models import roofline
from costmodel.models.roofline import Roofline

NODE_TYPES = ("vertex", "input", "output")
# Compute dtypes of vertices, then the tensor dtypes of boundary tensors.
DTYPES = (*rules.COMPUTE_DTYPES, "float32", "float16", "bfloat16", "int64", "bool")
ROLES = ("input", "parameter", "buffer", "constant", "activation")
MAX_RANK = 4
NODE_DIM = (len(NODE_TYPES) + len(OP_KINDS) + len(DTYPES) + 3 + MAX_RANK + 1 + len(MASK_KINDS)
            + 1 + len(ROLES))
EDGE_DIM = 1 + 4  # log2 bytes, argument position one-hot (0, 1, 2, 3+)
KERNEL_CONFIG_DIM = 8  # a Triton-style KernelConfig
XLA_CONFIG_DIM = 16  # an XLA tile or layout configuration (TpuGraphs)
CONFIG_DIM = KERNEL_CONFIG_DIM + XLA_CONFIG_DIM
ROOFLINE_DIM = 4
FILL_DIM = 4  # `machine_fill`
TILE = 128 * 128  # output elements of one tile of a typical GPU kernel (for counting waves)
LN10 = math.log(10.0)


def _onehot(value: str | None, choices: tuple[str, ...]) -> list[float]:
    return [1.0 if value == c else 0.0 for c in choices]


def _log2(x: float) -> float:
    return math.log2(1.0 + x)


def _shape(shape: tuple[int, ...]) -> list[float]:
    dims = [_log2(d) for d in shape[-MAX_RANK:]]
    return [0.0] * (MAX_RANK - len(dims)) + dims + [float(len(shape))]


def _tensor_node(p: Propagator, node_type: str) -> list[float]:
    return (_onehot(node_type, NODE_TYPES) + [0.0] * len(OP_KINDS) + _onehot(p.dtype, DTYPES)
            + [0.0, _log2(p.bytes), 0.0] + _shape(p.shape) + [0.0] * len(MASK_KINDS) + [0.0]
            + _onehot(p.role, ROLES))


def config_vector(config: KernelConfig | None, xla: dict | None = None) -> list[float]:
    """A kernel config (zeros: the library's own choice), then an XLA config (`xla_vector`)."""
    if config is None:
        kernel = [0.0] * KERNEL_CONFIG_DIM
    else:
        kernel = [1.0, math.log2(config.block_m), math.log2(config.block_n), math.log2(config.block_k),
                  math.log2(config.num_warps), float(config.num_stages), math.log2(config.split_k),
                  float(config.skip_masked)]
    return kernel + xla_vector(xla)


def _bounds(values: list) -> list[float]:
    """log2(1 + product), the count, log2(1 + largest) of a list of tile bounds."""
    values = [int(v) for v in values or []]
    return [_log2(math.prod(values)) if values else 0.0, float(len(values)),
            _log2(max(values)) if values else 0.0]


def xla_vector(config: dict | None) -> list[float]:
    """An XLA compiler configuration of a TpuGraphs program as XLA_CONFIG_DIM numbers (zeros
    when there is none):
    - a tile config (the op-tuning collection): output, kernel, input and iteration bounds,
      each as log2(1 + product), count and log2(1 + largest);
    - a layout config: how many nodes it lays out (log2), the fraction of their layouts that
      are the default (minor_to_major descending), that keep the last dimension minor, and
      that are left to the compiler (empty)."""
    out = [0.0] * XLA_CONFIG_DIM
    if not config or config.get("collection") not in ("tile", "layout"):
        return out
    if config["collection"] == "tile":
        values = [1.0, 0.0]
        for key in ("output_bounds", "kernel_bounds", "input_bounds", "iteration_bounds"):
            values += _bounds(config.get(key))
    else:
        layouts = [m for per_node in config.get("nodes", {}).values() for m in per_node]
        n = max(len(layouts), 1)
        default = sum(bool(m) and list(m) == sorted(m, reverse=True) for m in layouts) / n
        last_minor = sum(bool(m) and m[0] == max(m) for m in layouts) / n
        empty = sum(not m for m in layouts) / n
        values = [0.0, 1.0, _log2(len(config.get("nodes", {}))), default, last_minor, empty]
    out[:len(values)] = values
    return out


def graph_key(sub: Subdiagram) -> tuple:
    """Equal for kernels whose graphs (`to_data`) are equal: the content hash, plus
    what it leaves out, which boundary tensors are one tensor read twice (the hash labels a
    boundary tensor by shape and dtype, not by identity: add(a, a) and add(a, b) share it) and
    which members' results leave the kernel."""
    producer = {o: (k, j) for k, v in enumerate(sub.vertices) for j, o in enumerate(v.outputs)}
    boundary: dict[str, int] = {}
    reads = tuple(tuple(producer.get(n) or boundary.setdefault(n, len(boundary)) for n in v.inputs)
                  for v in sub.vertices)
    leaving = {p.name for p in sub.outputs}
    return sub.hash, reads, tuple(tuple(o in leaving for o in v.outputs) for v in sub.vertices)


@functools.lru_cache(maxsize=64)
def _descriptor(hw: HardwareProfile) -> tuple[float, ...]:
    """`hw.descriptor()`'s values, computed once per profile (a profile is frozen)."""
    return tuple(hw.descriptor().values())


def node_features(sub: Subdiagram) -> list[list[float]]:
    """The rows of `to_data`'s x: the kernel's vertices, then its boundary inputs and outputs."""
    x = [_onehot("vertex", NODE_TYPES) + _onehot(v.kind, OP_KINDS) + _onehot(v.dtype, DTYPES)
         + [_log2(v.flops), _log2(v.bytes_read), _log2(v.bytes_written)]
         + _shape(v.output_shapes[0]) + _onehot(v.mask_kind, MASK_KINDS)
         + [v.mask_density or 0.0] + [0.0] * len(ROLES) for v in sub.vertices]
    return (x + [_tensor_node(p, "input") for p in sub.inputs]
            + [_tensor_node(p, "output") for p in sub.outputs])


def machine_fill(sub: Subdiagram, hw: HardwareProfile) -> list[float]:
    """How the kernel fills the machine, in units a new target interpolates within: log2 of
    its biggest vertex's FLOPs per compute unit; log2 of its waves, the 128 x 128 tiles of its
    biggest output per compute unit; how much of the last wave is idle, a plain ratio (tiles
    launched in whole waves over the tiles there are, at most 64); and log2 of the bytes its
    vertices move over the L2 size (1 byte where a profile gives none). The roofline sees a
    kernel's size against peaks; these see it against the machine's width, where small and
    odd-shaped kernels lose their speed."""
    units = math.log2(hw.compute_units)
    flops = max((_log2(v.flops) for v in sub.vertices), default=0.0)
    out = max((_log2(p.bytes) for p in sub.outputs), default=0.0)
    waves = out - 2 - math.log2(TILE) - units  # 4-byte elements
    tiles = 2.0 ** waves
    moved = math.log2(sum(v.bytes_read + v.bytes_written for v in sub.vertices) + 2 * len(sub.vertices))
    return [flops - units, waves, min(math.ceil(tiles) / tiles, 64.0) if tiles > 0 else 1.0,
            moved - math.log2(hw.l2_bytes or 1)]


def graph_features(sub: Subdiagram, hw: HardwareProfile, config: KernelConfig | None = None,
                   xla: dict | None = None, *, fill: bool = True
                   ) -> tuple[tuple[float, ...], list[float], list[float], list[float]]:
    """`to_data`'s graph-level rows: hw (the descriptors), config, roofline (log10 seconds), fill
    (`machine_fill`; empty with `fill` off, for a model that does not read it)."""
    compute, memory = Roofline().terms(sub, hw, config)
    launch = hw.launch_overhead_s
    roofline = [math.log10(compute + 1e-12), math.log10(memory + 1e-12), math.log10(launch + 1e-12),
                math.log10(max(compute, memory) + launch)]
    return _descriptor(hw), config_vector(config, xla), roofline, machine_fill(sub, hw) if fill else []


def edges(sub: Subdiagram) -> tuple[list[int], list[int], list[list[float]]]:
    """`to_data`'s edges as (sources, destinations, attribute rows), nodes numbered as
    `node_features` orders them: boundary input -> reading vertex and vertex -> vertex (log2 of
    the bytes read, the argument position one-hot), vertex -> boundary output (log2 of its bytes,
    position 0)."""
    index = {v.name: i for i, v in enumerate(sub.vertices)}
    first_input = len(sub.vertices)
    inputs = {p.name: i for i, p in enumerate(sub.inputs, first_input)}
    outputs = {p.name: (i, p.bytes) for i, p in enumerate(sub.outputs, first_input + len(sub.inputs))}
    producer = {o: index[v.name] for v in sub.vertices for o in v.outputs}
    src, dst, attr = [], [], []
    for i, v in enumerate(sub.vertices):
        for pos, (name, nbytes) in enumerate(zip(v.inputs, v.read_bytes)):
            src.append(producer[name] if name in producer else inputs[name])
            dst.append(i)
            attr.append([_log2(nbytes)] + [1.0 if min(pos, 3) == k else 0.0 for k in range(4)])
        for name in v.outputs:
            if name in outputs:
                src.append(i)
                dst.append(outputs[name][0])
                attr.append([_log2(outputs[name][1]), 1.0, 0.0, 0.0, 0.0])
    return src, dst, attr


def to_data(sub: Subdiagram, hw: HardwareProfile, config: KernelConfig | None = None,
            xla: dict | None = None) -> Data:
    """The kernel as a PyG graph with x (N, NODE_DIM), edge_index (2, E), edge_attr (E, EDGE_DIM),
    and graph attributes hw (1, H), config (1, CONFIG_DIM: the kernel config, then `xla`, a
    TpuGraphs program's compiler config), roofline (1, ROOFLINE_DIM), fill (1, FILL_DIM)."""
    src, dst, attr = edges(sub)
    descriptor, config_row, roofline, fill = graph_features(sub, hw, config, xla)
    return Data(
        x=torch.tensor(node_features(sub), dtype=torch.float32),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, EDGE_DIM),
        hw=torch.tensor([descriptor], dtype=torch.float32),
        config=torch.tensor([config_row], dtype=torch.float32),
        roofline=torch.tensor([roofline], dtype=torch.float32),
        fill=torch.tensor([fill], dtype=torch.float32),
        kernel_hash=sub.hash,
    )


def to_batch(kernels: Sequence[tuple[Subdiagram, KernelConfig | None]], hw: HardwareProfile) -> Batch:
    """`Batch.from_data_list` of the (subdiagram, config) pairs' `to_data` graphs on `hw`, built
    from plain lists in one go: no graph or tensor per kernel (prediction's path; training reads
    cached graphs)."""
    x: list[list[float]] = []
    src: list[int] = []
    dst: list[int] = []
    attr: list[list[float]] = []
    graph: list[list] = [[], [], [], []]  # hw, config, roofline, fill
    ptr, counts = [0], []
    for sub, config in kernels:
        offset = len(x)
        x += node_features(sub)
        s, d, a = edges(sub)
        src += [offset + i for i in s]
        dst += [offset + i for i in d]
        attr += a
        for rows, row in zip(graph, graph_features(sub, hw, config)):
            rows.append(row)
        ptr.append(len(x))
        counts.append(len(x) - offset)
    return Batch(
        x=torch.tensor(x, dtype=torch.float32).reshape(-1, NODE_DIM),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, EDGE_DIM),
        hw=torch.tensor(graph[0], dtype=torch.float32).reshape(-1, len(_descriptor(hw))),
        config=torch.tensor(graph[1], dtype=torch.float32).reshape(-1, CONFIG_DIM),
        roofline=torch.tensor(graph[2], dtype=torch.float32).reshape(-1, ROOFLINE_DIM),
        fill=torch.tensor(graph[3], dtype=torch.float32).reshape(-1, FILL_DIM),
        kernel_hash=[sub.hash for sub, _ in kernels],
        batch=torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long)),
        ptr=torch.tensor(ptr, dtype=torch.long),
    )


# The hardware descriptors a learned model sees, by name (`HardwareProfile.descriptor` keys):
# "all"; "physical": peaks, bandwidth, ridge, units, caches, clock, power, and no flag that only
# one GPU has; "ratios": figures per unit and dimensionless ratios a new GPU interpolates within
# (`HardwareProfile.ratios`), with the ridge, shared memory, tensor-core generation and clock;
# "minimal": the kind and four dimensionless figures; "none": the kind alone (the roofline terms
# still carry the target's peaks and bandwidth).
PHYSICAL = ("is_cpu", "log10_peak_flops_fp32", "log10_vector_flops", "log10_memory_bytes",
            "log10_memory_bandwidth", "log10_ridge_flops_per_byte", "log10_compute_units",
            "log10_l2_bytes", "log10_shared_memory_per_unit", "boost_clock_ghz", "log10_tdp_watts")
RATIOS = ("is_gpu", "is_tpu", "is_cpu", "log10_ridge_flops_per_byte", "log10_shared_memory_per_unit",
          "tensor_core_generation", "boost_clock_ghz", "log10_fp32_flops_per_unit",
          "log10_bandwidth_per_unit", "log10_l2_bytes_per_unit", "log10_watts_per_fp32_tflops",
          "log10_watts_per_tb_s", "base_over_boost", "shared_int_fraction", "log10_tf32_over_fp32",
          "log10_fp16_over_fp32", "log10_bf16_over_fp32")
KINDS_ONLY = ("is_gpu", "is_tpu", "is_cpu")
MINIMAL = (*KINDS_ONLY, "log10_ridge_flops_per_byte", "base_over_boost", "shared_int_fraction",
           "log10_fp16_over_fp32")
HARDWARE = ("all", "physical", "ratios", "minimal", "none")


def hardware_columns(kind: str) -> tuple[int, ...]:
    """Indices of the descriptors a model of hardware `kind` (`HARDWARE`) sees."""
    from costmodel.hardware import load_profile

    keys = list(load_profile("a100").descriptor())
    if kind == "all":
        return tuple(range(len(keys)))
    named = {"physical": PHYSICAL, "ratios": RATIOS, "minimal": MINIMAL, "none": KINDS_ONLY}
    if kind in named:
        return tuple(keys.index(k) for k in named[kind])
    raise ValueError(f"unknown hardware features {kind!r}; valid: {', '.join(HARDWARE)}")


def sample_weights(y_ln_ms: torch.Tensor, kind: str) -> torch.Tensor:
    """Regression weights (mean 1): "none", or "time": (ms / median ms)^0.5, clipped to
    [0.05, 20], so a model's big kernels, which make its time, count for more."""
    if kind == "none":
        return torch.ones_like(y_ln_ms)
    if kind != "time":
        raise ValueError(f"unknown weight {kind!r}; valid: none, time")
    w = torch.exp(0.5 * (y_ln_ms - y_ln_ms.median())).clamp(0.05, 20.0)
    return w / w.mean()


def ln_ms(log10_s):
    """ln(milliseconds) from log10(seconds), the roofline rows' unit: for a tensor or an array."""
    return log10_s * LN10 + math.log(1e3)


def roofline_ln_ms(data: Data) -> torch.Tensor:
    """ln(milliseconds) of the roofline estimate carried in `data.roofline[:, 3]` (log10 seconds)."""
    return ln_ms(data.roofline[:, 3])


def syntax(source: str) -> str:
    """Python source as its syntax tree, docstrings left out: what the code computes, not how it
    is laid out or explained (a comment, a docstring or a line break moves no hash)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.cache
def code_hash() -> str:
    """A hash of the code that turns a kernel into its graph: this module, the roofline terms
    and the rule book they read, and the hardware descriptors, as syntax (`syntax`: editing a
    comment or a docstring keeps it). A checkpoint records it; a model loaded under another hash
    was trained on features that meant something else."""
    import sys

    parts = [sys.modules[__name__], roofline, rules, profile.HardwareProfile.descriptor, profile._put]
    return hashlib.sha256("\n".join(syntax(inspect.getsource(p)) for p in parts).encode()).hexdigest()[:12]
