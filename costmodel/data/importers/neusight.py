"""Import NeuSight's measurements (github.com/sitar-lab/NeuSight, MIT) into the dataset.

The folder holds three kinds of measurement (see the data's README):
- `kernels/{bmm,linear,softmax,ln}/p2.1.0/<GPU>.csv` and `kernels/extra/*.csv`: one timed op a
  row; each becomes a single-op kernel (`single_op`) and a "kernel" measurement carrying the
  cuBLAS/cuDNN kernel that ran.
- `label/<GPU>/<model>-inf-<seq>-<batch>.csv`: a torch.fx graph (one transformer layer with the
  model's prologue and epilogue), one row per node with its own measured latency; each becomes
  a `Diagram`, and each measured vertex a one-vertex kernel measured alone.
- `label/<GPU>/<workload>[-fusion].json`: the whole model's measured latency ("model" scope).

Shapes, checked on the data (every sgemm row's launch grid is ceil(K / tile) x ceil(M / tile),
the output being M x K) and in NeuSight's Dataset/collect.py: bmm is (B, M, N) @ (B, N, K) ->
(B, M, K), so N is the reduction; linear is nn.Linear(N, K, bias=True) on a (B, M, N) input.
Everything is fp32. Training workloads (`-train-`) are left out: their per-node latencies add the
backward pass to a forward-only graph.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import operator
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from costmodel.ir.capture import single_op, tensors
from costmodel.data.schema import DATA_DIR, Provenance, diagram_rows, dumps, hardware_row, measurement_row
from costmodel.data.shards import RowSink, ShardWriter
from costmodel.ir.diagram import Diagram, Propagator, Subdiagram, Vertex
from costmodel.errors import UserError
from costmodel.data.importers import hardware_name

SOURCE = "neusight"
LICENCE = "MIT"
ORIGIN = "github.com/sitar-lab/NeuSight"
# NeuSight's Dataset/collect.py times each kernel 25 times and keeps the mean of the 5 fastest.
_KERNEL_REPEATS = 25
_KERNEL_STATISTIC = "mean of the 5 fastest of 25 runs"
# addu/mulu/divu/powu use one scalar drawn from (0, 1] per row and not recorded; 0.5 stands in.
_SCALAR = 0.5

aten = torch.ops.aten


def run(path: Path, *, root: Path = DATA_DIR) -> dict[str, int]:
    """Import a NeuSight data folder into the dataset at `root`; rows written per table, plus
    `skipped_*` counts of what was left out on purpose."""
    path = Path(path)
    commit_file = path / "SOURCE_COMMIT.txt"
    if not commit_file.exists():
        raise UserError(f"{path} is not a NeuSight data folder: no SOURCE_COMMIT.txt")
    prov = Provenance(SOURCE, commit_file.read_text().strip(), LICENCE, ORIGIN)
    with ShardWriter(root, source=SOURCE) as writer:
        sink = RowSink(writer)
        gpus = _import_kernels(path, prov, sink)
        gpus |= _import_labels(path, prov, sink)
        for name, profiled in sorted(gpus.items()):
            sink.add("hardware", hardware_row(name, SOURCE, profiled=profiled))
    return dict(sink.counts)


class _TensorsFirst:
    """An ATen overload whose tensors are not all leading arguments, called the way `single_op`
    calls ops (tensors first, then the rest); it prints and names itself as the overload."""

    def __init__(self, op: Any, positions: tuple[int, ...]) -> None:
        self.op, self.positions = op, positions
        self.__name__ = op._schema.name.split("::")[-1]

    def __call__(self, *args: Any) -> Any:
        tensors, rest = list(args[:len(self.positions)]), list(args[len(self.positions):])
        full: list[Any] = []
        for i in range(len(tensors) + len(rest)):
            full.append(tensors.pop(0) if i in self.positions else rest.pop(0))
        return self.op(*full)

    def __str__(self) -> str:
        return str(self.op)


_LAYER_NORM = _TensorsFirst(aten.layer_norm.default, (0, 2, 3))


def layer_norm_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      *, name: str = "op") -> Subdiagram:
    """layer_norm(x, [H], weight, bias, eps) over the last dim, with its scalar arguments at the
    positions capture records them (single_op numbers them after the tensors)."""
    h = tuple(x.shape[-1:])
    sub = single_op(_LAYER_NORM, [x, weight, bias], args=(list(h), eps), name=name)
    vertex = replace(sub.vertices[0], attrs=(("arg1", h), ("arg4", eps)))
    return Subdiagram((vertex,), sub.inputs, sub.outputs, sub.internal)


# ---------------------------------------------------------------------------------------------
# Kernel micro-benchmarks

_BINARY = {"add": aten.add.Tensor, "mul": aten.mul.Tensor, "div": aten.div.Tensor,
           "pow": aten.pow.Tensor_Tensor}
_WITH_SCALAR = {"addu": aten.add.Tensor, "mulu": aten.mul.Tensor, "divu": aten.div.Tensor,
                "powu": aten.pow.Tensor_Scalar}
_UNARY = {"relu": aten.relu.default, "gelu": aten.gelu.default, "tanh": aten.tanh.default}
_GEMM_DIMS = ("B", "M", "N", "K")
_VEC_DIMS = ("B", "H")


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def kernel(op: str, dims: dict[str, int]) -> Subdiagram:
    """The single-op kernel NeuSight timed for one row (inputs as its Dataset/collect.py makes
    them); `dims` are the row's B, M, N, K (bmm, linear) or B, H (the rest)."""
    if op in ("bmm", "linear"):
        b, m, n, k = (dims[d] for d in _GEMM_DIMS)
        if op == "bmm":
            return single_op(aten.bmm.default, [_meta(b, m, n), _meta(b, n, k)])
        return single_op(aten.linear.default, [_meta(b, m, n), _meta(k, n), _meta(k)])
    b, h = dims["B"], dims["H"]
    if op == "ln":
        return layer_norm_kernel(_meta(b, h), _meta(h), _meta(h), 1e-5)
    if op == "softmax":  # nn.Softmax() on a 2-D input normalises dim 1: the last dim
        return single_op(aten.softmax.int, [_meta(b, h)], args=(-1,))
    if op in _BINARY:
        return single_op(_BINARY[op], [_meta(b, h), _meta(b, h)])
    if op in _WITH_SCALAR:
        return single_op(_WITH_SCALAR[op], [_meta(b, h)], args=(_SCALAR,))
    if op in _UNARY:
        return single_op(_UNARY[op], [_meta(b, h)])
    raise ValueError(f"NeuSight op {op!r} has no mapping to an ATen op")


