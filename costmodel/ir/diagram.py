"""The diagram IR: vertices are computation units, propagators are the tensors between them.

All values are frozen. A `Diagram` is one captured model at fixed shapes and dtype; a
`Subdiagram` is a set of its vertices that runs as one kernel. Both have a content hash that
depends on structure, op kinds, shapes, dtypes and attributes, never on vertex or propagator
names nor on the module path, so the same kernel in layer 3 and layer 7 hashes the same.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# Normalised op kinds. "free" ops (views, reshapes, eval-mode dropout) launch no kernel.
OP_KINDS = (
    "matmul",       # linear, addmm, mm, bmm, matmul, baddbmm
    "conv",         # convolution, conv1d, conv2d
    "attention",    # scaled dot-product attention: QK^T, mask, softmax, V in one op
    "softmax",
    "layer_norm",   # layer_norm, rms_norm, group_norm
    "gelu",
    "activation",   # relu, silu, tanh, sigmoid
    "add",
    "mul",
    "elementwise",  # other pointwise ops: sub, div, pow, comparisons, where, casts
    "reduction",    # sum, mean, max, cumsum
    "embedding",
    "gather",       # index, gather, index_select
    "copy",         # a materialising copy: contiguous of a strided tensor, clone, cat
    "fill",         # tensors made from nothing: arange, ones, full
    "free",
)
MASK_KINDS = ("none", "causal", "padding", "scgpt", "custom")
COMPUTE_DTYPES = ("fp32", "tf32", "fp16", "bf16")  # tf32: fp32 tensors, TF32 tensor-core math
TENSOR_DTYPE_BYTES = {"complex128": 16, "float64": 8, "int64": 8, "uint64": 8, "complex64": 8,
                      "float32": 4, "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2,
                      "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}


def element_bytes(dtype: str) -> int:
    """Bytes of one element of a compute dtype ("fp32" 4, "fp16" 2, ...) or a tensor dtype
    name ("float32", "int64", ...)."""
    if dtype in ("fp32", "tf32"):
        return 4
    if dtype in ("fp16", "bf16"):
        return 2
    if dtype not in TENSOR_DTYPE_BYTES:
        raise ValueError(f"no size known for dtype {dtype!r}")
    return TENSOR_DTYPE_BYTES[dtype]




@dataclass(frozen=True)
class Propagator:
    """A tensor. `role` is "input" (user input), "parameter", "buffer", "constant" or "activation"."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the prefix: "float32", "bfloat16", "int64", "bool"
    role: str = "activation"
    producer: str | None = None  # the vertex that writes it; None for inputs and parameters

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        return self.numel * element_bytes(self.dtype)


@dataclass(frozen=True)
class Vertex:
    """One computation unit (one ATen op). FLOPs in floating-point operations, bytes in bytes."""

    name: str
    kind: str  # one of OP_KINDS
    op: str  # the ATen overload it came from, e.g. "aten.linear.default"
    inputs: tuple[str, ...]  # names of the propagators it reads, in argument order
    outputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    dtype: str  # compute dtype: one of COMPUTE_DTYPES, or the tensor dtype for integer/bool ops
    flops: int
    read_bytes: tuple[int, ...]  # bytes read from each input (an embedding reads only its rows)
    bytes_written: int
    module: str = ""  # the module path it came from, e.g. "encoder.layer.3.attention.self"
    mask_kind: str | None = None  # attention only: one of MASK_KINDS
    mask_density: float | None = None  # attention only: fraction of (query, key) pairs the mask keeps
    attrs: tuple[tuple[str, Any], ...] = ()  # scalar arguments that change the work (scale, eps, dim)

    @property
    def bytes_read(self) -> int:
        return sum(self.read_bytes)

    @property
    def is_free(self) -> bool:
        return self.kind == "free"

    def gemm_shape(self) -> tuple[int, int, int, int]:
        """(batch, M, N, K) of a matmul vertex: out is (batch..., M, N), the reduction is K."""
        if self.kind != "matmul":
            raise ValueError(f"{self.name} is a {self.kind}, not a matmul")
        given = dict(self.attrs).get("gemm_bmnk")  # importers whose ops name their dims (XLA dot)
        if given is not None:
            return tuple(given)
        out = self.output_shapes[0]
        a = self.input_shapes[1] if self.op.split(".")[1] in ("addmm", "baddbmm", "addbmm") \
            else self.input_shapes[0]
        n = out[-1] if len(out) >= 1 else 1
        if self.op.split(".")[1] == "linear":  # (..., K) @ (N, K)^T: leading dims flatten into M
            return 1, math.prod(out[:-1]), n, a[-1]
        m = out[-2] if len(out) >= 2 else 1
        return math.prod(out[:-2]), m, n, a[-1]

    def content(self) -> tuple:
        """What identifies this vertex's work, without its name or place in the model."""
        density = None if self.mask_density is None else round(self.mask_density, 6)
        return (self.kind, self.op, self.dtype, self.output_shapes, self.flops, self.read_bytes,
                self.bytes_written, self.mask_kind, density, self.attrs)


