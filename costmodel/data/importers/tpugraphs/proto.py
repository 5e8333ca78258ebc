"""TpuGraphs' serialized protocol buffers (`.pb`, tpu_graphs' `proto/tuning.proto`): a
`TuningData` (op tuning: one small HLO module per fused kernel, each run with several tile sizes)
or one `ModuleTuningData` (a whole program, each run with a different layout per configurable
node). There is no proto compiler at run time: `costmodel.data.protobuf.decode` reads the wire
format against the small schemas below, which list only the fields used (numbers from
`tuning.proto` and XLA's `service/hlo.proto` and `xla_data.proto`)."""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costmodel.data.importers.tpugraphs.xla import (
    CITATION, COMPUTE, CONV_KIND, HARDWARE, OPAQUE, PARTIAL_READ, TOKEN, TUPLE,
    ZERO_FLOP_KINDS, Graph, diagram_meta, element_dtype, measured_ms, numel, op_kind)
from costmodel.data.protobuf import Field, Message, WireError, decode, iter_records
from costmodel.data.schema import Provenance, dumps, measurement_row
from costmodel.errors import UserError
from costmodel.ir.diagram import Diagram, Propagator, Vertex

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

# Ops that run called computations: one vertex summarising what they call.
_CALLERS = ("fusion", "call", "while", "conditional", "async-start")
# The kind a summarised computation (a fusion, a while body) takes: its most expensive kind.
_KIND_PRIORITY = ("conv", "matmul", "attention", "reduction", "layer_norm", "softmax", "gather",
                  "embedding")


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


def _array_leaves(shape: dict | None) -> list[dict]:
    """The array shapes of an XLA shape, tuples flattened depth-first; tokens dropped."""
    if shape is None:
        return []
    if shape["element_type"] == TUPLE:
        return [leaf for s in shape["tuple_shapes"] for leaf in _array_leaves(s)]
    if shape["element_type"] in (OPAQUE, TOKEN, 0):
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
                    kinds[op_kind(op)] += 1
                    best.setdefault(op_kind(op), self.dtype(inst, computation_id))
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
        return op_kind(inst["opcode"])

    def dtype(self, inst: dict, computation_id: int) -> str:
        """Compute dtype: a matmul's input type, else its (first) output type."""
        if inst["opcode"] in _CALLERS and inst["called_computation_ids"]:
            return self.summary(inst["called_computation_ids"][0]).dtype
        shapes = _array_leaves(inst["shape"])
        if op_kind(inst["opcode"]) in ("matmul", CONV_KIND):
            shapes = _array_leaves(self.operand_shape(inst, 0, computation_id)) or shapes
        if not shapes:
            return "fp32"  # no array in or out (a token-only op): nothing is computed anyway
        name = element_dtype(shapes[0]["element_type"])
        return COMPUTE.get(name, name)

    def flops(self, inst: dict, computation_id: int) -> int:
        """Floating-point (or integer) operations of one instruction, called computations
        included: 2*M*N*K for dot and convolution, the input size for reduce, one per output
        element for pointwise ops, zero for data movement. A while body counts once (its trip
        count is not in the HLO); a conditional counts its most expensive branch."""
        op = inst["opcode"]
        if op in _CALLERS:
            per = [self.summary(c).flops for c in inst["called_computation_ids"]]
            return max(per, default=0) if op == "conditional" else sum(per)
        out = sum(numel(s["dimensions"]) for s in _array_leaves(inst["shape"]))
        kind = op_kind(op)
        if op == "dot":
            lhs = self.operand_shape(inst, 0, computation_id)
            dims = inst["dot_dimension_numbers"] or {"lhs_contracting_dimensions": []}
            k = numel(lhs["dimensions"][d] for d in dims["lhs_contracting_dimensions"]) if lhs else 1
            return 2 * out * k
        if op == "convolution":
            kernel = self.operand_shape(inst, 1, computation_id)
            if kernel is None or not kernel["dimensions"]:
                return 2 * out
            cdn = inst["convolution_dimension_numbers"] or {"kernel_output_feature_dimension": 0}
            per_output = numel(kernel["dimensions"]) // max(
                1, kernel["dimensions"][cdn["kernel_output_feature_dimension"]])
            return 2 * out * per_output
        if op == "reduce":
            n = len(inst["operand_ids"]) // 2  # N inputs, then N initial values
            return sum(numel(s["dimensions"]) for i in range(n)
                       for s in _array_leaves(self.operand_shape(inst, i, computation_id)))
        if op == "reduce-window" and inst["window"]:
            return out * numel(d["size"] for d in inst["window"]["dimensions"])
        if op == "sort" and inst["dimensions"]:
            src = self.operand_shape(inst, 0, computation_id)
            n = src["dimensions"][inst["dimensions"][0]] if src and src["dimensions"] else 1
            return numel(src["dimensions"]) * max(1, math.ceil(math.log2(max(n, 1)))) if src else 0
        return 0 if kind in ZERO_FLOP_KINDS else out

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
                batch = numel(ld[d] for d in dn["lhs_batch_dimensions"])
                k = numel(ld[d] for d in dn["lhs_contracting_dimensions"])
                m = numel(ld) // max(1, batch * k)
                n = numel(rd) // max(1, batch * numel(rd[d] for d in dn["rhs_contracting_dimensions"]))
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
            if shape["element_type"] == TUPLE:
                return tuple(make(f"{name}#{i}", s, role, producer)
                             for i, s in enumerate(shape["tuple_shapes"]))
            if shape["element_type"] in (OPAQUE, TOKEN, 0):
                return None
            props[name] = Propagator(name, tuple(int(d) for d in shape["dimensions"]),
                                     element_dtype(shape["element_type"]), role, producer)
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
            if op in PARTIAL_READ and read:
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
                       meta=diagram_meta(vertices, meta))


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [n for v in value for n in _flatten(v)]


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


def proto_graphs(file: Path, key: str, prov: Provenance) -> Iterator[Graph]:
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
            runtime_ms, error = measured_ms(ns, r["error"])
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
        yield Graph(diagram, config, rows)