def _versions(row: dict) -> dict[str, str | None]:
    torch_version = (row.get("Torch Version") or "").removeprefix("p") or None
    cuda = (row.get("CUDA Version") or "").removeprefix("cu")
    return {"framework": "pytorch", "framework_version": torch_version,
            "cuda_version": f"{cuda[:-1]}.{cuda[-1]}" if cuda.isdigit() and len(cuda) > 1 else None}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value.is_integer() else None


def _launch(row: dict) -> dict:
    """The launch columns: occupancy, grid and block of the kernel named in "Kernel Name"."""
    out = {"op": row.get("OPName"), "cudnn_version": row.get("CUDNN Version") or None,
           "warps_per_sm": _number(row.get("Warps per SM")),
           "blocks_per_sm": _number(row.get("Blocks per SM")),
           "grid": [_integer(row.get(f"Grid {a}")) for a in "xyz"],
           "block": [_integer(row.get(f"Block {a}")) for a in "xyz"],
           "statistic": _KERNEL_STATISTIC}
    if "Kernels" in row:  # every kernel the op launched, in order
        out["kernels"] = [k for k in (row["Kernels"] or "").split(";") if k]
    if row.get("OPName") in _WITH_SCALAR:
        out["scalar"] = f"drawn from (0, 1] and not recorded; {_SCALAR} stands in"
    return out


def _data_lines(f: Path) -> int:
    with f.open() as fh:
        return max(0, sum(1 for _ in fh) - 1)


def _import_kernels(path: Path, prov: Provenance, sink: RowSink) -> dict[str, bool]:
    files = sorted((path / "kernels").rglob("*.csv"))
    total = sum(_data_lines(f) for f in files)
    built: dict[tuple, tuple[str | None, str | None]] = {}
    seen: set[tuple] = set()
    gpus: dict[str, bool] = {}
    with tqdm(total=total, desc="neusight kernels", unit="row", file=sys.stderr,
              disable=None) as bar:
        for f in files:
            rel = f.relative_to(path).as_posix()
            with f.open(newline="") as fh:
                reader = csv.DictReader(fh)
                for row in reader:
                    bar.update()
                    _kernel_row(row, reader.line_num, rel, prov, sink, built, seen, gpus)
    return gpus


