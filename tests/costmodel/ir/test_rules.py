"""The rule book: dtypes, fusion candidates, kernel legality, masks, tolerances."""
import math

import pytest
import torch
from torch import nn

from costmodel.hardware import load_profile
from costmodel.ir import rules
from costmodel.ir.capture import export_module
from costmodel.ir.plan import KernelConfig, check_fusable


def test_element_sizes():
    assert [rules.element_bytes(d) for d in rules.COMPUTE_DTYPES] == [4, 4, 2, 2]
    assert rules.element_bytes("int64") == 8 and rules.element_bytes("bool") == 1
    with pytest.raises(ValueError, match="no size"):
        rules.element_bytes("float8")


def test_tolerance_grows_with_lower_precision():
    scale = 10.0
    allowed = [rules.allowed_error(d, scale) for d in ("fp32", "tf32", "fp16", "bf16")]
    assert allowed[0] < allowed[1] <= allowed[2] < allowed[3]
    assert rules.allowed_error("int64", scale) == allowed[0]


def test_fusion_candidates_are_legal_and_typed(capture):
    d = capture("bert-base", 1, 32)
    found = rules.fusion_candidates(d)
    assert {"epilogue", "residual-norm"} <= {c.kind for c in found}
    for c in found:
        check_fusable(d, c.vertices)
        kinds = [d.vertex[n].kind for n in c.vertices]
        if c.kind.startswith("epilogue"):
            assert kinds[0] == "matmul" and set(kinds[1:]) <= set(rules.EPILOGUE_KINDS)
        elif c.kind == "residual-norm":
            assert kinds == ["add", "layer_norm"]
    assert len({c.vertices for c in found}) == len(found)  # a group appears once


class _Chain(nn.Module):
    def forward(self, x):
        return torch.tanh(x * 2.0) + 1.0


def test_pointwise_chains_are_candidates():
    with torch.device("meta"):
        _, d = export_module(_Chain(), (torch.zeros(8, 8, device="meta"),), name="chain")
    [c] = rules.fusion_candidates(d)
    assert c.kind == "pointwise" and [d.vertex[n].kind for n in c.vertices] == ["mul", "activation", "add"]


def test_merges_keep_one_anchor_and_no_norm_in_an_epilogue():
    assert rules.merge_problem(["matmul", "add", "gelu"]) == ""
    assert "two" in rules.merge_problem(["matmul", "add", "matmul"])
    assert "layer norm" in rules.merge_problem(["matmul", "add", "layer_norm"])
    assert rules.merge_problem(["add", "layer_norm"]) == ""


@pytest.mark.parametrize("target", ["a100", "h100", "t4", "p4"])
def test_launch_limits(target):
    hw = load_profile(target)
    ok = KernelConfig(64, 64, 32, 4, 2)
    assert rules.launch_problem(ok, hw, "fp32") == "" and rules.blocks_per_unit(ok, hw, "fp32") >= 1
    huge = KernelConfig(256, 256, 64, 8, 4)
    assert "shared memory" in rules.launch_problem(huge, hw, "fp32")
    spills = KernelConfig(256, 256, 32, 4, 2)
    assert "spill" in rules.launch_problem(spills, hw, "fp16") or "shared" in rules.launch_problem(spills, hw, "fp16")
    assert rules.blocks_per_unit(huge, hw, "fp32") == 0
    assert "takes no tile" in rules.launch_problem(ok, load_profile("cpu"), "fp32")


def _attention(sq, sk, kind, density):
    from costmodel.ir.diagram import Vertex

    return Vertex("a", "attention", "aten.sdpa", ("q", "k", "v"), ("o",),
                  ((1, 1, sq, 64), (1, 1, sk, 64), (1, 1, sk, 64)), ((1, 1, sq, 64),), "fp16",
                  0, (0, 0, 0), 0, mask_kind=kind, mask_density=density)


def _scgpt_density(seq, queries):
    context = seq - queries
    return (seq * context + queries) / seq**2


@pytest.mark.parametrize("queries,expected", [(300, 0.80), (900, 0.30)])
def test_scgpt_blocks_are_counted_exactly(queries, expected):
    """At 1200 positions with 64 x 64 blocks, a quarter of the genes as queries leaves 80% of
    the blocks to compute (density 75%); three quarters, 30% (density 25%)."""
    v = _attention(1200, 1200, "scgpt", _scgpt_density(1200, queries))
    assert rules.scgpt_context(1200, 1200, v.mask_density) == 1200 - queries
    assert rules.mask_block_fraction(v, 64, 64) == pytest.approx(expected, abs=0.005)
    # brute force over every pair of the mask agrees
    context = 1200 - queries
    idx = torch.arange(1200)
    mask = (idx[None, :] < context) | (idx[:, None] == idx[None, :])
    blocks = torch.nn.functional.pad(mask, (0, 16, 0, 16)).reshape(19, 64, 19, 64).any(3).any(1)
    assert rules.mask_block_fraction(v, 64, 64) == pytest.approx(blocks.float().mean().item())


def test_causal_blocks_are_counted_exactly():
    v = _attention(256, 256, "causal", 0.5)
    assert rules.mask_block_fraction(v, 64, 64) == pytest.approx(10 / 16)
    assert rules.mask_block_fraction(_attention(256, 256, "none", 1.0), 64, 64) == 1.0
    assert math.isclose(rules.mask_block_fraction(_attention(64, 64, "causal", 0.5), 64, 64), 1.0)
