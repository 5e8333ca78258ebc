"""The public TpuGraphs release's `.npz` files (`npz/tile/xla/<split>/*.npz`,
`npz/layout/<source>/<search>/<split>/*.npz`), whose arrays the tpu_graphs README describes
("Dataset File Description")."""
from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from costmodel.data.importers.tpugraphs.xla import (
    CITATION, COMPUTE, CONV_KIND, DTYPES, HARDWARE, PARTIAL_READ, TUPLE, ZERO_FLOP_KINDS, Graph,
    diagram_meta, element_dtype, measured_ms, numel, op_kind)
from costmodel.data.schema import Provenance, dumps, measurement_row
from costmodel.errors import UserError
from costmodel.ir.diagram import Diagram, Propagator, Vertex
from costmodel.ir.rules import element_bytes

# node_opcode ids: tpu_graphs/process_data/xla/hlo_opcode.h (LEARNED_HLO_OPCODE_LIST; 97 and 101
# are tombstones, 0 is unknown).
_NPZ_OPCODES = dict(enumerate((
    "unknown abs add add-dependency after-all all-reduce all-to-all atan2 batch-norm-grad "
    "batch-norm-inference batch-norm-training bitcast bitcast-convert broadcast call ceil cholesky "
    "clamp collective-permute count-leading-zeros compare complex concatenate conditional constant "
    "convert convolution copy copy-done copy-start cosine custom-call divide domain dot "
    "dynamic-slice dynamic-update-slice exponential exponential-minus-one fft floor fusion gather "
    "get-dimension-size set-dimension-size get-tuple-element imag infeed iota is-finite log "
    "log-plus-one and not or xor map maximum minimum multiply negate outfeed pad parameter "
    "partition-id popcnt power real recv recv-done reduce reduce-precision reduce-window remainder "
    "replica-id reshape reverse rng rng-get-and-update-state rng-bit-generator round-nearest-afz "
    "rsqrt scatter select select-and-scatter send send-done shift-left shift-right-arithmetic "
    "shift-right-logical sign sine slice sort sqrt subtract tanh trace transpose triangular-solve "
    "tuple tuple-select while cbrt all-gather collective-permute-start collective-permute-done "
    "logistic dynamic-reshape all-reduce-start all-reduce-done reduce-scatter all-gather-start "
    "all-gather-done opt-barrier async-start async-update async-done round-nearest-even "
    "stochastic-convert tan").split()))
# node_feat[2:21] one-hot element type, in the README's order -> XLA PrimitiveType.
_NPZ_TYPES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 15, 18, 13, 14, 17)
_NPZ_FREE = ("bitcast", "get-tuple-element", "tuple", "while", "call", "conditional", "domain")
_NODE_FEATS = 140
_TILE_KEYS = ("node_feat", "node_opcode", "edge_index", "config_feat", "config_runtime",
              "config_runtime_normalizers")
_LAYOUT_KEYS = ("node_feat", "node_opcode", "edge_index", "node_config_ids", "node_config_feat",
                "config_runtime")


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _trim(values: Any, pad: int) -> list[int]:
    """A padded list of a config feature vector with its padding (trailing `pad`s) removed."""
    out = [int(v) for v in values]
    while out and out[-1] == pad:
        out.pop()
    return out


def _topological(n: int, preds: list[list[int]]) -> list[int]:
    """Nodes in an order where each comes after what it reads (the README promises topological
    node order; this checks it and repairs it when it does not hold)."""
    if all(v < u for u in range(n) for v in preds[u]):
        return list(range(n))
    indegree = [len(set(p)) for p in preds]
    succs: list[list[int]] = [[] for _ in range(n)]
    for u in range(n):
        for v in set(preds[u]):
            succs[v].append(u)
    ready = [u for u in range(n) if indegree[u] == 0]
    order = []
    while ready:
        u = ready.pop()
        order.append(u)
        for w in succs[u]:
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    if len(order) != n:
        raise ValueError("edge_index has a cycle")
    return order


def _dot_flops_estimate(a: tuple, b: tuple, out: tuple) -> int:
    """2*B*M*N*K of a dot from its shapes alone (the npz has no dimension numbers): leading
    dimensions equal in both operands and the output are the batch; then numel(a)*numel(b) /
    numel(out) = B*K^2."""
    rank = min(len(a), len(b), len(out))
    batch = 1
    for i in range(max(0, rank - 2)):
        if not a[i] == b[i] == out[i]:
            break
        batch *= a[i]
    k2 = numel(a) * numel(b) / max(1, numel(out) * batch)
    return 2 * numel(out) * max(1, round(math.sqrt(k2)))