def _kernel_row(row: dict, line: int, rel: str, prov: Provenance, sink: RowSink,
                built: dict, seen: set, gpus: dict) -> None:
    op = row.get("OPName") or ""
    names = _GEMM_DIMS if op in ("bmm", "linear") else _VEC_DIMS
    raw = tuple(row.get(d) for d in names)
    # extra/vec.csv repeats extra/{ln,softmax,elem}.csv row for row: one measurement, kept once.
    identity = (row.get("Device"), op, raw, row.get("Latency"))
    if identity in seen:
        sink.counts["skipped_duplicate_kernel_rows"] += 1
        return
    seen.add(identity)
    hw, profiled = hardware_name(row.get("Device") or "unknown")
    gpus[hw] = profiled
    if (op, raw) not in built:  # (subdiagram hash, None) or (None, why it cannot be built)
        try:
            built[op, raw] = sink.subdiagram(kernel(op, {d: int(v) for d, v in zip(names, raw)}),
                                             SOURCE), None
        except (ValueError, TypeError, RuntimeError) as e:
            built[op, raw] = None, f"cannot build {op} with {dict(zip(names, raw))}: {e}"
    sub_hash, error = built[op, raw]
    runtime = _number(row.get("Latency"))
    if runtime is None and error is None:
        error = f"no latency in the row: {row.get('Latency')!r}"
    sink.add("measurements", measurement_row(
        prov, hardware=hw, runtime_ms=runtime, scope="kernel", subdiagram_hash=sub_hash,
        kernel_name=row.get("Kernel Name") or None, key=(rel, line), error=error,
        repeats=_KERNEL_REPEATS, extra_json=dumps(_launch(row)), **_versions(row)))


# ---------------------------------------------------------------------------------------------
# Whole models: torch.fx graphs with per-node latencies, and end-to-end latencies

_WORKLOAD = re.compile(
    r"(?P<model>.+)-(?P<mode>inf|train)-(?P<seq>\d+)-(?P<batch>\d+)(?P<fusion>-fusion)?")
# The label files name no versions; the data's README: "PyTorch 2.1, CUDA 12.1, eager mode".
_LABEL_SOFTWARE = {"framework": "pytorch", "framework_version": "2.1.0", "cuda_version": "12.1"}


@dataclass
class FxGraph:
    """A NeuSight fx graph read as a Diagram, with each vertex's measured latency (ms)."""

    diagram: Diagram
    latency_ms: dict[str, float]
    unmapped: dict[str, str] = field(default_factory=dict)  # node -> what it was
    python_nodes: int = 0  # nodes that compute Python values (sizes, dtypes), not tensors
    shape_mismatches: list[str] = field(default_factory=list)


def _import_labels(path: Path, prov: Provenance, sink: RowSink) -> dict[str, bool]:
    gpus: dict[str, bool] = {}
    graphs: dict[tuple[str, str], tuple[FxGraph, str]] = {}  # (hardware, workload) -> graph, csv
    layers: dict[str, int] = {}  # workload -> num_layer
    jsons: list[tuple[Path, str, bool]] = []  # (file, hardware, fusion)
    label = path / "label"
    for folder in sorted(p for p in label.iterdir() if p.is_dir()) if label.exists() else []:
        hw, profiled = hardware_name(folder.name.replace("_", " "))
        for f in sorted(folder.iterdir()):
            m = _WORKLOAD.fullmatch(f.stem)
            if f.suffix not in (".csv", ".json"):
                continue
            if m is None or m["mode"] != "inf":
                sink.counts[f"skipped_{'train' if m else 'unnamed'}_{f.suffix[1:]}"] += 1
                continue
            gpus[hw] = profiled
            if f.suffix == ".json":
                jsons.append((f, hw, bool(m["fusion"])))
                if not m["fusion"]:
                    layers.setdefault(f.stem, json.loads(f.read_text()).get("num_layer"))
            else:
                g = read_fx_graph(f, _model_config(path, m["model"]), name=m["model"],
                                  batch=int(m["batch"]), seq=int(m["seq"]))
                graphs[hw, f.stem] = g, f.relative_to(path).as_posix()

    # A workload's graph is the same on every GPU: one diagram, written once, its GPUs listed.
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for place, (g, _) in graphs.items():
        by_hash.setdefault(g.diagram.hash, []).append(place)
    for places in by_hash.values():
        g, workload = graphs[places[0]][0], places[0][1]
        rows = diagram_rows(g.diagram, SOURCE, config={
            "num_layer": layers.get(workload), "workload": workload,
            "gpus": sorted({hw for hw, _ in places}), "unmapped_nodes": sorted(g.unmapped)})
        for table, items in rows.items():
            for row in items:
                sink.add(table, row)
    for (hw, workload), (g, rel) in tqdm(sorted(graphs.items()), desc="neusight graphs",
                                          file=sys.stderr, disable=None):
        _graph_rows(g, hw, workload, rel, prov, sink)
    by_workload = {w: g for (_, w), (g, _) in sorted(graphs.items())}
    for f, hw, fusion in jsons:
        workload = f.stem.removesuffix("-fusion")
        g = graphs[hw, workload][0] if (hw, workload) in graphs else by_workload.get(workload)
        data = json.loads(f.read_text())
        extra = {"workload": workload, "num_layer": data.get("num_layer"),
                 "fw_latency_ms": data.get("fw_latency"),
                 "bwall_latency_ms": data.get("bwall_latency")}
        if fusion:
            extra["fusion"] = True
        runtime = _number(str(data.get("e2e_latency", "")))
        sink.add("measurements", measurement_row(
            prov, hardware=hw, runtime_ms=runtime, scope="model",
            diagram_hash=g.diagram.hash if g else None, key=(f.relative_to(path).as_posix(),),
            error=None if runtime is not None else "no e2e_latency in the file",
            extra_json=dumps(extra), **_LABEL_SOFTWARE))
    return gpus


