"""Import TpuGraphs: XLA graphs with runtimes measured on TPU v3, per compiler configuration.

Source: google-research-datasets/tpu_graphs (Apache-2.0); Phothilimthana et al., "TpuGraphs: A
Performance Prediction Dataset on Large Tensor Computational Graphs", NeurIPS 2023 Datasets and
Benchmarks (arXiv:2308.13490). Two input forms, both read here:

- serialized protocol buffers of tpu_graphs' `proto/tuning.proto` (`.pb`): a `TuningData` (op
  tuning: one small HLO module per fused kernel, each run with several tile sizes) or one
  `ModuleTuningData` (a whole program, each run with a different layout per configurable node).
  There is no proto compiler at run time: `costmodel.data.protobuf.decode` reads the wire format
  against the small schemas in this module, which list only the fields used (numbers from
  `tuning.proto` and XLA's `service/hlo.proto` and `xla_data.proto`).
- the public release's `.npz` files (`npz/tile/xla/<split>/*.npz`, `npz/layout/<source>/<search>/
  <split>/*.npz`), whose arrays are described in the tpu_graphs README ("Dataset File
  Description").

Each HLO module or npz graph becomes one `Diagram`; each measured configuration one
"config"-scope measurement on "tpu-v3". Runtimes are nanoseconds in both forms
(`xla.ExecutionProfile.compute_time_ns`; the npz `config_runtime`), stored as milliseconds.
"""
from __future__ import annotations

import math
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from costmodel.data.schema import TABLES, Provenance, diagram_rows, dumps, measurement_row
from costmodel.data.shards import ShardWriter, existing_ids, read_table
from costmodel.data.protobuf import Field, Message, WireError, decode, iter_records
from costmodel.ir.diagram import OP_KINDS, Diagram, Propagator, Vertex
from costmodel.ir.rules import COMPUTE_DTYPES, element_bytes
from costmodel.errors import UserError
from costmodel.hardware import load_profile

SOURCE = "tpugraphs"
HARDWARE = "tpu-v3"
LICENCE = "Apache-2.0"
ORIGIN = "github.com/google-research-datasets/tpu_graphs"
CITATION = ("Phothilimthana et al., TpuGraphs: A Performance Prediction Dataset on Large Tensor "
            "Computational Graphs, NeurIPS 2023 Datasets and Benchmarks, arXiv:2308.13490; "
            "runtimes measured on TPU v3")