def _digest(value: object) -> str:
    return hashlib.blake2b(repr(value).encode(), digest_size=16).hexdigest()


def content_hash(vertices: tuple[Vertex, ...], propagators: dict[str, Propagator],
                 escaping: frozenset[str] = frozenset()) -> str:
    """A Merkle hash of a set of vertices: each vertex is labelled by its content and the labels
    of what it reads (a member's output, or a boundary tensor by shape, dtype and role), so the
    hash sees the whole structure but no names. `escaping`: tensors members read that are also
    written out for the rest of the graph (a residual sum the next layer reads), memory traffic
    the structure alone does not show. Vertices must be in topological order."""
    produced = {out: (v.name, i) for v in vertices for i, out in enumerate(v.outputs)}
    labels: dict[str, str] = {}
    for v in vertices:
        reads = []
        for j, name in enumerate(v.inputs):
            first = v.inputs.index(name)
            if first != j:  # add(x, x) differs from add(x, y)
                reads.append(("same-as", first))
            elif name in produced:
                src, idx = produced[name]
                reads.append((labels[src], idx))
            else:
                p = propagators[name]
                reads.append(("boundary", p.shape, p.dtype, p.role))
        labels[v.name] = _digest((v.content(), tuple(reads)))
    written = sorted((labels[produced[n][0]], produced[n][1]) for n in escaping if n in produced)
    if written:
        return _digest(("diagram", tuple(sorted(labels.values())), "escaping", tuple(written)))
    return _digest(("diagram", tuple(sorted(labels.values()))))


@dataclass(frozen=True)
class Subdiagram:
    """A set of vertices of one diagram that runs as one kernel (the unit the cost model prices)."""

    vertices: tuple[Vertex, ...]  # topological order
    inputs: tuple[Propagator, ...]  # tensors read from memory
    outputs: tuple[Propagator, ...]  # tensors written to memory (read outside, or model outputs)
    internal: tuple[Propagator, ...] = ()  # tensors passed between members, kept on chip

    @property
    def name(self) -> str:
        return "+".join(v.name for v in self.vertices)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(v.kind for v in self.vertices)

    @property
    def flops(self) -> int:
        return sum(v.flops for v in self.vertices)

    @property
    def bytes_read(self) -> int:
        """Bytes read from memory: each boundary input once, at the most any member reads of it."""
        boundary = {p.name for p in self.inputs}
        read: dict[str, int] = {}
        for v in self.vertices:
            for name, nbytes in zip(v.inputs, v.read_bytes):
                if name in boundary:
                    read[name] = max(read.get(name, 0), nbytes)
        return sum(read.values())

    @property
    def bytes_written(self) -> int:
        return sum(p.bytes for p in self.outputs)

    @property
    def module(self) -> str:
        return self.vertices[0].module

    @cached_property
    def hash(self) -> str:
        props = {p.name: p for p in (*self.inputs, *self.outputs, *self.internal)}
        read = {n for v in self.vertices for n in v.inputs}
        return content_hash(self.vertices, props, frozenset(p.name for p in self.outputs if p.name in read))

    def to_record(self) -> dict:
        """Everything needed to rebuild this subdiagram alone (`from_record`), JSON-ready."""
        return {"vertices": [_vertex_record(v) for v in self.vertices],
                "inputs": [_propagator_record(p) for p in self.inputs],
                "outputs": [_propagator_record(p) for p in self.outputs],
                "internal": [_propagator_record(p) for p in self.internal]}

    @classmethod
    def from_record(cls, record: dict) -> Subdiagram:
        return cls(tuple(_vertex_from(v) for v in record["vertices"]),
                   *(tuple(_propagator_from(p) for p in record[k])
                     for k in ("inputs", "outputs", "internal")))

    def to_dict(self) -> dict:
        return {"name": self.name, "hash": self.hash, "ops": [v.kind for v in self.vertices],
                "vertices": [v.name for v in self.vertices], "module": self.module,
                "flops": self.flops, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}