def _graph_rows(g: FxGraph, hw: str, workload: str, rel: str, prov: Provenance,
                sink: RowSink) -> None:
    """One "kernel" measurement per vertex with a measured latency (each op timed alone)."""
    sink.counts["fx_python_nodes"] += g.python_nodes
    sink.counts["fx_unmapped_nodes"] += len(g.unmapped)
    sink.counts["fx_shape_mismatches"] += len(g.shape_mismatches)
    h = g.diagram.hash
    for name, ms in g.latency_ms.items():
        if ms <= 0:
            continue
        sub = g.diagram.subdiagram([name])
        sink.add("measurements", measurement_row(
            prov, hardware=hw, runtime_ms=ms, scope="kernel",
            subdiagram_hash=sink.subdiagram(sub, SOURCE, h), diagram_hash=h, key=(rel, name),
            extra_json=dumps({"fx_node": name, "measured_alone": True, "workload": workload}),
            **_LABEL_SOFTWARE))


def _model_config(path: Path, model: str) -> dict:
    f = path / "model_configs" / f"{model}.json"
    return json.loads(f.read_text()) if f.exists() else {}


# --- reading an fx graph -----------------------------------------------------------------------

_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                               torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)}
_ATTRIBUTES = {"device", "dtype", "shape", "min", "max", "eps", "ndim"}
_PY_FUNCTIONS: dict[str, Callable] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "floordiv": operator.floordiv, "pow": operator.pow, "eq": operator.eq, "ne": operator.ne,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "getitem": operator.getitem, "gelu": F.gelu, "matmul": torch.matmul, "bmm": torch.bmm,
    "addmm": torch.addmm, "baddbmm": torch.baddbmm, "arange": torch.arange, "full": torch.full,
    "ones": torch.ones, "zeros": torch.zeros, "tensor": torch.tensor, "cumsum": torch.cumsum,
    "max": torch.max, "min": torch.min, "where": torch.where, "tanh": torch.tanh,
    "softmax": F.softmax, "dropout": F.dropout, "embedding": F.embedding, "finfo": torch.finfo,
    "relu": F.relu,
}
_PY_METHODS = {"size", "dim", "view", "reshape", "permute", "transpose", "expand", "unsqueeze",
               "squeeze", "contiguous", "split", "chunk", "to", "type", "type_as", "long", "bool",
               "float", "half", "masked_fill", "masked_fill_", "flatten"}
_VIEW_METHODS = {"view": aten.view.default, "permute": aten.permute.default,
                 "transpose": aten.transpose.int, "expand": aten.expand.default,
                 "unsqueeze": aten.unsqueeze.default, "squeeze": aten.squeeze.dim,
                 "split": aten.split.Tensor, "chunk": aten.chunk.default}
_COPY_IF_STRIDED = {"reshape": "aten.reshape.default", "contiguous": "aten.contiguous.default",
                    "flatten": "aten.flatten.using_ints"}
_CASTS = {"to", "type", "type_as", "long", "bool", "float", "half"}
_ARITH = {"add": aten.add.Tensor, "sub": aten.sub.Tensor, "mul": aten.mul.Tensor,
          "truediv": aten.div.Tensor}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}
_TORCH_OPS = {"matmul": aten.matmul.default, "bmm": aten.bmm.default, "addmm": aten.addmm.default,
              "baddbmm": aten.baddbmm.default, "tanh": aten.tanh.default,
              "where": aten.where.self, "relu": aten.relu.default}
_ACTIVATIONS = {"ReLU": aten.relu.default, "Tanh": aten.tanh.default, "GELU": aten.gelu.default,
                "Sigmoid": aten.sigmoid.default, "SiLU": aten.silu.default}