# --------------------------------------------------------------------------------------------
# Schemas: only the fields this importer reads.
# xla_data.proto (tensorflow/compiler/xla/xla_data.proto)
# --------------------------------------------------------------------------------------------
LAYOUT_PROTO = Message("LayoutProto", {1: Field("minor_to_major", "int64", True)})
SHAPE_PROTO = Message("ShapeProto", {
    2: Field("element_type", "uint64"),  # enum PrimitiveType
    3: Field("dimensions", "int64", True),
    5: Field("layout", LAYOUT_PROTO),
})
SHAPE_PROTO.fields[4] = Field("tuple_shapes", SHAPE_PROTO, True)  # recursive: set once, here
WINDOW_DIMENSION = Message("WindowDimension", {1: Field("size", "int64"), 2: Field("stride", "int64")})
WINDOW = Message("Window", {1: Field("dimensions", WINDOW_DIMENSION, True)})
CONVOLUTION_DIMENSION_NUMBERS = Message("ConvolutionDimensionNumbers", {
    4: Field("kernel_output_feature_dimension", "int64"),
})
DOT_DIMENSION_NUMBERS = Message("DotDimensionNumbers", {
    1: Field("lhs_contracting_dimensions", "int64", True),
    2: Field("rhs_contracting_dimensions", "int64", True),
    3: Field("lhs_batch_dimensions", "int64", True),
    4: Field("rhs_batch_dimensions", "int64", True),
})
EXECUTION_PROFILE = Message("ExecutionProfile", {
    4: Field("compute_time_ns", "int64"),  # "time in nanoseconds spent for the computation"
    5: Field("compute_and_transfer_time_ns", "int64"),
    7: Field("profile_cache_hit", "bool"),
})
# hlo.proto (tensorflow/compiler/xla/service/hlo.proto)
HLO_INSTRUCTION = Message("HloInstructionProto", {
    1: Field("name", "string"),
    2: Field("opcode", "string"),
    3: Field("shape", SHAPE_PROTO),
    9: Field("parameter_number", "int64"),
    11: Field("fusion_kind", "string"),
    13: Field("tuple_index", "int64"),
    14: Field("dimensions", "int64", True),
    15: Field("window", WINDOW),
    16: Field("convolution_dimension_numbers", CONVOLUTION_DIMENSION_NUMBERS),
    28: Field("custom_call_target", "string"),
    30: Field("dot_dimension_numbers", DOT_DIMENSION_NUMBERS),
    35: Field("id", "int64"),
    36: Field("operand_ids", "int64", True),
    38: Field("called_computation_ids", "int64", True),
    50: Field("feature_group_count", "int64"),
})
HLO_COMPUTATION = Message("HloComputationProto", {
    1: Field("name", "string"),
    2: Field("instructions", HLO_INSTRUCTION, True),
    5: Field("id", "int64"),
    6: Field("root_id", "int64"),
})
HLO_MODULE = Message("HloModuleProto", {
    1: Field("name", "string"),
    2: Field("entry_computation_name", "string"),
    3: Field("computations", HLO_COMPUTATION, True),
    6: Field("entry_computation_id", "int64"),
})
# tuning.proto (google-research-datasets/tpu_graphs, tpu_graphs/proto/tuning.proto)
TILE_SIZE_CONFIG = Message("TileSizeConfig", {
    1: Field("kernel_bounds", "int64", True),
    2: Field("output_bounds", "int64", True),
    3: Field("input_bounds", "int64", True),
    4: Field("iteration_bounds", "int64", True),
})
HLO_OP_CONFIG = Message("HloOpConfig", {1: Field("tile_size_config", TILE_SIZE_CONFIG)})
TENSOR_LAYOUT_CONFIG = Message("TensorLayoutConfig", {1: Field("dims", "int64", True)})
NODE_LAYOUT_CONFIG = Message("NodeLayoutConfig", {1: Field("tensors", TENSOR_LAYOUT_CONFIG, True)})
LAYOUT_CONFIG = Message("LayoutConfig", {1: Field("nodes", NODE_LAYOUT_CONFIG, True)})
HLO_MODULE_CONFIG = Message("HloModuleConfig", {1: Field("layout_config", LAYOUT_CONFIG)})
CONFIG_PROFILE = Message("ConfigProfile", {
    1: Field("op_config", HLO_OP_CONFIG),
    2: Field("module_config", HLO_MODULE_CONFIG),
    3: Field("error", "bool"),
    4: Field("profile", EXECUTION_PROFILE),
    5: Field("is_default", "bool"),
})
MODULE_TUNING_DATA = Message("ModuleTuningData", {
    1: Field("module", HLO_MODULE),
    2: Field("fingerprint", "uint64"),
    3: Field("runs", CONFIG_PROFILE, True),
    4: Field("config_index_to_node", "uint64", True),
})
TUNING_DATA = Message("TuningData", {1: Field("modules", MODULE_TUNING_DATA, True)})


# --------------------------------------------------------------------------------------------
# HLO opcodes -> diagram kinds
# --------------------------------------------------------------------------------------------
_CONV_KIND = "conv" if "conv" in OP_KINDS else "matmul"
_KIND_OF: dict[str, str] = {
    "dot": "matmul",
    "convolution": _CONV_KIND,
    **dict.fromkeys(("reduce", "reduce-window", "all-reduce", "all-reduce-start", "reduce-scatter",
                     "sort", "select-and-scatter"), "reduction"),
    **dict.fromkeys(("batch-norm-training", "batch-norm-inference", "batch-norm-grad"), "layer_norm"),
    **dict.fromkeys(("tanh", "logistic"), "activation"),
    "add": "add",
    "multiply": "mul",
    **dict.fromkeys(("gather", "dynamic-slice", "scatter"), "gather"),
    **dict.fromkeys(("copy", "copy-start", "copy-done", "transpose", "concatenate", "slice", "pad",
                     "reverse", "reshape", "dynamic-reshape", "broadcast", "dynamic-update-slice",
                     "all-gather", "all-gather-start", "all-gather-done", "all-reduce-done",
                     "all-to-all", "collective-permute", "collective-permute-start",
                     "collective-permute-done", "send", "send-done", "recv", "recv-done",
                     "infeed", "outfeed"), "copy"),
    **dict.fromkeys(("iota", "rng", "rng-bit-generator", "rng-get-and-update-state",
                     "partition-id", "replica-id", "get-dimension-size", "constant"), "fill"),
    **dict.fromkeys(("bitcast", "set-dimension-size", "domain", "parameter", "tuple",
                     "get-tuple-element", "after-all", "add-dependency", "opt-barrier"), "free"),
}
# Everything else (subtract, divide, compare, select, convert, exponential, custom-call, ...) is
# "elementwise": pointwise in XLA's sense, or an unknown custom call whose work we cannot see.
_DEFAULT_KIND = "elementwise"
# Ops that run called computations: one vertex summarising what they call.
_CALLERS = ("fusion", "call", "while", "conditional", "async-start")
_ZERO_FLOP_KINDS = ("gather", "copy", "fill", "free", "embedding")
# Reads only as many bytes of their first operand as they write.
_PARTIAL_READ = ("slice", "dynamic-slice", "gather")
# The kind a summarised computation (a fusion, a while body) takes: its most expensive kind.
_KIND_PRIORITY = ("conv", "matmul", "attention", "reduction", "layer_norm", "softmax", "gather",
                  "embedding")

