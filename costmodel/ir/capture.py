"""Capture a model as a `Diagram` through torch.export on meta tensors (no weights allocated).

Each ATen call in the exported graph becomes a vertex with a normalised kind, its FLOPs and the
bytes it reads and writes; each tensor becomes a propagator. Attention keeps its mask: SDPA's
`is_causal`, or an explicit mask tensor, which is evaluated (it is built from shapes alone, e.g.
arange and comparisons) and classified as none, causal, padding, scgpt or custom.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx

from costmodel.ir.diagram import Diagram, Propagator, Subdiagram, Vertex
from costmodel.ir.rules import COMPUTE_DTYPES

# The torch dtype each compute dtype runs in (tf32: fp32 tensors, TF32 tensor-core math).
TORCH_DTYPES = dict(zip(COMPUTE_DTYPES, (torch.float32, torch.float32, torch.float16, torch.bfloat16)))
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

_KINDS: dict[str, tuple[str, ...]] = {
    "matmul": ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "addbmm", "addmv", "mv"),
    "conv": ("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "cudnn_convolution"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"),
    "softmax": ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"),
    "layer_norm": ("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm"),
    "gelu": ("gelu",),
    "activation": ("relu", "relu_", "silu", "tanh", "sigmoid", "hardtanh", "elu", "leaky_relu",
                   "mish", "softplus", "hardswish", "hardsigmoid"),
    "add": ("add", "add_"),
    "mul": ("mul", "mul_"),
    "elementwise": ("sub", "rsub", "div", "pow", "neg", "exp", "log", "sqrt", "rsqrt", "erf",
                    "abs", "where", "masked_fill", "masked_fill_", "clamp", "clamp_min", "eq",
                    "ne", "lt", "le", "gt", "ge", "__and__", "__or__", "bitwise_and",
                    "bitwise_or", "bitwise_not", "logical_not", "logical_and", "logical_or",
                    "_to_copy", "to", "type_as", "maximum", "minimum", "cos", "sin",
                    "reciprocal", "diff", "tril", "triu", "floor_divide", "remainder", "sign"),
    "reduction": ("sum", "mean", "amax", "amin", "max", "min", "cumsum", "var", "std", "argmax",
                  "argmin", "any", "all", "norm", "prod", "logsumexp"),
    "embedding": ("embedding",),
    "gather": ("index", "gather", "index_select", "take_along_dim"),
    "copy": ("clone", "cat", "stack", "copy", "copy_", "constant_pad_nd", "pad", "repeat",
             "flip", "roll", "repeat_interleave"),
    "fill": ("arange", "ones", "zeros", "full", "new_ones", "new_zeros", "empty", "ones_like",
             "zeros_like", "full_like", "scalar_tensor", "new_full", "new_empty", "empty_like",
             "lift_fresh_copy"),
    "free": ("view", "_unsafe_view", "transpose", "t", "permute", "unsqueeze", "squeeze",
             "expand", "expand_as", "slice", "select", "narrow", "split", "split_with_sizes",
             "chunk", "unbind", "alias", "detach", "dropout", "feature_dropout", "view_as",
             "unflatten", "as_strided", "getitem", "movedim", "numpy_T", "mT", "_reshape_alias"),
}
_KIND_OF = {name: kind for kind, names in _KINDS.items() for name in names}
# Ops that are free when their input is already contiguous, a copy kernel otherwise.
_FREE_IF_CONTIGUOUS = {"reshape", "contiguous", "flatten"}
# Ops with no tensor result that a graph carries for bookkeeping.
_IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range_for_size",
            "_assert_async", "sym_numel", "sym_stride", "sym_storage_offset"}
# Floating-point operations per output element of pointwise work (per input element for norms
# and reductions): counted by the arithmetic in the usual formulation, not by any one kernel.
_FLOPS_PER_ELEMENT = {"gelu": 8, "silu": 4, "sigmoid": 4, "tanh": 4, "mish": 6, "softplus": 3,
                      "elu": 3, "softmax": 5, "layer_norm": 8, "rms_norm": 4, "group_norm": 8,
                      "pow": 1, "erf": 4, "exp": 1, "log": 1}
_ZERO_FLOP_KINDS = {"embedding", "gather", "copy", "fill", "free"}


def op_name(target: Any) -> str:
    """The ATen op's base name: aten.linear.default -> "linear", operator.getitem -> "getitem"."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def normalise(name: str) -> str | None:
    """The op kind of an ATen base name, or None for ops this capture does not know."""
    return _KIND_OF.get(name)


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a value: a tensor, or nested lists and tuples of them, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    return []