@dataclass
class _Call:
    """How a node is priced: an ATen overload on named tensors, or a free (view-like) op."""

    op: Any  # an ATen overload; None for a free op priced by hand
    tensors: list[tuple[str, torch.Tensor]]  # (propagator, tensor) in the overload's order
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    kind: str | None = None  # overrides the overload's kind
    op_str: str | None = None  # overrides the recorded op
    attrs: tuple | None = None  # overrides the recorded scalar arguments


def _read(text: str, env: dict[str, Any]) -> Any:
    """An fx argument as NeuSight printed it: literals, node names, slice(...) and torch dtypes.
    Parsed, never evaluated as code."""
    return _value(ast.parse(text or "()", mode="eval").body, env)


def _value(n: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(n, ast.Constant):
        return n.value
    if isinstance(n, ast.Name):
        if n.id in env:
            return env[n.id]
        if n.id == "inf":
            return math.inf
    elif isinstance(n, ast.Tuple):
        return tuple(_value(x, env) for x in n.elts)
    elif isinstance(n, ast.List):
        return [_value(x, env) for x in n.elts]
    elif isinstance(n, ast.Dict):
        return {_value(k, env): _value(v, env) for k, v in zip(n.keys, n.values)}
    elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
        v = _value(n.operand, env)
        return -v if isinstance(n.op, ast.USub) else v
    elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "slice":
        return slice(*(_value(a, env) for a in n.args))
    elif isinstance(n, ast.Attribute) and f"torch.{n.attr}" in _DTYPES \
            and isinstance(n.value, ast.Name) and n.value.id == "torch":
        return _DTYPES[f"torch.{n.attr}"]
    raise ValueError(f"cannot read fx argument {ast.unparse(n)!r}")


def _refs(text: str) -> list[str | None]:
    """The node each positional argument names (None where it is not a bare name)."""
    body = ast.parse(text or "()", mode="eval").body
    elts = body.elts if isinstance(body, ast.Tuple) else [body]
    return [e.id if isinstance(e, ast.Name) else None for e in elts]


def _shape(text: str) -> tuple[int, ...]:
    v = ast.literal_eval(text) if text else ()
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _target_name(target: str) -> str:
    """"<built-in method matmul of type object at 0x..>" -> "matmul", "<function softmax at ..>"
    -> "softmax", "<built-in function add>" -> "add", "<class 'torch.finfo'>" -> "finfo"."""
    m = re.match(r"<(?:built-in method|built-in function|function) (\w+)|<class '(?:\w+\.)*(\w+)'>",
                 target)
    return (m[1] or m[2]) if m else target


def _module_info(meta: str, target: str) -> tuple[str, str]:
    """(module path, module class name) from a node's printed nn_module_stack."""
    stack = re.findall(r"\('([^']*)', <class '([^']+)'>\)", meta or "")
    if not stack:
        return target, ""
    path, cls = stack[-1]
    return path, cls.rsplit(".", 1)[-1]


def _config_value(config: dict, keys: tuple[str, ...], default: Any) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), default)