# XLA PrimitiveType (xla_data.proto) -> tensor dtype name as `costmodel.ir.diagram` spells them.
_DTYPES = {1: "bool", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "uint8", 7: "uint16",
           8: "uint32", 9: "uint64", 10: "float16", 11: "float32", 12: "float64", 15: "complex64",
           16: "bfloat16", 18: "complex128"}
_TUPLE, _OPAQUE, _TOKEN = 13, 14, 17
_COMPUTE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _dtype(element_type: int) -> str:
    if element_type not in _DTYPES:
        raise WireError(f"XLA element type {element_type} is not supported "
                        f"(known: {sorted(_DTYPES)}, tuples, tokens)")
    return _DTYPES[element_type]


def _kind(opcode: str) -> str:
    return _KIND_OF.get(opcode, _DEFAULT_KIND)


def _dominant(kinds: Counter) -> str:
    """The kind of a group of ops: the first of `_KIND_PRIORITY` present, else the only compute
    kind, else "elementwise" for a mix of pointwise ops, else "copy" (data movement only)."""
    compute = {k for k in kinds if k not in ("free", "fill", "copy")}
    for kind in _KIND_PRIORITY:
        if kind in compute:
            return kind
    if len(compute) == 1:
        return compute.pop()
    if compute:
        return "elementwise"
    return "fill" if "fill" in kinds and "copy" not in kinds else "copy"


def _numel(dims: Any) -> int:
    return math.prod(int(d) for d in dims)


def _array_leaves(shape: dict | None) -> list[dict]:
    """The array shapes of an XLA shape, tuples flattened depth-first; tokens dropped."""
    if shape is None:
        return []
    if shape["element_type"] == _TUPLE:
        return [leaf for s in shape["tuple_shapes"] for leaf in _array_leaves(s)]
    if shape["element_type"] in (_OPAQUE, _TOKEN, 0):
        return []
    return [shape]


def _default_layout(shape: dict) -> bool:
    m2m = list(shape["layout"]["minor_to_major"]) if shape.get("layout") else []
    return not m2m or m2m == list(range(len(shape["dimensions"]) - 1, -1, -1))


def _reshape_is_bitcast(src: dict | None, dst: dict) -> bool:
    """A reshape between row-major (default-layout) arrays only relabels indices: no data moves."""
    return src is not None and _default_layout(src) and _default_layout(dst)


@dataclass(frozen=True)
class _Summary:
    """What a called computation (with what it calls in turn) does."""

    ops: tuple[tuple[str, int], ...]  # opcode -> count, sorted; parameters left out
    flops: int
    kind: str
    dtype: str  # the compute dtype of its dominant op