def _footprint(t: torch.Tensor) -> int:
    """Bytes a kernel reads of `t`: its strided extent, so an expanded (stride 0) tensor counts once."""
    if t.numel() == 0:
        return 0
    extent = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 1)
    return min(extent, t.numel()) * t.element_size()


def _node_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Tensor-valued input nodes in argument order (repeats kept: add(x, x) reads x twice)."""
    found: list[torch.fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, torch.fx.Node):
            if tensors(a.meta.get("val")):
                found.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return found


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def _matmul_flops(name: str, ins: list[torch.Tensor], out: torch.Tensor) -> int:
    """2 * M * N * K multiply-adds, plus one add per output for a bias (linear, addmm, baddbmm)."""
    if name in ("addmm", "baddbmm", "addbmm", "addmv"):
        a = ins[1]
        bias = True
    elif name == "linear":
        a = ins[0]
        bias = len(ins) > 2
    else:
        a = ins[0]
        bias = False
    k = a.shape[-1]
    return 2 * out.numel() * k + (out.numel() if bias else 0)


def _attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """QK^T and PV: 2*B*H*Sq*Sk*(D + Dv); the softmax's exponentials are not counted."""
    rows = q.numel() // q.shape[-1]  # B * H * Sq
    return 2 * rows * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _conv_flops(ins: list[torch.Tensor], out: torch.Tensor) -> int:
    """2 * (output elements) * (input channels per group) * (kernel window), plus the bias add.
    The weight is (C_out, C_in / groups, *window), so its numel over C_out is the per-output work."""
    weight = ins[1]
    per_output = weight.numel() // weight.shape[0]
    return 2 * out.numel() * per_output + (out.numel() if len(ins) > 2 else 0)


def _flops(kind: str, name: str, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> int:
    if kind in _ZERO_FLOP_KINDS or not outs:
        return 0
    if kind == "matmul":
        return _matmul_flops(name, ins, outs[0])
    if kind == "attention":
        return _attention_flops(ins[0], ins[1], ins[2])
    if kind == "conv":
        return _conv_flops(ins, outs[0])
    per = _FLOPS_PER_ELEMENT.get(name, _FLOPS_PER_ELEMENT.get(kind, 1))
    if kind in ("layer_norm", "reduction", "softmax"):
        return per * (ins[0].numel() if ins else outs[0].numel())
    return per * outs[0].numel()


def _attention_mask(node: torch.fx.Node, module: torch.fx.GraphModule,
                    cache: dict) -> tuple[str, float]:
    """(mask kind, density) of an SDPA call."""
    q, k = node.args[0].meta["val"], node.args[1].meta["val"]
    sq, sk = q.shape[-2], k.shape[-2]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
    if causal:
        allowed = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
        return "causal", allowed.float().mean().item()
    if mask is None:
        return "none", 1.0
    if mask not in cache:
        cache[mask] = _classify(_evaluate(mask, module))
    return cache[mask]


def _evaluate(mask: torch.fx.Node, module: torch.fx.GraphModule) -> torch.Tensor | None:
    """Run the part of the graph that builds `mask` on real CPU tensors, or None when it reads a
    model input or a weight (then the mask depends on data and cannot be known at capture)."""
    order, seen, stack = [], set(), [mask]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op in ("placeholder", "get_attr"):
            return None
        order.append(n)
        stack.extend(n.all_input_nodes)
    ordered = [n for n in module.graph.nodes if n in seen]
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in ordered:
        new = graph.node_copy(n, lambda x: env[x])
        if "device" in new.kwargs:
            new.kwargs = {**new.kwargs, "device": torch.device("cpu")}
        env[n] = new
    graph.output(env[mask])
    with torch.no_grad():
        return torch.fx.GraphModule(torch.nn.Module(), graph)()


def _classify(mask: torch.Tensor | None) -> tuple[str, float]:
    """Name the pattern of a mask (bool: True = attend; float: additive, large negative = masked)."""
    if mask is None:
        return "custom", 1.0
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    sq, sk = allowed.shape[-2:]
    slices = allowed.reshape(-1, sq, sk)
    density = slices.float().mean().item()
    kinds = {_classify_2d(s) for s in slices.unique(dim=0)}
    if len(kinds) == 1:
        return kinds.pop(), density
    if kinds <= {"none", "padding"}:
        return "padding", density
    return "custom", density


def _classify_2d(a: torch.Tensor) -> str:
    sq, sk = a.shape
    if bool(a.all()):
        return "none"
    if torch.equal(a, torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)):
        return "causal"
    if sq == sk:
        # scGPT: the cell token and the known genes (the first n positions) see each other;
        # each query gene sees the known genes and itself.
        n = int(a[0].sum())
        idx = torch.arange(sk)
        expected = (idx[None, :] < n) | (idx[:, None] == idx[None, :])
        if 0 < n < sk and torch.equal(a, expected):
            return "scgpt"
    if bool((a == a[:1]).all()):
        return "padding"
    return "custom"