def _embedding_rows(config: dict, module: str, index: torch.Tensor) -> int:
    """Rows of an embedding table, from the model's config (the graph prints no weights)."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ("word_embeddings", "wte", "embed_tokens", "shared"):
        keys = ("vocab_size",)
    elif leaf in ("position_embeddings", "wpe", "embed_positions"):
        keys = ("max_position_embeddings", "n_positions")
    elif leaf == "token_type_embeddings":
        keys = ("type_vocab_size",)
    else:
        keys = ()
    return int(_config_value(config, keys, 0)) or int(index.numel())


def _dropout_p(config: dict, module: str) -> float:
    """A Dropout module's p, from the model's config (it only enters the vertex's attributes)."""
    if "attn" in module.rsplit(".", 1)[-1] or "attention.self" in module:
        keys = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")
    elif module.endswith("transformer.drop"):
        keys = ("embd_pdrop",)
    else:
        keys = ("hidden_dropout_prob", "resid_pdrop", "dropout", "dropout_rate")
    return float(_config_value(config, keys, 0.1))


class _Reader:
    """Replays one fx graph on meta tensors (strides and all), node by node, building vertices."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.env: dict[str, Any] = {}  # node -> its value (meta tensor, tuple, or Python value)
        self.names: dict[str, str | tuple[str, ...]] = {}  # node -> its propagator name(s)
        self.props: dict[str, Propagator] = {}
        self.vertices: list[Vertex] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.unmapped: dict[str, str] = {}
        self.python_nodes = 0
        self.mismatches: list[str] = []

    def prop(self, name: str, t: torch.Tensor, role: str, producer: str | None = None) -> str:
        self.props[name] = Propagator(name, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                                      role, producer)
        return name

    def node(self, r: dict) -> bool:
        """Replay one csv row; whether it became a vertex."""
        name, op = r["Name"], r["op"]
        out_shape, out_dtype = _shape(r["output_shape"]), _DTYPES.get(r["dtype"])
        if op in ("placeholder", "get_attr"):
            t = _meta(*out_shape, dtype=out_dtype or torch.float32)
            role = "input" if op == "placeholder" else (
                "parameter" if t.is_floating_point() else "buffer")
            self.env[name], self.names[name] = t, self.prop(name, t, role)
            if op == "placeholder":
                self.inputs.append(name)
            return False
        if op == "output":
            self.outputs = _flat_names(_read(r["_args"], self.names))
            return False
        module, cls = _module_info(r.get("meta", ""), r["target"])
        what = cls if op == "call_module" else (
            r["target"] if op == "call_method" else _target_name(r["target"]))
        try:
            args, kwargs = _read(r["_args"], self.env), _read(r["_kwargs"], self.env)
            value, call = self.evaluate(op, what, args, kwargs, _refs(r["_args"]), name, module,
                                        out_shape)
        except (ValueError, TypeError, RuntimeError, KeyError, IndexError) as e:
            self.unmapped[name] = f"{op} {what}: {type(e).__name__}: {e}"
            if out_dtype is None:  # a Python value we cannot compute: later nodes will say so
                return False
            value, call = None, None
        outs = tensors(value)
        if value is not None and not outs:
            self.env[name] = value
            self.python_nodes += 1
            return False
        if call is None:
            outs = [_meta(*out_shape, dtype=out_dtype)]
            value = outs[0]
        self.env[name] = value
        out_names = [name] if len(outs) == 1 else [f"{name}.{i}" for i in range(len(outs))]
        self.names[name] = out_names[0] if len(outs) == 1 else tuple(out_names)
        for n, t in zip(out_names, outs):
            self.prop(n, t, "activation", name)
        if len(outs) == 1 and tuple(outs[0].shape) != out_shape \
                and not (outs[0].dim() == 0 and out_shape == (1,)):
            self.mismatches.append(f"{name}: {tuple(outs[0].shape)} vs {out_shape}")
        if call is None:
            self.vertices.append(self.unmapped_vertex(r, name, what, outs[0], module))
        else:
            self.vertices.append(self.vertex(call, name, out_names, outs, module))
        return True

    def unmapped_vertex(self, r: dict, name: str, what: str, out: torch.Tensor,
                        module: str) -> Vertex:
        """A node this importer cannot replay, kept as the graph printed it: a pointwise op
        (one FLOP an output element) when it makes a new tensor, free when it only renames one."""
        ins = [(self.names[ref], self.env[ref]) for ref in _refs(r["_args"])
               if ref in self.names and isinstance(self.names[ref], str)
               and isinstance(self.env.get(ref), torch.Tensor)]
        computes = float(r.get("latency") or 0) > 0 and not (
            r["op"] == "call_method" and what in _VIEW_METHODS)
        nbytes = [t.numel() * t.element_size() if computes else 0 for _, t in ins]
        return Vertex(name=name, kind="elementwise" if computes else "free",
                      op=f"{r['op']}:{what}", inputs=tuple(n for n, _ in ins), outputs=(name,),
                      input_shapes=tuple(tuple(t.shape) for _, t in ins),
                      output_shapes=(tuple(out.shape),), dtype=_dtype_name(out),
                      flops=out.numel() if computes else 0, read_bytes=tuple(nbytes),
                      bytes_written=out.numel() * out.element_size() if computes else 0,
                      module=module)

    def tensor_args(self, args: Any, refs: list[str | None]) -> list[tuple[str, torch.Tensor]]:
        args = args if isinstance(args, tuple) else (args,)
        return [(self.names[ref], a) for a, ref in zip(args, refs)
                if isinstance(a, torch.Tensor) and ref in self.names
                and isinstance(self.names[ref], str)]

    def vertex(self, call: _Call, name: str, out_names: list[str], outs: list[torch.Tensor],
               module: str) -> Vertex:
        tensors = [t for _, t in call.tensors]
        if call.op is None:
            v = Vertex(name=name, kind="free", op=call.op_str or "", inputs=(), outputs=(),
                       input_shapes=tuple(tuple(t.shape) for t in tensors), output_shapes=(),
                       dtype=_dtype_name(tensors[0] if tensors else outs[0]), flops=0,
                       read_bytes=(0,) * len(tensors), bytes_written=0)
        else:
            v = single_op(call.op, tensors, args=call.args, kwargs=call.kwargs,
                          name=name).vertices[0]
        kind = call.kind or v.kind
        v = replace(v, name=name, kind=kind, op=call.op_str or v.op,
                    inputs=tuple(n for n, _ in call.tensors), outputs=tuple(out_names),
                    output_shapes=tuple(tuple(t.shape) for t in outs), module=module,
                    attrs=v.attrs if call.attrs is None else call.attrs)
        if kind == "free":
            v = replace(v, flops=0, read_bytes=(0,) * len(v.inputs), bytes_written=0)
        return v

    def evaluate(self, op: str, what: str, args: Any, kwargs: dict, refs: list, name: str,
                 module: str, out_shape: tuple) -> tuple[Any, _Call | None]:
        """The node's value on meta tensors, and how to price it (None: a Python value)."""
        args = args if isinstance(args, tuple) else (args,)
        named = self.tensor_args(args, refs)
        if op == "call_module":
            return self.module(what, args[0], refs[0], name, module, out_shape)
        if op == "call_method":
            if what not in _PY_METHODS:
                raise KeyError(f"method {what!r} is not mapped")
            value = getattr(args[0], what)(*args[1:], **kwargs)
            if not tensors(value):
                return value, None
            return value, self.method(what, args, kwargs, named, value)
        if what == "getattr":
            if args[1] not in _ATTRIBUTES:
                raise KeyError(f"attribute {args[1]!r} is not mapped")
            return getattr(args[0], args[1]), None
        if what not in _PY_FUNCTIONS:
            raise KeyError(f"function {what!r} is not mapped")
        value = _PY_FUNCTIONS[what](*args, **kwargs)
        if not tensors(value):
            return value, None
        return value, self.function(what, args, kwargs, refs, named, value)

    def module(self, cls: str, x: torch.Tensor, ref: str, name: str, module: str,
               out_shape: tuple) -> tuple[torch.Tensor, _Call]:
        xin = (self.names[ref], x)
        if cls == "Linear":
            w = _meta(out_shape[-1], x.shape[-1])
            # Hugging Face LM heads have no bias; every other Linear in these models has one.
            bias = [] if module.endswith("lm_head") else [_meta(out_shape[-1])]
            params = [(self.prop(f"{name}.weight", w, "parameter"), w)] + \
                [(self.prop(f"{name}.bias", b, "parameter"), b) for b in bias]
            return F.linear(x, w, *bias), _Call(aten.linear.default, [xin, *params])
        if cls == "LayerNorm":
            h = x.shape[-1]
            w, b = _meta(h), _meta(h)
            eps = float(_config_value(self.config, ("layer_norm_eps", "layer_norm_epsilon"), 1e-5))
            params = [(self.prop(f"{name}.{p}", t, "parameter"), t)
                      for p, t in (("weight", w), ("bias", b))]
            return F.layer_norm(x, (h,), w, b, eps), _Call(
                _LAYER_NORM, [xin, *params], args=([h], eps), attrs=(("arg1", (h,)), ("arg4", eps)))
        if cls == "Embedding":
            w = _meta(_embedding_rows(self.config, module, x), out_shape[-1])
            wn = self.prop(f"{name}.weight", w, "parameter")
            return F.embedding(x, w), _Call(aten.embedding.default, [(wn, w), xin])
        if cls == "Dropout":  # inference: the identity
            return x.view(x.shape), _Call(aten.dropout.default, [xin],
                                          args=(_dropout_p(self.config, module), False))
        if cls in _ACTIVATIONS:
            return _ACTIVATIONS[cls](x), _Call(_ACTIVATIONS[cls], [xin])
        raise KeyError(f"module class {cls!r} is not mapped")

    def method(self, what: str, args: tuple, kwargs: dict, named: list, value: Any) -> _Call:
        x = args[0]
        if what in _VIEW_METHODS:
            rest = args[1:]
            if what in ("view", "permute", "expand"):  # x.view(2, 3) and x.view((2, 3)) alike
                sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
                rest = (tuple(int(s) for s in sizes),)
            if "dim" in kwargs:
                rest = (*rest, kwargs["dim"])
            return _Call(_VIEW_METHODS[what], named[:1], args=rest, kind="free")
        if what in _COPY_IF_STRIDED:
            # Free on a contiguous input; a copy kernel otherwise (as capture prices it).
            if x.is_contiguous():
                return _Call(None, named[:1], kind="free", op_str=_COPY_IF_STRIDED[what])
            return _Call(aten.clone.default, named[:1], kind="copy", op_str=_COPY_IF_STRIDED[what])
        if what in _CASTS:
            if value.dtype == x.dtype:
                return _Call(None, named[:1], kind="free", op_str="aten.to.dtype")
            return _Call(aten.to.dtype, named[:1], kwargs={"dtype": value.dtype})
        if what in ("masked_fill", "masked_fill_"):
            fill = args[2] if len(args) > 2 else kwargs.get("value")
            op = aten.masked_fill.Scalar if what == "masked_fill" else aten.masked_fill_.Scalar
            return _Call(op, named[:2], args=(float(fill),))
        raise KeyError(f"method {what!r} is not priced")

    def function(self, what: str, args: tuple, kwargs: dict, refs: list, named: list,
                 value: Any) -> _Call:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        scalars = tuple(a for a in args if not isinstance(a, torch.Tensor))
        if what in _ARITH:
            if what == "sub" and not isinstance(args[0], torch.Tensor):
                return _Call(aten.rsub.Scalar, named, args=scalars)
            if what == "truediv" and not isinstance(args[0], torch.Tensor):
                raise ValueError("scalar / tensor is not mapped")
            return _Call(_ARITH[what], named, args=scalars)
        if what in _COMPARE:
            overload = "Tensor" if len(tensors) == 2 else "Scalar"
            return _Call(getattr(getattr(aten, what), overload), named, args=scalars)
        if what == "pow":
            return _Call(aten.pow.Tensor_Tensor if len(tensors) == 2 else aten.pow.Tensor_Scalar,
                         named, args=scalars)
        if what == "getitem":
            src = args[0]
            if isinstance(src, (tuple, list)):  # one output of a multi-output op (split)
                parent = self.names[refs[0]]
                return _Call(None, [(parent[args[1]], src[args[1]])], kind="free",
                             op_str="<built-in function getitem>")
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) for i in index):
                return _Call(aten.index.Tensor, named, kind="gather", op_str="aten.index.Tensor")
            picks = any(isinstance(i, int) for i in index)
            return _Call(None, named[:1], kind="free",
                         op_str="aten.select.int" if picks else "aten.slice.Tensor")
        if what in _TORCH_OPS:
            return _Call(_TORCH_OPS[what], named)
        if what == "gelu":
            return _Call(aten.gelu.default, named, kwargs={k: v for k, v in kwargs.items()
                                                           if k == "approximate"})
        if what in ("max", "min") and len(tensors) == 2:
            return _Call(aten.maximum.default if what == "max" else aten.minimum.default, named)
        if what == "cumsum":
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            return _Call(aten.cumsum.default, named, args=(dim,))
        if what == "softmax":
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            return _Call(aten.softmax.int, named[:1], args=(dim,))
        if what == "dropout":
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            return _Call(aten.dropout.default, named[:1], args=(p, training),
                         kind="free" if not training else "elementwise")
        if what == "embedding":  # F.embedding(index, weight) is aten.embedding(weight, index)
            return _Call(aten.embedding.default, named[::-1])
        if what in ("arange", "full", "ones", "zeros", "tensor"):
            meta = {"dtype": value.dtype, "device": torch.device("meta")}
            if what == "arange":
                ends = [a for a in scalars if isinstance(a, (int, float))]
                start = ends[0] if len(ends) > 1 else 0
                return _Call(aten.arange.start, [], args=(start, ends[-1]), kwargs=meta)
            if what == "full":
                return _Call(aten.full.default, [], args=(list(value.shape), args[1]), kwargs=meta)
            if what == "tensor":
                return _Call(aten.scalar_tensor.default, [], args=(float(args[0]),), kwargs=meta)
            return _Call(getattr(aten, what).default, [], args=(list(value.shape),), kwargs=meta)
        raise KeyError(f"function {what!r} is not priced")


def _dtype_name(t: torch.Tensor) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        t.dtype, str(t.dtype).removeprefix("torch."))


def _flat(value: Any) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _flat(v)]
    return [value]


def _flat_names(value: Any) -> list[str]:
    return [v for v in _flat(value) if isinstance(v, str)]


def read_fx_graph(path: Path, config: dict, *, name: str, batch: int, seq: int) -> FxGraph:
    """A NeuSight per-node csv as a Diagram (fp32), with each vertex's measured latency (ms)."""
    reader = _Reader(config)
    latency: dict[str, float] = {}
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if reader.node(r):
                latency[r["Name"]] = _number(r.get("latency")) or 0.0
    used = {n for v in reader.vertices for n in (*v.inputs, *v.outputs)}
    props = tuple(p for n, p in reader.props.items() if n in used or n in reader.inputs)
    diagram = Diagram(name=name, vertices=tuple(reader.vertices), propagators=props,
                      inputs=tuple(reader.inputs), outputs=tuple(dict.fromkeys(reader.outputs)),
                      meta=(("batch", batch), ("seq", seq), ("dtype", "fp32"), ("source", SOURCE)))
    return FxGraph(diagram, latency, reader.unmapped, reader.python_nodes, reader.mismatches)
