"""What both TpuGraphs forms share: where the data comes from, what an XLA opcode and element
type become in a diagram, and the rows one imported graph carries."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from costmodel.data.protobuf import WireError
from costmodel.ir.diagram import OP_KINDS, Diagram, Vertex
from costmodel.ir.rules import COMPUTE_DTYPES

SOURCE = "tpugraphs"
HARDWARE = "tpu-v3"
LICENCE = "Apache-2.0"
ORIGIN = "github.com/google-research-datasets/tpu_graphs"
CITATION = ("Phothilimthana et al., TpuGraphs: A Performance Prediction Dataset on Large Tensor "
            "Computational Graphs, NeurIPS 2023 Datasets and Benchmarks, arXiv:2308.13490; "
            "runtimes measured on TPU v3")


# --------------------------------------------------------------------------------------------
# HLO opcodes -> diagram kinds
# --------------------------------------------------------------------------------------------
CONV_KIND = "conv" if "conv" in OP_KINDS else "matmul"
_KIND_OF: dict[str, str] = {
    "dot": "matmul",
    "convolution": CONV_KIND,
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
ZERO_FLOP_KINDS = ("gather", "copy", "fill", "free", "embedding")
# Reads only as many bytes of their first operand as they write.
PARTIAL_READ = ("slice", "dynamic-slice", "gather")

# XLA PrimitiveType (xla_data.proto) -> tensor dtype name as `costmodel.ir.diagram` spells them.
DTYPES = {1: "bool", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "uint8", 7: "uint16",
          8: "uint32", 9: "uint64", 10: "float16", 11: "float32", 12: "float64", 15: "complex64",
          16: "bfloat16", 18: "complex128"}
TUPLE, OPAQUE, TOKEN = 13, 14, 17
COMPUTE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def element_dtype(element_type: int) -> str:
    if element_type not in DTYPES:
        raise WireError(f"XLA element type {element_type} is not supported "
                        f"(known: {sorted(DTYPES)}, tuples, tokens)")
    return DTYPES[element_type]


def op_kind(opcode: str) -> str:
    return _KIND_OF.get(opcode, _DEFAULT_KIND)


def numel(dims: Any) -> int:
    return math.prod(int(d) for d in dims)


def diagram_meta(vertices: list[Vertex], extra: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Diagram meta: the source, and the compute dtype that carries most of the FLOPs."""
    by_dtype: Counter = Counter()
    for v in vertices:
        if v.dtype in COMPUTE_DTYPES:
            by_dtype[v.dtype] += v.flops + 1  # +1: a graph of zero-FLOP ops still has a dtype
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else None
    return tuple(sorted({"source": SOURCE, "dtype": dtype, **extra}.items()))


def measured_ms(ns: int, error: bool) -> tuple[float | None, str | None]:
    """(runtime in ms, error) of one run from its nanoseconds. tpu_graphs' own loader drops runs
    marked failed and runs of at most 1 ns (no profile); here they stay, as errors."""
    if error:
        return None, "the run failed (ConfigProfile.error is set)"
    if ns <= 1:
        return None, f"no valid runtime recorded (compute_time_ns={ns})"
    return ns / 1e6, None


@dataclass(frozen=True)
class Graph:
    """One imported graph: its diagram, the config to store with it, its measurement rows."""

    diagram: Diagram
    config: dict
    measurements: list[dict]