def _compute_dtype(kind: str, dtype: str, t: torch.Tensor | None) -> str:
    if t is None:
        return dtype
    if t.dtype in _SHORT:
        if t.dtype == torch.float32 and dtype == "tf32" and kind in ("matmul", "attention"):
            return "tf32"
        return _SHORT[t.dtype]
    return str(t.dtype).removeprefix("torch.")


def _role(spec_kind: str) -> str:
    return {"PARAMETER": "parameter", "BUFFER": "buffer", "CONSTANT_TENSOR": "constant",
            "USER_INPUT": "input", "CUSTOM_OBJ": "constant", "TOKEN": "constant"}.get(spec_kind, "input")


def capture_module(module: torch.nn.Module, args: tuple, kwargs: dict | None = None, *,
                   name: str, dtype: str = "fp32", meta: dict | None = None) -> Diagram:
    """Export `module` called on `args` (meta or fake tensors: nothing is allocated) into a Diagram.

    `dtype` names the compute dtype: the module and inputs must already be in its torch dtype;
    "tf32" marks fp32 matmuls and attention as running on TF32 tensor cores.
    """
    return export_module(module, args, kwargs, name=name, dtype=dtype, meta=meta)[1]


def export_module(module: torch.nn.Module, args: tuple, kwargs: dict | None = None, *,
                  name: str, dtype: str = "fp32", meta: dict | None = None
                  ) -> tuple[torch.export.ExportedProgram, Diagram]:
    """`capture_module`, also returning the exported program: each vertex is named after the
    graph node it came from, so measurement can run a kernel's own nodes."""
    exported = torch.export.export(module, args, kwargs or {}, strict=False)
    return exported, diagram_from_graph(exported.graph_module, exported.graph_signature,
                                        name=name, dtype=dtype, meta=meta)