def _npz_diagram(d: dict, name: str, meta: dict[str, Any]) -> Diagram:
    """One npz graph as a Diagram: node u (an HLO instruction) is vertex "n<u>" writing
    propagator "n<u>"; parameters and constants are propagators only; the node's nonzero
    features are kept in its attrs."""
    feat, opcodes, edges = d["node_feat"], d["node_opcode"], d["edge_index"]
    n = len(opcodes)
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges.tolist():  # [u, v]: u reads the output of v
        preds[u].append(v)
    ops = [_NPZ_OPCODES.get(int(o), "unknown") for o in opcodes.tolist()]
    props: dict[str, Propagator] = {}
    vertices: list[Vertex] = []
    inputs: list[str] = []
    read_by: set[int] = set()
    gte_bytes = [0] * n  # bytes a tuple-valued node's get-tuple-element users take from it
    shapes = [tuple(_trim(f[21:27], 0)) for f in feat]  # shape_dimensions_0..5, zero-padded
    types = [_NPZ_TYPES[int(f[2:21].argmax())] for f in feat]
    for u in range(n):
        for v in preds[u]:
            read_by.add(v)
            if ops[u] == "get-tuple-element" and types[v] == TUPLE and types[u] in DTYPES:
                gte_bytes[v] += numel(shapes[u]) * element_bytes(element_dtype(types[u]))
    for u in _topological(n, preds):
        op, f, pname = ops[u], feat[u], f"n{u}"
        role = {"parameter": "input", "constant": "constant"}.get(op, "activation")
        # A tuple (or token) node's parts are not described in the npz: a zero-byte handle.
        shape, dtype = (shapes[u], element_dtype(types[u])) if types[u] in DTYPES else ((0,), "uint8")
        props[pname] = Propagator(pname, shape, dtype, role, None if role != "activation" else pname)
        if role == "input":
            inputs.append(pname)
        if role != "activation":
            continue
        reads = [f"n{v}" for v in preds[u]]
        in_shapes = [props[r].shape for r in reads]
        src = preds[u][0] if preds[u] else None
        free = op in _NPZ_FREE or (op == "reshape" and src is not None and _npz_default_layout(
            feat[src], shapes[src]) and _npz_default_layout(f, shape))
        kind = "free" if free else op_kind(op)
        out = numel(shape) if types[u] in DTYPES else 0
        written = props[pname].bytes if types[u] in DTYPES else gte_bytes[u]
        read = [props[r].bytes for r in reads]
        if op in PARTIAL_READ and read:
            read[0] = min(read[0], written)
        if free or kind in ZERO_FLOP_KINDS:
            flops = 0
        elif op == "dot" and len(in_shapes) >= 2:
            flops = _dot_flops_estimate(in_shapes[0], in_shapes[1], shape)
        elif op == "convolution" and len(in_shapes) >= 2 and in_shapes[1]:
            kernel = in_shapes[1]
            dim = int(f[100]) if int(f[100]) < len(kernel) else len(kernel) - 1
            flops = 2 * out * (numel(kernel) // max(1, kernel[dim]))
        elif op == "reduce" and in_shapes:
            flops = numel(in_shapes[0])
        elif op == "reduce-window":
            flops = out * numel(_trim(f[37:43], 0))
        else:
            flops = out
        matmul_input = kind in ("matmul", CONV_KIND) and src is not None and types[src] in DTYPES
        compute = element_dtype(types[src]) if matmul_input else dtype
        nonzero = tuple((int(i), _number(f[i])) for i in f.nonzero()[0])
        vertices.append(Vertex(
            name=pname, kind=kind, op=f"xla.{op}", inputs=tuple(reads), outputs=(pname,),
            input_shapes=tuple(in_shapes), output_shapes=(shape,),
            dtype=COMPUTE.get(compute, compute), flops=flops,
            read_bytes=tuple(0 for _ in read) if free else tuple(read),
            bytes_written=0 if free else written,
            attrs=(("opcode_id", int(opcodes[u])), ("node_feat", nonzero))))
    roots = [f"n{u}" for u in range(n) if feat[u][0] == 1] or \
        [f"n{u}" for u in range(n) if u not in read_by]
    return Diagram(name, tuple(vertices), tuple(props.values()), tuple(inputs), tuple(roots),
                   meta=diagram_meta(vertices, meta))


def _npz_default_layout(feat: Any, shape: tuple) -> bool:
    m2m = [int(x) for x in feat[134:134 + len(shape)]]
    return m2m == list(range(len(shape) - 1, -1, -1)) or not any(m2m)


def npz_graphs(file: Path, key: str, prov: Provenance, show: bool) -> Iterator[Graph]:
    try:
        with np.load(file, allow_pickle=False) as z:
            names = set(z.files)
            layout = "node_config_feat" in names
            needed = _LAYOUT_KEYS if layout else _TILE_KEYS
            missing = [k for k in needed if k not in names]
            if missing:
                raise UserError(
                    f"{file}: not a TpuGraphs npz: missing {missing}; a tile graph has "
                    f"{list(_TILE_KEYS)}, a layout graph {list(_LAYOUT_KEYS)}")
            d = {k: z[k] for k in needed}
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{file}: cannot read as an npz file: {e}") from None
    n = len(d["node_opcode"])
    if d["node_feat"].shape != (n, _NODE_FEATS) or d["edge_index"].ndim != 2 \
            or (d["edge_index"].size and (d["edge_index"].shape[1] != 2
                                          or d["edge_index"].min() < 0 or d["edge_index"].max() >= n)):
        raise UserError(f"{file}: node_feat must be ({n}, {_NODE_FEATS}) and edge_index (m, 2) "
                        f"with node ids below {n}; got {d['node_feat'].shape} and "
                        f"{d['edge_index'].shape}")
    runtimes = d["config_runtime"]
    c = len(runtimes)
    parts = Path(key).parts
    collection = ":".join(parts[:-2]) if len(parts) >= 3 else ("layout" if layout else "tile")
    split = parts[-2] if len(parts) >= 3 else None
    config = {"file": key, "collection": collection, "split": split, "module": file.stem}
    try:
        diagram = _npz_diagram(d, file.stem, {"collection": collection})
    except (ValueError, KeyError, IndexError) as e:
        raise UserError(f"{file}: not a well-formed TpuGraphs graph: {e}") from None
    if layout:
        ids = [f"n{int(i)}" for i in d["node_config_ids"].tolist()]
        feats = d["node_config_feat"]
        if feats.shape[:2] != (c, len(ids)) or feats.shape[2] != 18:
            raise UserError(f"{file}: node_config_feat must be ({c}, {len(ids)}, 18); "
                            f"got {feats.shape}")
    else:
        feats = d["config_feat"]
        norms = d["config_runtime_normalizers"]
        if feats.shape != (c, 24) or norms.shape != (c,):
            raise UserError(f"{file}: config_feat must be ({c}, 24) and "
                            f"config_runtime_normalizers ({c},); got {feats.shape}, {norms.shape}")
    rows = []
    for j in tqdm(range(c), desc=key, leave=False, disable=not (show and c > 10_000)):
        if layout:
            cfg = {"collection": "layout", "nodes": {
                node: [_trim(v[g:g + 6], -1) for g in (0, 6, 12)]
                for node, v in zip(ids, feats[j].astype(np.int64).tolist())}}
            extra = {}
        else:
            v = feats[j].astype(np.int64).tolist()
            cfg = {"collection": "tile", "kernel_bounds": _trim(v[0:6], 0),
                   "output_bounds": _trim(v[8:14], 0), "input_bounds": _trim(v[16:22], 0)}
            extra = {"default_runtime_ms": int(norms[j]) / 1e6}
        ns = int(runtimes[j])
        runtime_ms, error = measured_ms(ns, False)
        extra.update(collection=collection, module=file.stem, split=split, compute_time_ns=ns,
                     runtime_unit="npz config_runtime (ns), stored as ms",
                     hardware_source=CITATION)
        rows.append(measurement_row(
            prov, hardware=HARDWARE, runtime_ms=runtime_ms, scope="config",
            diagram_hash=diagram.hash, kernel_config=cfg, error=error, key=(key, 0, j),
            kernel_name=file.stem, framework="xla", extra_json=dumps(extra)))
    yield Graph(diagram, config, rows)
