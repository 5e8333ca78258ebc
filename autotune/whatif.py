"""Architecture what-ifs: the high level of the rewrite space, priced but never applied.

Each what-if re-captures the model with one change to its architecture and prices it next to
the unmodified model with the same cost model. They change what the model computes, so they
are suggestions with a predicted saving; nothing here touches the model's own diagram or plan.

The variants (one that does not apply to a model is skipped, with no error):
- `causal`, `bidirectional`: the mask the model does not have (an encoder made causal, a decoder
  bidirectional; scGPT both). A mask changes no FLOP count: it pays only where a kernel skips
  the blocks the mask zeroes, and the eager roofline prices attention dense. So these two are
  priced, on both sides, with every attention run by a mask-skipping flash kernel
  (`KernelConfig(skip_masked=True)`): the saving is what block skipping buys under the new mask
  (negative when the variant masks less). Their baseline differs from the other rows for that.
  The variant is the whole model as its class builds it, so the kernels that build the mask
  count too: a few small launches, once per model, that can outweigh the attention in a
  shallow model (Hugging Face models build a causal mask from more ops than a full one).
- `fewer-heads`: half the heads at the same head dim, so Q/K/V/O projections and attention at
  half width. (Half as many heads twice as wide would leave every FLOP count unchanged.)
- `gqa` (a quarter as many key/value heads as query heads) and `mqa` (one key/value head):
  smaller K/V projections and K/V reads; query heads, attention FLOPs and the output projection
  stay. Attention runs in SDPA's grouped-query mode (`enable_gqa`), reading each K/V head once
  as a GQA kernel does. (Hugging Face's SDPA path, whenever a mask is passed as in our
  captures, instead copies K/V up to every query head with `repeat_kv`: that would price a
  worse implementation than the architecture needs.)
- `mlp-half`: the MLP hidden width halved (4x -> 2x the model width in BERT and GPT-2, 1x ->
  0.5x in scGPT).

Every variant is a real model, re-captured through `costmodel.ir.zoo.capture_model`, never a
diagram edited by hand: the variant could be run and measured as it is.
- scgpt: our model takes `head_dim`, `n_kv_heads` and `mask` in its `ScGPTConfig`.
- Hugging Face configs: config keys where the class honours them (`num_key_value_heads` and
  `head_dim` in Llama-style classes; `is_decoder` in BERT-style encoders; `is_causal=False` for a
  bidirectional mask; `intermediate_size`, `n_inner` or `ffn_dim`). The attention of BERT, GPT-2
  and OPT has no such keys, so their attention modules get smaller q/k/v and output projections,
  the new head count and Hugging Face's own grouped-query attribute `num_key_value_groups`,
  swapped in on the meta model before export. OPTAttention views K and V with its query head
  count, so for grouped queries its forward is replaced by the same code viewing K and V by
  head dim.
Each variant's diagram is checked (heads, key/value heads and head dim of every attention, its
mask kind, a hash unlike the original's): one that did not come out as intended is dropped with
a warning, never reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile, load_profile
from costmodel.ir import rules
from costmodel.ir.diagram import Diagram
from costmodel.ir.plan import KernelConfig, Plan, Tile
from costmodel.ir.zoo import ScGPTConfig, capture_model, model_config
from costmodel.models.base import CostModel
from costmodel.models.registry import load_cost_model

MLP_KEYS = ("intermediate_size", "n_inner", "ffn_dim")  # Hugging Face names of the MLP width
# Flash-attention blocks (queries x keys) the mask what-ifs choose from, as a tuned kernel would:
# FlashAttention-2's forward uses 128x64 at head dim 64; smaller blocks skip more of a mask.
FLASH_BLOCKS = ((128, 64), (64, 64), (64, 32), (32, 32))


@dataclass(frozen=True)
class WhatIf:
    """One architecture variant priced next to the unmodified model; times in milliseconds."""

    name: str
    description: str
    baseline_ms: float  # the unmodified model
    variant_ms: float
    diagram_hash: str  # the variant's diagram
    diagram: Diagram | None = field(default=None, repr=False, compare=False)  # to inspect it

    @property
    def saving(self) -> float:
        """Fraction of the baseline time saved; negative when the variant is slower."""
        return 1.0 - self.variant_ms / self.baseline_ms

    def to_dict(self) -> dict:
        """JSON-ready, without the diagram."""
        return {"name": self.name, "description": self.description,
                "baseline_ms": self.baseline_ms, "variant_ms": self.variant_ms,
                "saving": self.saving, "diagram_hash": self.diagram_hash}


@dataclass(frozen=True)
class _Arch:
    """The attention and MLP sizes the variants derive from."""

    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    mlp: int | None  # MLP hidden width
    mlp_key: str | None  # its config key
    scgpt: bool
    native_gqa: bool  # the config itself takes num_key_value_heads and head_dim


@dataclass(frozen=True)
class _Variant:
    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    patch: Callable[[nn.Module], None] | None = None
    attention: tuple[int, int, int] | None = None  # expected (heads, kv heads, head dim)
    mask: str | None = None  # expected mask kind of every attention; None: unchanged


class _NotBuilt(Exception):
    """A variant that did not come out as intended."""


def whatifs(model: str, batch: int, seq: int, dtype: str, target: HardwareProfile | str,
            cost_model: CostModel | str = "roofline", *, baseline_ms: float | None = None,
            overrides: dict | None = None, original: Diagram | None = None,
            attention: str = "sdpa") -> list[WhatIf]:
    """Price the architecture what-ifs of `model` (a zoo name or a config.json path) at
    (batch, seq, dtype) on `target`, each next to the unmodified model, both as eager plans
    (the mask what-ifs with mask-skipping attention, see the module docstring).

    `baseline_ms`: the unmodified model's time under a plan of the caller's (e.g. a tuned plan),
    in ms. Each row then reports that time, and the variant at that time times the predicted
    ratio (variant over unmodified): the cost model predicts the ratio, not the variant under
    the caller's plan, which names vertices the variant may not have.
    `overrides`: config entries changed in the model itself and in every variant (as
    `capture_model` takes them), e.g. `{"num_hidden_layers": 2}` for a shallower model like it.
    `original`: the unmodified model's diagram, where the caller has captured it already.
    `attention`: "sdpa" or "eager", for the model and every variant.
    """
    hw = load_profile(target) if isinstance(target, str) else target
    cost_model = load_cost_model(cost_model)
    overrides = overrides or {}
    if original is None:
        original = capture_model(model, batch, seq, dtype, overrides=overrides, attention=attention)
    masks = {v.mask_kind for v in original.vertices if v.kind == "attention"}
    # Priced before any variant, so what fails for the model itself (a dtype the target lacks)
    # is raised, not reported as variants that could not be built.
    base = {False: _price(original, hw, cost_model, masked=False)}
    out = []
    for variant in _variants(_arch(model, overrides), masks):
        try:
            grouped = variant.attention is not None and variant.attention[1] < variant.attention[0]
            with _sdpa_grouped_queries(grouped):
                diagram = capture_model(model, batch, seq, dtype, patch=variant.patch,
                                        overrides={**overrides, **variant.overrides},
                                        attention=attention)
            _check(diagram, original, variant)
            masked = variant.mask is not None
            if masked not in base:
                base[masked] = _price(original, hw, cost_model, masked)
            ms = _price(diagram, hw, cost_model, masked)
        except (_NotBuilt, UserError) as e:
            warnings.warn(f"what-if {variant.name!r} of {model}: {e}; not reported", stacklevel=2)
            continue
        reference = base[masked] if baseline_ms is None else baseline_ms
        out.append(WhatIf(variant.name, variant.description, reference,
                          reference * ms / base[masked], diagram.hash, diagram))
    return out


def format_table(rows: list[WhatIf]) -> str:
    """The what-ifs as a fixed-width text table (times in ms)."""
    lines = [f"{'what-if':<14}{'baseline ms':>12}{'variant ms':>12}{'saving':>9}  description"]
    lines += [f"{w.name:<14}{w.baseline_ms:>12.4f}{w.variant_ms:>12.4f}{w.saving:>9.1%}  "
              f"{w.description}" for w in rows]
    return "\n".join(lines)


def _price(diagram: Diagram, hw: HardwareProfile, cost_model: CostModel, masked: bool) -> float:
    """Predicted ms of `diagram` as eager kernels; with `masked`, every attention a flash kernel
    that skips the blocks its mask zeroes, with the FLASH_BLOCKS blocks that price best."""
    if not masked:
        return cost_model.predict_plan(diagram, hw, Plan()).total_ms
    attention = [v for v in diagram.vertices if v.kind == "attention"]
    if hw.kind != "gpu":  # no tiled kernels there: a mask pays nothing but its own ops
        return cost_model.predict_plan(diagram, hw, Plan()).total_ms
    configs = [c for c in (KernelConfig(bm, bn, attention[0].input_shapes[0][-1], num_warps=4,
                                        num_stages=2, skip_masked=True) for bm, bn in FLASH_BLOCKS)
               if rules.blocks_per_unit(c, hw, attention[0].dtype)]
    if not configs:
        raise _NotBuilt(f"no flash attention block fits on {hw.name}")
    return min(cost_model.predict_plan(diagram, hw, Plan(tuple(Tile(v.name, c) for v in attention))
                                       ).total_ms for c in configs)


def _check(diagram: Diagram, original: Diagram, variant: _Variant) -> None:
    """Raise _NotBuilt unless `diagram` is the variant asked for."""
    if diagram.hash == original.hash:
        raise _NotBuilt("the variant captured the same diagram as the original")
    for v in diagram.vertices:
        if v.kind != "attention":
            continue
        q, k = v.input_shapes[0], v.input_shapes[1]
        got = (q[-3], k[-3], q[-1])
        if variant.attention is not None and got != variant.attention:
            raise _NotBuilt(f"attention {v.name} has (heads, key/value heads, head dim) {got}, "
                            f"not {variant.attention}")
        if variant.mask is not None and v.mask_kind != variant.mask:
            raise _NotBuilt(f"attention {v.name} has mask {v.mask_kind!r}, not {variant.mask!r}")


def _arch(model: str, overrides: dict) -> _Arch:
    config = model_config(model)
    if isinstance(config, ScGPTConfig):
        config = dataclasses.replace(config, **overrides)
        return _Arch(config.n_heads, config.n_kv_heads or config.n_heads,
                     config.head_dim or config.d_model // config.n_heads, config.d_ff, "d_ff",
                     scgpt=True, native_gqa=True)
    import transformers  # capture_model has run first: HF_HUB_OFFLINE is set

    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in {**config, **overrides}.items()
                                               if k not in ("torch_dtype", "dtype")})
    heads = getattr(cfg, "num_attention_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if heads and hidden else None)
    mlp_key = next((k for k in MLP_KEYS if hasattr(cfg, k)), None)
    # GPT-2's n_inner None means 4x the model width.
    mlp = (getattr(cfg, mlp_key) or 4 * hidden) if mlp_key and hidden else None
    native = hasattr(cfg, "num_key_value_heads") and hasattr(cfg, "head_dim")
    return _Arch(heads, getattr(cfg, "num_key_value_heads", None) or heads, head_dim, mlp,
                 mlp_key, scgpt=False, native_gqa=native)


def _variants(a: _Arch, masks: set[str | None]) -> Iterator[_Variant]:
    if masks and masks != {"causal"}:
        yield _Variant("causal", "causal attention (each token sees itself and earlier tokens); "
                       "both sides with mask-skipping flash attention",
                       {"mask": "causal"} if a.scgpt else {"is_decoder": True}, mask="causal")
    if masks and masks != {"none"}:
        yield _Variant("bidirectional", "bidirectional attention (no mask); both sides with "
                       "mask-skipping flash attention",
                       {"mask": "none"} if a.scgpt else {"is_causal": False},
                       None if a.scgpt else _not_causal, mask="none")
    if masks and a.heads and a.head_dim:
        h, kv, d = a.heads, a.kv_heads, a.head_dim
        if h % 2 == 0 and kv % 2 == 0:
            yield _attention_variant(a, "fewer-heads", f"{h // 2} heads instead of {h} at head "
                                     f"dim {d}: Q/K/V/O projections and attention at half width",
                                     h // 2, kv // 2, d)
        if h % 4 == 0 and 1 < h // 4 < kv:
            yield _attention_variant(a, "gqa", f"grouped-query attention: {h // 4} key/value "
                                     f"heads for {h} query heads", h, h // 4, d)
        if kv > 1:
            yield _attention_variant(a, "mqa", f"multi-query attention: 1 key/value head for "
                                     f"{h} query heads", h, 1, d)
    if a.mlp and a.mlp // 2 > 0:
        yield _Variant("mlp-half", f"MLP hidden width {a.mlp // 2} instead of {a.mlp}",
                       {a.mlp_key: a.mlp // 2})


def _attention_variant(a: _Arch, name: str, description: str, heads: int, kv: int,
                       head_dim: int) -> _Variant:
    shape = (heads, kv, head_dim)
    if a.scgpt:
        return _Variant(name, description, {"n_heads": heads, "n_kv_heads": kv,
                                            "head_dim": head_dim}, attention=shape)
    if a.native_gqa:
        return _Variant(name, description, {"num_attention_heads": heads,
                                            "num_key_value_heads": kv, "head_dim": head_dim},
                        attention=shape)
    return _Variant(name, description, patch=_attention_patch(heads, kv, head_dim),
                    attention=shape)


@contextlib.contextmanager
def _sdpa_grouped_queries(on: bool) -> Iterator[None]:
    """Hugging Face's SDPA path passes `enable_gqa` only with no mask, unless this variable is
    set (read at each call); restored afterwards. Not thread-safe, as no environment change is."""
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    old = os.environ.get(key)
    if on:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if on and old is None:
            del os.environ[key]
        elif on:
            os.environ[key] = old


def _not_causal(model: nn.Module) -> None:
    """Attention modules that pass SDPA `is_causal` when their mask is elided stop doing so."""
    for m in model.modules():
        if isinstance(getattr(m, "is_causal", None), bool):
            m.is_causal = False


def _linear(old: nn.Module, n_in: int, n_out: int) -> nn.Module:
    """An nn.Linear like `old` (bias, dtype, device) with new sizes."""
    return nn.Linear(n_in, n_out, bias=old.bias is not None, dtype=old.weight.dtype,
                     device=old.weight.device)


def _attention_patch(heads: int, kv: int, head_dim: int) -> Callable[[nn.Module], None]:
    """A patch giving every self-attention of a BERT, GPT-2 or OPT model `heads` query heads,
    `kv` key/value heads, each `head_dim` wide (see the module docstring)."""
    width, kv_width = heads * head_dim, kv * head_dim

    def patch(model: nn.Module) -> None:
        found = 0
        for name, m in list(model.named_modules()):
            if all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value")):
                # BERT: views take -1 heads; the output projection is the parent's output.dense.
                parent = model.get_submodule(name.rpartition(".")[0])
                dense = getattr(getattr(parent, "output", None), "dense", None)
                if not isinstance(dense, nn.Linear):
                    raise UserError(f"{name} has no output projection at output.dense")
                d_model = m.query.in_features
                m.query = _linear(m.query, d_model, width)
                m.key, m.value = (_linear(p, d_model, kv_width) for p in (m.key, m.value))
                parent.output.dense = _linear(dense, width, dense.out_features)
                m.num_attention_heads, m.all_head_size = heads, width
            elif hasattr(m, "c_attn") and hasattr(m, "split_size") \
                    and not getattr(m, "is_cross_attention", False):
                from transformers.pytorch_utils import Conv1D

                # GPT-2: one fused Conv1D split by split_size; views take -1 heads.
                d_model = m.c_attn.weight.shape[0]
                dt, dev = m.c_attn.weight.dtype, m.c_attn.weight.device
                m.c_attn = Conv1D(width + 2 * kv_width, d_model).to(device=dev, dtype=dt)
                m.c_proj = Conv1D(m.c_proj.weight.shape[1], width).to(device=dev, dtype=dt)
                m.split_size = width if kv == heads else [width, kv_width, kv_width]
                m.num_heads = heads
            elif type(m).__name__ == "OPTAttention":
                d_model = m.q_proj.in_features
                m.q_proj = _linear(m.q_proj, d_model, width)
                m.k_proj, m.v_proj = (_linear(p, d_model, kv_width) for p in (m.k_proj, m.v_proj))
                m.out_proj = _linear(m.out_proj, width, m.out_proj.out_features)
                m.num_heads = heads
                if kv != heads:
                    m.forward = types.MethodType(_opt_grouped_forward, m)
            else:
                continue
            m.head_dim = m.attention_head_size = head_dim
            m.num_key_value_groups = heads // kv  # what Hugging Face's SDPA path reads for GQA
            found += 1
        if not found:
            raise UserError(f"no BERT, GPT-2 or OPT attention in {type(model).__name__} to resize")

    return patch


def _opt_grouped_forward(self, hidden_states, cache=None, attention_mask=None,
                         output_attentions=False, **kwargs):
    """OPTAttention.forward (transformers 5) with K and V viewed by head dim, so they keep as
    many heads as their projections give; no cache (captures run without one)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.opt.modeling_opt import eager_attention_forward

    if cache is not None:
        raise ValueError("the grouped-query OPT what-if runs without a cache")
    bsz, tgt_len, _ = hidden_states.size()
    q = (self.q_proj(hidden_states) * self.scaling).view(bsz, tgt_len, -1, self.head_dim)
    k = self.k_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim)
    v = self.v_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                      eager_attention_forward)
    out, weights = attention(self, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             attention_mask, dropout=0.0, scaling=1.0, **kwargs)
    return self.out_proj(out.reshape(bsz, tgt_len, -1).contiguous()), weights