def diagram_from_graph(gm: torch.fx.GraphModule, signature: Any, *, name: str, dtype: str,
                       meta: dict | None = None) -> Diagram:
    """Turn an exported ATen graph into a Diagram (see `capture_module`)."""
    roles = {spec.arg.name: _role(spec.kind.name) for spec in signature.input_specs
             if hasattr(spec.arg, "name")}
    props: dict[str, Propagator] = {}
    vertices: list[Vertex] = []
    out_names: dict[torch.fx.Node, list[str]] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    unknown: set[str] = set()
    masks: dict = {}

    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            if isinstance(val, torch.Tensor):
                role = roles.get(node.name, "input")
                props[node.name] = Propagator(node.name, tuple(val.shape), _dt(val), role)
                out_names[node] = [node.name]
                if role == "input":
                    inputs.append(node.name)
            continue
        if node.op == "output":
            for n in _flat_nodes(node.args[0]):
                outputs.extend(out_names.get(n, []))
            continue
        if node.op != "call_function":
            continue
        base = op_name(node.target)
        outs = tensors(val)
        if base in _IGNORED or not outs:
            continue
        in_nodes = _node_inputs(node)
        ins = [tensors(n.meta["val"])[0] for n in in_nodes]
        kind = normalise(base)
        if base == "getitem":
            src = node.args[0]
            in_name = out_names[src][node.args[1]]
            ins = [tensors(src.meta["val"])[node.args[1]]]
            in_names = [in_name]
        else:
            in_names = [_single(out_names[n], n) for n in in_nodes]
        if kind is None and base in _FREE_IF_CONTIGUOUS:
            kind = "free" if (not ins or ins[0].is_contiguous()) else "copy"
        elif kind is None and base in ("to", "_to_copy", "type_as"):
            kind = "elementwise"
        if base in ("to", "_to_copy") and ins and ins[0].dtype == outs[0].dtype:
            kind = "free"
        if kind == "free" and base == "dropout" and len(node.args) > 2 and node.args[2]:
            kind = "elementwise"  # dropout in training mode does work
        if kind is None:
            unknown.add(base)
            kind = "elementwise"
        names = [node.name] if len(outs) == 1 else [f"{node.name}.{i}" for i in range(len(outs))]
        out_names[node] = names
        for n, t in zip(names, outs):
            props[n] = Propagator(n, tuple(t.shape), _dt(t), "activation", node.name)
        mask_kind = density = None
        if kind == "attention":
            mask_kind, density = _attention_mask(node, gm, masks)
        free = kind == "free"
        read = tuple(0 if free else _read_bytes(kind, i, t, outs[0]) for i, t in enumerate(ins))
        vertices.append(Vertex(
            name=node.name, kind=kind, op=str(node.target), inputs=tuple(in_names),
            outputs=tuple(names), input_shapes=tuple(tuple(t.shape) for t in ins),
            output_shapes=tuple(tuple(t.shape) for t in outs),
            dtype=_compute_dtype(kind, dtype, ins[0] if ins else outs[0]),
            flops=_flops(kind, base, ins, outs), read_bytes=read,
            bytes_written=0 if free else sum(t.numel() * t.element_size() for t in outs),
            module=_module_path(node), mask_kind=mask_kind, mask_density=density,
            attrs=_attrs(node),
        ))
    if unknown:
        warnings.warn(f"capture of {name!r}: ops {sorted(unknown)} are not known to feyntune; "
                      "they are priced as elementwise ops", stacklevel=2)
    info = {"dtype": dtype, **(meta or {})}
    if unknown:
        info["unknown_ops"] = tuple(sorted(unknown))
    return Diagram(name=name, vertices=tuple(vertices), propagators=tuple(props.values()),
                   inputs=tuple(inputs), outputs=tuple(dict.fromkeys(outputs)),
                   meta=tuple(info.items()))


def _flat_nodes(arg: Any) -> list[torch.fx.Node]:
    if isinstance(arg, torch.fx.Node):
        return [arg]
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in _flat_nodes(a)]
    if isinstance(arg, dict):
        return [n for a in arg.values() for n in _flat_nodes(a)]
    return []


def _single(names: list[str], node: torch.fx.Node) -> str:
    if len(names) != 1:
        raise ValueError(f"{node.name} has {len(names)} outputs and is read whole; "
                         "expected a getitem to pick one")
    return names[0]


def _read_bytes(kind: str, index: int, t: torch.Tensor, out: torch.Tensor) -> int:
    if kind == "embedding" and index == 0:
        # Only the looked-up rows of the table are read.
        return min(_footprint(t), out.numel() * t.element_size())
    if kind == "gather" and index == 0:
        return min(_footprint(t), out.numel() * t.element_size())
    return _footprint(t)


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _attrs(node: torch.fx.Node) -> tuple[tuple[str, Any], ...]:
    return _scalar_attrs(node.args, node.kwargs)