@dataclass(frozen=True)
class Diagram:
    """A captured model: vertices in topological order and every tensor they touch."""

    name: str
    vertices: tuple[Vertex, ...]
    propagators: tuple[Propagator, ...]
    inputs: tuple[str, ...]  # user-input propagators
    outputs: tuple[str, ...]  # model-output propagators
    meta: tuple[tuple[str, Any], ...] = field(default=())  # batch, seq, dtype, source, ...

    @cached_property
    def vertex(self) -> dict[str, Vertex]:
        return {v.name: v for v in self.vertices}

    @cached_property
    def propagator(self) -> dict[str, Propagator]:
        return {p.name: p for p in self.propagators}

    @cached_property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        """Propagator name -> names of the vertices that read it."""
        out: dict[str, list[str]] = {p.name: [] for p in self.propagators}
        for v in self.vertices:
            for name in dict.fromkeys(v.inputs):
                out[name].append(v.name)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def hash(self) -> str:
        return content_hash(self.vertices, self.propagator)

    @property
    def flops(self) -> int:
        return sum(v.flops for v in self.vertices)

    def info(self, key: str, default: Any = None) -> Any:
        return dict(self.meta).get(key, default)

    def storage_of(self, name: str) -> str:
        """The propagator whose memory `name` lives in: free (view-like) vertices alias their first input."""
        while (src := self.propagator[name].producer) is not None and self.vertex[src].is_free \
                and self.vertex[src].inputs:
            name = self.vertex[src].inputs[0]
        return name

    def subdiagram(self, names: tuple[str, ...] | list[str]) -> Subdiagram:
        """The kernel made of the named vertices. A tensor is a boundary input when no member
        writes it, a boundary output when a non-member or the model's output reads it; reads and
        writes through free (view-like) vertices count against the storage they alias."""
        members = set(names)
        unknown = members - self.vertex.keys()
        if unknown:
            raise KeyError(f"no vertices named {sorted(unknown)} in diagram {self.name!r}")
        vertices = tuple(v for v in self.vertices if v.name in members)
        written = {o for v in vertices for o in v.outputs}
        model_outputs = {self.storage_of(o) for o in self.outputs}
        inputs, internal, outputs = {}, {}, {}
        for v in vertices:
            for name in v.inputs:
                if name not in written:
                    inputs[name] = self.propagator[name]
            for name in v.outputs:
                if self._read_outside(name, members) or self.storage_of(name) in model_outputs \
                        or name in self.outputs:
                    outputs[name] = self.propagator[name]
                else:
                    internal[name] = self.propagator[name]
        return Subdiagram(vertices, tuple(inputs.values()), tuple(outputs.values()),
                          tuple(internal.values()))

    def _read_outside(self, name: str, members: set[str]) -> bool:
        """Whether a vertex outside `members` reads `name`, directly or through free vertices."""
        for c in self.consumers[name]:
            if c in members:
                continue
            consumer = self.vertex[c]
            if not consumer.is_free:
                return True
            if any(self._read_outside(o, members) for o in consumer.outputs):
                return True
        return False

    def to_dict(self) -> dict:
        """JSON-ready form: vertices, propagators, and the attention mask kinds."""
        return {
            "name": self.name,
            "hash": self.hash,
            "meta": dict(self.meta),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "mask_kinds": sorted({v.mask_kind for v in self.vertices if v.mask_kind}),
            "vertices": [{**_vertex_record(v), "bytes_read": v.bytes_read} for v in self.vertices],
            "propagators": [{**_propagator_record(p), "bytes": p.bytes} for p in self.propagators],
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Diagram:
        """Inverse of `to_dict` (a diagram posted to the HTTP service, or read from a file).
        Raises ValueError naming what is missing or malformed."""
        try:
            vertices = tuple(_vertex_from(v) for v in doc["vertices"])
            propagators = tuple(_propagator_from(p) for p in doc["propagators"])
            d = cls(name=str(doc.get("name", "posted")), vertices=vertices, propagators=propagators,
                    inputs=tuple(doc.get("inputs", ())), outputs=tuple(doc.get("outputs", ())),
                    meta=tuple((doc.get("meta") or {}).items()))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a diagram: missing or malformed {e}") from None
        known = d.propagator.keys()
        for v in vertices:
            missing = [n for n in (*v.inputs, *v.outputs) if n not in known]
            if missing:
                raise ValueError(f"vertex {v.name!r} names unknown propagators {missing}")
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _vertex_record(v: Vertex) -> dict:
    return {"name": v.name, "kind": v.kind, "op": v.op, "inputs": list(v.inputs),
            "outputs": list(v.outputs), "input_shapes": [list(s) for s in v.input_shapes],
            "output_shapes": [list(s) for s in v.output_shapes], "dtype": v.dtype,
            "flops": v.flops, "read_bytes": list(v.read_bytes), "bytes_written": v.bytes_written,
            "module": v.module, "mask_kind": v.mask_kind, "mask_density": v.mask_density,
            "attrs": [[k, _jsonable(x)] for k, x in v.attrs]}


def _vertex_from(r: dict) -> Vertex:
    return Vertex(
        name=r["name"], kind=r["kind"], op=r["op"], inputs=tuple(r["inputs"]),
        outputs=tuple(r["outputs"]), input_shapes=tuple(tuple(s) for s in r["input_shapes"]),
        output_shapes=tuple(tuple(s) for s in r["output_shapes"]), dtype=r["dtype"],
        flops=r["flops"], read_bytes=tuple(r["read_bytes"]), bytes_written=r["bytes_written"],
        module=r["module"], mask_kind=r["mask_kind"], mask_density=r["mask_density"],
        attrs=tuple((k, _hashable(x)) for k, x in r["attrs"]))


def _propagator_record(p: Propagator) -> dict:
    return {"name": p.name, "shape": list(p.shape), "dtype": p.dtype, "role": p.role,
            "producer": p.producer}


def _propagator_from(r: dict) -> Propagator:
    return Propagator(r["name"], tuple(r["shape"]), r["dtype"], r["role"], r["producer"])


def _hashable(x: Any) -> Any:
    return tuple(_hashable(i) for i in x) if isinstance(x, list) else x


def _jsonable(x: Any) -> Any:
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, tuple):
        return [_jsonable(i) for i in x]
    return str(x)