class _HloModule:
    """One decoded HloModuleProto: per-instruction kinds, FLOPs and dtypes, and its Diagram."""

    def __init__(self, module: dict) -> None:
        self.module = module
        self.computations = {c["id"]: c for c in module["computations"]}
        self._shapes = {c["id"]: {i["id"]: i["shape"] for i in c["instructions"]}
                        for c in module["computations"]}
        self._summaries: dict[int, _Summary] = {}
        self.names = {i["id"]: i["name"] for c in module["computations"] for i in c["instructions"]}

    @property
    def entry(self) -> dict:
        m = self.module
        if m["entry_computation_id"] in self.computations:
            return self.computations[m["entry_computation_id"]]
        named = [c for c in m["computations"] if c["name"] == m["entry_computation_name"]]
        if named:
            return named[0]
        if not m["computations"]:
            raise WireError(f"HLO module {m['name']!r} has no computations")
        return m["computations"][-1]  # callees come before callers: the entry is last

    def summary(self, computation_id: int) -> _Summary:
        if computation_id not in self._summaries:
            comp = self.computations.get(computation_id)
            if comp is None:
                raise WireError(f"HLO module {self.module['name']!r}: no computation {computation_id}")
            ops: Counter = Counter()
            kinds: Counter = Counter()
            flops = 0
            best: dict[str, str] = {}
            for inst in comp["instructions"]:
                op = inst["opcode"]
                if op in _CALLERS:
                    for cid in inst["called_computation_ids"]:
                        inner = self.summary(cid)
                        ops.update(dict(inner.ops))
                        kinds[inner.kind] += 1
                        best.setdefault(inner.kind, inner.dtype)
                elif op != "parameter":
                    ops[op] += 1
                    kinds[_kind(op)] += 1
                    best.setdefault(_kind(op), self.dtype(inst, computation_id))
                flops += self.flops(inst, computation_id)
            kind = _dominant(kinds)
            dtype = best.get(kind) or next(iter(best.values()), "fp32")
            self._summaries[computation_id] = _Summary(tuple(sorted(ops.items())), flops, kind, dtype)
        return self._summaries[computation_id]

    def operand_shape(self, inst: dict, index: int, computation_id: int) -> dict | None:
        ids = inst["operand_ids"]
        return self._shapes[computation_id].get(ids[index]) if index < len(ids) else None

    def kind(self, inst: dict) -> str:
        if inst["opcode"] in _CALLERS:
            kinds = Counter(self.summary(c).kind for c in inst["called_computation_ids"])
            return _dominant(kinds) if kinds else "copy"
        return _kind(inst["opcode"])

    def dtype(self, inst: dict, computation_id: int) -> str:
        """Compute dtype: a matmul's input type, else its (first) output type."""
        if inst["opcode"] in _CALLERS and inst["called_computation_ids"]:
            return self.summary(inst["called_computation_ids"][0]).dtype
        shapes = _array_leaves(inst["shape"])
        if _kind(inst["opcode"]) in ("matmul", _CONV_KIND):
            shapes = _array_leaves(self.operand_shape(inst, 0, computation_id)) or shapes
        if not shapes:
            return "fp32"  # no array in or out (a token-only op): nothing is computed anyway
        name = _dtype(shapes[0]["element_type"])
        return _COMPUTE.get(name, name)

    def flops(self, inst: dict, computation_id: int) -> int:
        """Floating-point (or integer) operations of one instruction, called computations
        included: 2*M*N*K for dot and convolution, the input size for reduce, one per output
        element for pointwise ops, zero for data movement. A while body counts once (its trip
        count is not in the HLO); a conditional counts its most expensive branch."""
        op = inst["opcode"]
        if op in _CALLERS:
            per = [self.summary(c).flops for c in inst["called_computation_ids"]]
            return max(per, default=0) if op == "conditional" else sum(per)
        out = sum(_numel(s["dimensions"]) for s in _array_leaves(inst["shape"]))
        kind = _kind(op)
        if op == "dot":
            lhs = self.operand_shape(inst, 0, computation_id)
            dims = inst["dot_dimension_numbers"] or {"lhs_contracting_dimensions": []}
            k = _numel(lhs["dimensions"][d] for d in dims["lhs_contracting_dimensions"]) if lhs else 1
            return 2 * out * k
        if op == "convolution":
            kernel = self.operand_shape(inst, 1, computation_id)
            if kernel is None or not kernel["dimensions"]:
                return 2 * out
            cdn = inst["convolution_dimension_numbers"] or {"kernel_output_feature_dimension": 0}
            per_output = _numel(kernel["dimensions"]) // max(
                1, kernel["dimensions"][cdn["kernel_output_feature_dimension"]])
            return 2 * out * per_output
        if op == "reduce":
            n = len(inst["operand_ids"]) // 2  # N inputs, then N initial values
            return sum(_numel(s["dimensions"]) for i in range(n)
                       for s in _array_leaves(self.operand_shape(inst, i, computation_id)))
        if op == "reduce-window" and inst["window"]:
            return out * _numel(d["size"] for d in inst["window"]["dimensions"])
        if op == "sort" and inst["dimensions"]:
            src = self.operand_shape(inst, 0, computation_id)
            n = src["dimensions"][inst["dimensions"][0]] if src and src["dimensions"] else 1
            return _numel(src["dimensions"]) * max(1, math.ceil(math.log2(max(n, 1)))) if src else 0
        return 0 if kind in _ZERO_FLOP_KINDS else out

    def attrs(self, inst: dict, computation_id: int) -> tuple[tuple[str, Any], ...]:
        """What changes the work beyond shapes and dtype (hashable; part of the vertex content)."""
        out: list[tuple[str, Any]] = []
        op = inst["opcode"]
        if op == "dot" and inst["dot_dimension_numbers"]:
            dn = inst["dot_dimension_numbers"]
            lhs = self.operand_shape(inst, 0, computation_id)
            rhs = self.operand_shape(inst, 1, computation_id)
            if lhs and rhs:
                ld, rd = lhs["dimensions"], rhs["dimensions"]
                batch = _numel(ld[d] for d in dn["lhs_batch_dimensions"])
                k = _numel(ld[d] for d in dn["lhs_contracting_dimensions"])
                m = _numel(ld) // max(1, batch * k)
                n = _numel(rd) // max(1, batch * _numel(rd[d] for d in dn["rhs_contracting_dimensions"]))
                out.append(("gemm_bmnk", (batch, m, n, k)))
        if op == "convolution":
            if inst["window"]:
                out.append(("window", tuple(d["size"] for d in inst["window"]["dimensions"])))
                out.append(("stride", tuple(d["stride"] for d in inst["window"]["dimensions"])))
            out.append(("feature_group_count", inst["feature_group_count"] or 1))
        if op in ("reduce-window", "select-and-scatter") and inst["window"]:
            out.append(("window", tuple(d["size"] for d in inst["window"]["dimensions"])))
        if inst["dimensions"]:
            out.append(("dimensions", tuple(inst["dimensions"])))
        if op in _CALLERS:
            if inst["fusion_kind"]:
                out.append(("fusion_kind", inst["fusion_kind"]))
            ops: Counter = Counter()
            for cid in inst["called_computation_ids"]:
                ops.update(dict(self.summary(cid).ops))
            out.append(("called_ops", tuple(sorted(ops.items()))))
        if op == "custom-call":
            out.append(("target", inst["custom_call_target"]))
        leaves = _array_leaves(inst["shape"])
        if leaves and leaves[0].get("layout") and not _default_layout(leaves[0]):
            out.append(("minor_to_major", tuple(leaves[0]["layout"]["minor_to_major"])))
        return tuple(out)

    def diagram(self, meta: dict[str, Any]) -> Diagram:
        """The entry computation as a Diagram: parameters and constants become propagators,
        tuples and get-tuple-element only regroup them, bitcasts (and reshapes that are bitcasts)
        become free vertices, fusions and control flow one vertex each (see `summary`)."""
        entry = self.entry
        cid = entry["id"]
        props: dict[str, Propagator] = {}
        vertices: list[Vertex] = []
        values: dict[int, Any] = {}  # instruction id -> its value: a name, a tuple of values, None
        inputs: list[str] = []

        def make(name: str, shape: dict, role: str, producer: str | None) -> Any:
            if shape["element_type"] == _TUPLE:
                return tuple(make(f"{name}#{i}", s, role, producer)
                             for i, s in enumerate(shape["tuple_shapes"]))
            if shape["element_type"] in (_OPAQUE, _TOKEN, 0):
                return None
            props[name] = Propagator(name, tuple(int(d) for d in shape["dimensions"]),
                                     _dtype(shape["element_type"]), role, producer)
            return name

        for inst in entry["instructions"]:
            op, name, iid = inst["opcode"], inst["name"], inst["id"]
            operands = [values.get(o) for o in inst["operand_ids"]]
            if op == "parameter":
                values[iid] = make(name, inst["shape"], "input", None)
                inputs.extend(_flatten(values[iid]))
                continue
            if op == "constant":
                values[iid] = make(name, inst["shape"], "constant", None)
                continue
            if op == "tuple":
                values[iid] = tuple(operands)
                continue
            if op == "get-tuple-element" and operands and isinstance(operands[0], tuple):
                values[iid] = operands[0][inst["tuple_index"]]
                continue
            if op in ("add-dependency", "opt-barrier"):
                values[iid] = operands[0] if operands else None
                continue
            if op == "after-all":
                values[iid] = None
                continue
            reads = [n for v in operands for n in _flatten(v)]
            src = self.operand_shape(inst, 0, cid)
            free = op in ("bitcast", "get-tuple-element", "domain", "set-dimension-size") or (
                op == "reshape" and _reshape_is_bitcast(src, inst["shape"]))
            values[iid] = make(name, inst["shape"], "activation", name)
            outs = _flatten(values[iid])
            written = sum(props[o].bytes for o in outs)
            read = [props[n].bytes for n in reads]
            if op in _PARTIAL_READ and read:
                read[0] = min(read[0], written)
            kind = "free" if free else self.kind(inst)
            vertices.append(Vertex(
                name=name, kind=kind, op=f"xla.{op}", inputs=tuple(reads), outputs=tuple(outs),
                input_shapes=tuple(props[n].shape for n in reads),
                output_shapes=tuple(props[o].shape for o in outs),
                dtype=self.dtype(inst, cid), flops=0 if free else self.flops(inst, cid),
                read_bytes=tuple(0 for _ in read) if free else tuple(read),
                bytes_written=0 if free else written, module=entry["name"],
                attrs=self.attrs(inst, cid)))
        root = values.get(entry["root_id"], values.get(entry["instructions"][-1]["id"])
                          if entry["instructions"] else None)
        return Diagram(self.module["name"], tuple(vertices), tuple(props.values()),
                       tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(_flatten(root))),
                       meta=_meta(vertices, meta))


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [n for v in value for n in _flatten(v)]