def _scalar_attrs(args: tuple, kwargs: dict, offset: int = 0) -> tuple[tuple[str, Any], ...]:
    """Scalar (and list-of-number) arguments by position, and scalar keyword arguments: hashable."""
    out = []
    for i, a in enumerate(args, start=offset):
        if isinstance(a, (bool, int, float, str)):
            out.append((f"arg{i}", a))
        elif isinstance(a, (list, tuple)) and a and all(isinstance(x, (bool, int, float)) for x in a):
            out.append((f"arg{i}", tuple(a)))
    for k, a in sorted(kwargs.items()):
        if isinstance(a, (bool, int, float, str)):
            out.append((k, a))
        elif isinstance(a, torch.dtype):
            out.append((k, str(a)))
    return tuple(out)


def single_op(op: Any, inputs: list[torch.Tensor], *, args: tuple = (), kwargs: dict | None = None,
              dtype: str | None = None, name: str = "op", module: str = "") -> Subdiagram:
    """A one-vertex kernel for `op` (an ATen overload, e.g. torch.ops.aten.bmm.default) called as
    op(*inputs, *args, **kwargs) on meta tensors of the given shapes, priced as `capture_module`
    prices it. For datasets of measured single ops (no export: microseconds per op)."""
    kwargs = kwargs or {}
    inputs = [t if t.device.type == "meta" else t.to("meta") for t in inputs]
    with torch.no_grad():
        outs = tensors(op(*inputs, *args, **kwargs))
    base = op_name(op)
    kind = normalise(base) or ("elementwise" if base in ("to", "_to_copy") else None)
    if kind is None:
        raise ValueError(f"op {base!r} has no feyntune kind")
    in_names = tuple(f"{name}.in{i}" for i in range(len(inputs)))
    out_names = (name,) if len(outs) == 1 else tuple(f"{name}.{i}" for i in range(len(outs)))
    roles = ["input"] + ["parameter"] * (len(inputs) - 1) if kind in ("matmul", "conv",
                                                                     "layer_norm") else ["input"] * len(inputs)
    if kind == "embedding":
        roles = ["parameter", "input"]
    if base in ("bmm", "mm", "matmul", "baddbmm"):
        roles = ["input"] * len(inputs)
    mask_kind = density = None
    if kind == "attention":
        mask = kwargs.get("attn_mask", inputs[3] if len(inputs) > 3 else None)
        if kwargs.get("is_causal"):
            sq, sk = inputs[0].shape[-2], inputs[1].shape[-2]
            mask_kind = "causal"
            density = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq).float().mean().item()
        elif mask is None:
            mask_kind, density = "none", 1.0
        else:
            mask_kind, density = "custom", 1.0
    vertex = Vertex(
        name=name, kind=kind, op=str(op), inputs=in_names, outputs=out_names,
        input_shapes=tuple(tuple(t.shape) for t in inputs),
        output_shapes=tuple(tuple(t.shape) for t in outs),
        dtype=dtype or _compute_dtype(kind, "fp32", inputs[0] if inputs else outs[0]),
        flops=_flops(kind, base, inputs, outs),
        read_bytes=tuple(_read_bytes(kind, i, t, outs[0]) for i, t in enumerate(inputs)),
        bytes_written=sum(t.numel() * t.element_size() for t in outs), module=module,
        mask_kind=mask_kind, mask_density=density,
        attrs=_scalar_attrs(args, kwargs, offset=len(inputs)),
    )
    ins = tuple(Propagator(n, tuple(t.shape), _dt(t), r) for n, t, r in zip(in_names, inputs, roles))
    outs_p = tuple(Propagator(n, tuple(t.shape), _dt(t), "activation", name)
                   for n, t in zip(out_names, outs))
    return Subdiagram((vertex,), ins, outs_p)
