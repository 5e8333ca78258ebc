import copy
import functools
import json
import math
import os

import pytest

from autotune.whatif import WhatIf, format_table, whatifs
from costmodel.models.roofline import Roofline
from costmodel.ir.zoo import HF_ZOO, capture_model

# At 1x64 the roofline prices the K/V projections as one wave of tiles whatever their width
# (a GEMM too small to fill the GPU), so GQA saves nothing there; at 256 tokens they take waves.
SEQ = 256
# Two layers of each model (the same layer shapes): a 12-layer capture takes a second or more,
# and each model here is captured seven times.
SHALLOW = {"bert-base": {"num_hidden_layers": 2}, "gpt2": {"n_layer": 2}, "scgpt": {"n_layers": 2}}
EXPECTED = {"bert-base": {"causal", "fewer-heads", "gqa", "mqa", "mlp-half"},
            "gpt2": {"bidirectional", "fewer-heads", "gqa", "mqa", "mlp-half"},
            "scgpt": {"causal", "bidirectional", "fewer-heads", "gqa", "mqa", "mlp-half"}}
SMALLER = ("fewer-heads", "gqa", "mqa", "mlp-half")  # what must predict less time


@functools.cache
def rows(model: str) -> dict[str, WhatIf]:
    return {w.name: w for w in whatifs(model, 1, SEQ, "fp32", "a100", Roofline(),
                                       overrides=SHALLOW[model])}


@functools.cache
def shallow(model: str):
    return capture_model(model, 1, SEQ, overrides=SHALLOW[model])


def attentions(diagram):
    return [v for v in diagram.vertices if v.kind == "attention"]


def kv_projection(diagram, attention):
    """The compute vertex that writes the attention's keys, looking through views."""
    name = attention.inputs[1]
    while True:
        v = diagram.vertex[diagram.propagator[name].producer]
        if not v.is_free:
            return v
        name = v.inputs[0]


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_each_variant_prices_and_shrinking_saves(model):
    found = rows(model)
    assert set(found) == EXPECTED[model]
    original = shallow(model)
    hashes = {w.diagram_hash for w in found.values()}
    assert len(hashes) == len(found) and original.hash not in hashes
    for w in found.values():
        assert math.isfinite(w.variant_ms) and w.variant_ms > 0 and w.baseline_ms > 0
        assert w.saving == pytest.approx(1 - w.variant_ms / w.baseline_ms)
        assert w.diagram.hash == w.diagram_hash
        assert json.loads(json.dumps(w.to_dict()))["diagram_hash"] == w.diagram_hash
    for name in SMALLER:
        assert found[name].variant_ms < found[name].baseline_ms, name
    assert "gqa" in format_table(list(found.values()))


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_grouped_queries_shrink_keys_and_values_only(model):
    original = shallow(model)
    a0 = attentions(original)[0]
    heads = a0.input_shapes[0][-3]
    for name, kv in (("gqa", heads // 4), ("mqa", 1), ("fewer-heads", heads // 2)):
        variant = rows(model)[name].diagram
        a = attentions(variant)[0]
        q_heads = heads // 2 if name == "fewer-heads" else heads
        assert a.input_shapes[0][-3] == q_heads and a.input_shapes[1][-3] == kv
        assert a.input_shapes[0][-1] == a0.input_shapes[0][-1]  # the head dim stays
        assert a.read_bytes[1] * heads == a0.read_bytes[1] * kv
        # The K/V projection writes fewer columns (fused with Q in GPT-2 and scGPT).
        assert kv_projection(variant, a).output_shapes[0][-1] \
            < kv_projection(original, a0).output_shapes[0][-1]
        assert len(variant.vertices) == len(original.vertices)  # no K/V copies added


def test_masks_flip_where_the_model_has_the_other():
    bert = rows("bert-base")["causal"]
    assert {v.mask_kind for v in attentions(bert.diagram)} == {"causal"}
    assert bert.saving > 0  # blocks above the diagonal skipped
    assert {v.mask_kind for v in attentions(rows("gpt2")["bidirectional"].diagram)} == {"none"}
    scgpt = rows("scgpt")
    assert {v.mask_kind for v in attentions(scgpt["causal"].diagram)} == {"causal"}
    assert {v.mask_kind for v in attentions(scgpt["bidirectional"].diagram)} == {"none"}
    assert scgpt["causal"].saving > 0  # causal keeps about half the pairs, scGPT's mask 3/4


def test_nothing_is_applied_to_the_model():
    zoo = copy.deepcopy(HF_ZOO)
    before = capture_model("gpt2", 1, 32, overrides=SHALLOW["gpt2"]).hash
    rows("gpt2")  # every module swap of the Hugging Face path
    assert capture_model("gpt2", 1, 32, overrides=SHALLOW["gpt2"]).hash == before
    assert HF_ZOO == zoo
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ


def tiny_config(tmp_path, **fields):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 128, "vocab_size": 512,
                                "max_position_embeddings": 256, **fields}))
    return str(path)


def test_opt_and_native_grouped_queries(tmp_path):
    from transformers.models.opt.modeling_opt import OPTAttention

    forward = OPTAttention.forward
    opt = tiny_config(tmp_path, architectures=["OPTForCausalLM"], model_type="opt",
                      num_attention_heads=8, ffn_dim=512, word_embed_proj_dim=128)
    found = {w.name: w for w in whatifs(opt, 1, 64, "fp32", "a100", Roofline())}
    assert set(found) == EXPECTED["gpt2"]
    assert [a.input_shapes[1][-3] for a in attentions(found["gqa"].diagram)] == [2]
    assert OPTAttention.forward is forward  # replaced on the variant's instances only
    # A Llama-style config with one key/value head: no MQA or GQA to offer, no error.
    llama = tiny_config(tmp_path, architectures=["LlamaForCausalLM"], model_type="llama",
                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=344)
    found = whatifs(llama, 1, 64, "fp32", "a100", Roofline(), baseline_ms=2.0)
    assert {w.name for w in found} == {"bidirectional", "mlp-half"}
    assert all(w.baseline_ms == 2.0 for w in found)
