"""A kernel (subdiagram + kernel config + hardware) as a `torch_geometric.data.Data` graph.

Nodes are the kernel's vertices and the tensors it reads and writes at its boundary, so a
single-op kernel is still a graph (inputs -> op -> output). Edges follow the data: boundary input
-> reading vertex, vertex -> vertex for tensors kept on chip, vertex -> boundary output. Graph-level
tensors (one row per graph, so they stack under batching): `hw` (hardware descriptors), `config`
(kernel parameters) and `roofline` (the analytical terms, log10 seconds). Sizes enter as log2.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import math

import torch
from torch_geometric.data import Data

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
CONFIG_DIM = 8
ROOFLINE_DIM = 4
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


def config_vector(config: KernelConfig | None) -> list[float]:
    if config is None:
        return [0.0] * CONFIG_DIM
    return [1.0, math.log2(config.block_m), math.log2(config.block_n), math.log2(config.block_k),
            math.log2(config.num_warps), float(config.num_stages), math.log2(config.split_k),
            float(config.skip_masked)]


def to_data(sub: Subdiagram, hw: HardwareProfile, config: KernelConfig | None = None) -> Data:
    """The kernel as a PyG graph with x (N, NODE_DIM), edge_index (2, E), edge_attr (E, EDGE_DIM),
    and graph attributes hw (1, H), config (1, CONFIG_DIM), roofline (1, ROOFLINE_DIM)."""
    x: list[list[float]] = []
    index: dict[tuple[str, str], int] = {}
    for v in sub.vertices:
        index[("v", v.name)] = len(x)
        x.append(_onehot("vertex", NODE_TYPES) + _onehot(v.kind, OP_KINDS) + _onehot(v.dtype, DTYPES)
                 + [_log2(v.flops), _log2(v.bytes_read), _log2(v.bytes_written)]
                 + _shape(v.output_shapes[0]) + _onehot(v.mask_kind, MASK_KINDS)
                 + [v.mask_density or 0.0] + [0.0] * len(ROLES))
    for p in sub.inputs:
        index[("in", p.name)] = len(x)
        x.append(_tensor_node(p, "input"))
    for p in sub.outputs:
        index[("out", p.name)] = len(x)
        x.append(_tensor_node(p, "output"))

    src, dst, attr = [], [], []
    producer = {o: v.name for v in sub.vertices for o in v.outputs}
    out_bytes = {p.name: p.bytes for p in sub.outputs}
    for v in sub.vertices:
        for pos, (name, nbytes) in enumerate(zip(v.inputs, v.read_bytes)):
            origin = ("v", producer[name]) if name in producer else ("in", name)
            src.append(index[origin])
            dst.append(index[("v", v.name)])
            attr.append([_log2(nbytes)] + [1.0 if min(pos, 3) == i else 0.0 for i in range(4)])
        for name in v.outputs:
            if name in out_bytes:
                src.append(index[("v", v.name)])
                dst.append(index[("out", name)])
                attr.append([_log2(out_bytes[name]), 1.0, 0.0, 0.0, 0.0])

    compute, memory = Roofline().terms(sub, hw, config)
    launch = hw.launch_overhead_s
    roofline = [math.log10(compute + 1e-12), math.log10(memory + 1e-12), math.log10(launch + 1e-12),
                math.log10(max(compute, memory) + launch)]
    return Data(
        x=torch.tensor(x, dtype=torch.float32),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, EDGE_DIM),
        hw=torch.tensor([list(hw.descriptor().values())], dtype=torch.float32),
        config=torch.tensor([config_vector(config)], dtype=torch.float32),
        roofline=torch.tensor([roofline], dtype=torch.float32),
        kernel_hash=sub.hash,
    )


def roofline_ln_ms(data: Data) -> torch.Tensor:
    """ln(milliseconds) of the roofline estimate carried in `data.roofline[:, 3]` (log10 seconds)."""
    return data.roofline[:, 3] * LN10 + math.log(1e3)


@functools.cache
def code_hash() -> str:
    """A hash of the code that turns a kernel into its graph: this module, the roofline terms
    and the rule book they read, and the hardware descriptors. A checkpoint records it; a model
    loaded under another hash was trained on features that meant something else."""
    import sys

    parts = [inspect.getsource(sys.modules[__name__]), inspect.getsource(roofline),
             inspect.getsource(rules), inspect.getsource(profile.HardwareProfile.descriptor),
             inspect.getsource(profile._put)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