def _meta(vertices: list[Vertex], extra: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Diagram meta: the source, and the compute dtype that carries most of the FLOPs."""
    by_dtype: Counter = Counter()
    for v in vertices:
        if v.dtype in COMPUTE_DTYPES:
            by_dtype[v.dtype] += v.flops + 1  # +1: a graph of zero-FLOP ops still has a dtype
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else None
    return tuple(sorted({"source": SOURCE, "dtype": dtype, **extra}.items()))


# --------------------------------------------------------------------------------------------
# Configurations and measurements
# --------------------------------------------------------------------------------------------

def _runtime(ns: int, error: bool) -> tuple[float | None, str | None]:
    """(runtime in ms, error) of one run from its nanoseconds. tpu_graphs' own loader drops runs
    marked failed and runs of at most 1 ns (no profile); here they stay, as errors."""
    if error:
        return None, "the run failed (ConfigProfile.error is set)"
    if ns <= 1:
        return None, f"no valid runtime recorded (compute_time_ns={ns})"
    return ns / 1e6, None


def _collection(run: dict) -> str:
    if (run["op_config"] or {}).get("tile_size_config") is not None:
        return "tile"
    return "layout" if (run["module_config"] or {}).get("layout_config") is not None else "none"


def _pb_config(run: dict, names: dict[int, str], nodes: list[int]) -> dict:
    """A ConfigProfile's configuration as a kernel_config dict: the tile sizes (op tuning), or the
    minor-to-major dimension order of each tensor of each configurable node (layout), keyed by
    the HLO instruction name (`config_index_to_node` gives each node's instruction id)."""
    tile = (run["op_config"] or {}).get("tile_size_config")
    if tile is not None:
        return {"collection": "tile", **{k: list(v) for k, v in tile.items()}}
    layout = (run["module_config"] or {}).get("layout_config")
    if layout is not None:
        return {"collection": "layout", "nodes": {
            names.get(nodes[i], str(nodes[i])) if i < len(nodes) else f"#{i}":
                [list(t["dims"]) for t in node["tensors"]]
            for i, node in enumerate(layout["nodes"])}}
    return {"collection": "none"}


def _decode_pb(data: bytes) -> list[dict]:
    """The ModuleTuningData messages of a `.pb`: all modules of a TuningData, or the one
    ModuleTuningData. A TuningData has only field 1; a file that fits neither raises WireError."""
    numbers = {number for number, _, _ in iter_records(data)}
    if numbers <= {1}:
        try:
            return decode(data, TUNING_DATA)["modules"]
        except WireError as first:
            try:
                return [decode(data, MODULE_TUNING_DATA)]
            except WireError:
                raise first from None
    return [decode(data, MODULE_TUNING_DATA)]


@dataclass(frozen=True)
class _Graph:
    """One imported graph: its diagram, the config to store with it, its measurement rows."""

    diagram: Diagram
    config: dict
    measurements: list[dict]


def _pb_graphs(file: Path, key: str, prov: Provenance) -> Iterator[_Graph]:
    try:
        modules = _decode_pb(file.read_bytes())
    except WireError as e:
        raise UserError(f"{file}: not a valid TpuGraphs protocol buffer (tuning.proto "
                        f"TuningData or ModuleTuningData): {e}") from None
    for index, mtd in enumerate(modules):
        if mtd["module"] is None:  # tpu_graphs' loader skips these too; say so
            warnings.warn(f"{file}: entry {index} has no HLO module; its {len(mtd['runs'])} "
                          "runs are not imported", stacklevel=2)
            continue
        try:
            hlo = _HloModule(mtd["module"])
            runs = mtd["runs"]
            collection = next((_collection(r) for r in runs), "none")
            name = mtd["module"]["name"]
            config = {"module": name, "file": key, "module_index": index, "collection": collection,
                      "fingerprint": str(mtd["fingerprint"])}
            diagram = hlo.diagram({"collection": collection})
        except (WireError, KeyError, IndexError, TypeError) as e:
            raise UserError(f"{file}: module {index} is not a well-formed HLO module: "
                            f"{type(e).__name__}: {e}") from None
        default = next((r["profile"]["compute_time_ns"] for r in runs if r["is_default"]
                        and not r["error"] and r["profile"] and r["profile"]["compute_time_ns"] > 1),
                       None)
        rows = []
        for j, r in enumerate(runs):
            profile = r["profile"] or {}
            ns = profile.get("compute_time_ns", 0)
            runtime_ms, error = _runtime(ns, r["error"])
            extra = {"collection": collection, "module": name, "is_default": r["is_default"],
                     "compute_time_ns": ns,
                     "compute_and_transfer_time_ns": profile.get("compute_and_transfer_time_ns"),
                     "profile_cache_hit": profile.get("profile_cache_hit"),
                     "default_runtime_ms": None if default is None else default / 1e6,
                     "runtime_unit": "xla.ExecutionProfile.compute_time_ns (ns), stored as ms",
                     "hardware_source": CITATION}
            rows.append(measurement_row(
                prov, hardware=HARDWARE, runtime_ms=runtime_ms, scope="config",
                diagram_hash=diagram.hash,
                kernel_config=_pb_config(r, hlo.names, mtd["config_index_to_node"]),
                error=error, key=(key, index, j), kernel_name=name, framework="xla",
                extra_json=dumps(extra)))
        yield _Graph(diagram, config, rows)


# --------------------------------------------------------------------------------------------
# The public release's .npz files (tpu_graphs README, "Dataset File Description")
# --------------------------------------------------------------------------------------------

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
    k2 = _numel(a) * _numel(b) / max(1, _numel(out) * batch)
    return 2 * _numel(out) * max(1, round(math.sqrt(k2)))


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
            if ops[u] == "get-tuple-element" and types[v] == _TUPLE and types[u] in _DTYPES:
                gte_bytes[v] += _numel(shapes[u]) * element_bytes(_dtype(types[u]))
    for u in _topological(n, preds):
        op, f, pname = ops[u], feat[u], f"n{u}"
        role = {"parameter": "input", "constant": "constant"}.get(op, "activation")
        # A tuple (or token) node's parts are not described in the npz: a zero-byte handle.
        shape, dtype = (shapes[u], _dtype(types[u])) if types[u] in _DTYPES else ((0,), "uint8")
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
        kind = "free" if free else _kind(op)
        out = _numel(shape) if types[u] in _DTYPES else 0
        written = props[pname].bytes if types[u] in _DTYPES else gte_bytes[u]
        read = [props[r].bytes for r in reads]
        if op in _PARTIAL_READ and read:
            read[0] = min(read[0], written)
        if free or kind in _ZERO_FLOP_KINDS:
            flops = 0
        elif op == "dot" and len(in_shapes) >= 2:
            flops = _dot_flops_estimate(in_shapes[0], in_shapes[1], shape)
        elif op == "convolution" and len(in_shapes) >= 2 and in_shapes[1]:
            kernel = in_shapes[1]
            dim = int(f[100]) if int(f[100]) < len(kernel) else len(kernel) - 1
            flops = 2 * out * (_numel(kernel) // max(1, kernel[dim]))
        elif op == "reduce" and in_shapes:
            flops = _numel(in_shapes[0])
        elif op == "reduce-window":
            flops = out * _numel(_trim(f[37:43], 0))
        else:
            flops = out
        matmul_input = kind in ("matmul", _CONV_KIND) and src is not None and types[src] in _DTYPES
        compute = _dtype(types[src]) if matmul_input else dtype
        nonzero = tuple((int(i), _number(f[i])) for i in f.nonzero()[0])
        vertices.append(Vertex(
            name=pname, kind=kind, op=f"xla.{op}", inputs=tuple(reads), outputs=(pname,),
            input_shapes=tuple(in_shapes), output_shapes=(shape,),
            dtype=_COMPUTE.get(compute, compute), flops=flops,
            read_bytes=tuple(0 for _ in read) if free else tuple(read),
            bytes_written=0 if free else written,
            attrs=(("opcode_id", int(opcodes[u])), ("node_feat", nonzero))))
    roots = [f"n{u}" for u in range(n) if feat[u][0] == 1] or \
        [f"n{u}" for u in range(n) if u not in read_by]
    return Diagram(name, tuple(vertices), tuple(props.values()), tuple(inputs), tuple(roots),
                   meta=_meta(vertices, meta))


def _npz_default_layout(feat: Any, shape: tuple) -> bool:
    m2m = [int(x) for x in feat[134:134 + len(shape)]]
    return m2m == list(range(len(shape) - 1, -1, -1)) or not any(m2m)


def _npz_graphs(file: Path, key: str, prov: Provenance, show: bool) -> Iterator[_Graph]:
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
        runtime_ms, error = _runtime(ns, False)
        extra.update(collection=collection, module=file.stem, split=split, compute_time_ns=ns,
                     runtime_unit="npz config_runtime (ns), stored as ms",
                     hardware_source=CITATION)
        rows.append(measurement_row(
            prov, hardware=HARDWARE, runtime_ms=runtime_ms, scope="config",
            diagram_hash=diagram.hash, kernel_config=cfg, error=error, key=(key, 0, j),
            kernel_name=file.stem, framework="xla", extra_json=dumps(extra)))
    yield _Graph(diagram, config, rows)


# --------------------------------------------------------------------------------------------
# The importer
# --------------------------------------------------------------------------------------------

def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in (".pb", ".npz"):
            raise UserError(f"{path}: expected a TpuGraphs .pb or .npz file")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".pb", ".npz") and p.is_file())
    if not files:
        raise UserError(f"no TpuGraphs .pb or .npz files under {path}")
    return files


def _file_key(file: Path) -> str:
    """How a file is named in measurement keys: its path below the release's `npz/` folder
    (collection/split/name), else its name; independent of where the data lives."""
    parts = file.parts
    if "npz" in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index("npz")
        return "/".join(parts[last + 1:])
    return file.name


def _provenance(file: Path, top: Path) -> Provenance:
    """The tpu_graphs commit from a SOURCE_COMMIT.txt beside the file (or in a folder above it,
    up to the imported folder `top`); the release version "v0" for npz files without one; else
    "unknown"."""
    for folder in (file.parent, *file.parent.parents):
        marker = folder / "SOURCE_COMMIT.txt"
        if marker.is_file():
            return Provenance(SOURCE, marker.read_text().split()[0], LICENCE, ORIGIN)
        if folder == top:
            break
    return Provenance(SOURCE, "v0" if file.suffix == ".npz" else "unknown", LICENCE, ORIGIN)


def hardware_row() -> dict:
    """The hardware-table row of TPU v3, from `hardware_profiles/tpu-v3.toml`."""
    profile = load_profile(HARDWARE)
    return {"hardware": HARDWARE, "kind": profile.kind, "display_name": profile.display_name,
            "descriptor_json": dumps(profile.descriptor()), "profile_json": dumps(profile.to_dict()),
            "source": SOURCE}


def run(path: Path, *, root: Path, progress: bool | None = None) -> dict[str, int]:
    """Import TpuGraphs `.pb` and `.npz` files (one file, or a folder searched recursively) into
    the dataset under `root`; returns the rows written per table. Rows already in `root` (the
    same measurement id, or the same diagram) are not written again, so a re-import adds
    nothing. `progress`: a progress bar on stderr (default: for more than 10 files or 50 MB)."""
    path, root = Path(path), Path(root)
    files = _files(path)
    top = path if path.is_dir() else path.parent
    show = progress if progress is not None else (
        len(files) > 10 or sum(f.stat().st_size for f in files) > 50 * 2**20)
    seen_ids = existing_ids(root, SOURCE)
    known = read_table("diagrams", root, columns=["diagram_hash", "source"])
    seen_diagrams = set(known.loc[known["source"] == SOURCE, "diagram_hash"])
    hardware = read_table("hardware", root, columns=["hardware", "source"])
    counts: Counter = Counter()
    writer = ShardWriter(root, source=SOURCE)
    if not ((hardware["hardware"] == HARDWARE) & (hardware["source"] == SOURCE)).any():
        writer.add("hardware", hardware_row())
        counts["hardware"] += 1
    pending = 0
    for file in tqdm(files, desc="tpugraphs", unit="file", disable=not show, file=sys.stderr):
        key, prov = _file_key(file), _provenance(file, top)
        graphs = _pb_graphs(file, key, prov) if file.suffix == ".pb" else \
            _npz_graphs(file, key, prov, show)
        for graph in graphs:
            if graph.diagram.hash not in seen_diagrams:
                seen_diagrams.add(graph.diagram.hash)
                for table, rows in diagram_rows(graph.diagram, SOURCE, graph.config).items():
                    for row in rows:
                        writer.add(table, row)
                    counts[table] += len(rows)
            for row in graph.measurements:
                if row["measurement_id"] not in seen_ids:
                    seen_ids.add(row["measurement_id"])
                    writer.add("measurements", row)
                    counts["measurements"] += 1
                    pending += 1
            if pending > 50_000:  # bound memory on the full release's large layout files
                writer.flush()
                pending = 0
        writer.flush()  # one file's rows at a time: an interrupted import keeps whole files
    return {table: counts.get(table, 0) for table in TABLES if table != "subdiagrams"}
