import pytest

from autotune.space import Space
from costmodel.hardware import load_profile
from costmodel.ir import rules
from costmodel.ir.plan import Fuse, KernelConfig, Plan, Tile, check_fusable
from costmodel.ir.rules import MAX_ACCUMULATORS_PER_THREAD, epilogue_chain, legal_tiles, smem_bytes


def test_matmuls_group_into_classes_with_their_epilogues(capture):
    d = capture("bert-base", 1, 32)
    space = Space(d, load_profile("a100"))
    sites = sum(len(c.sites) for c in space.classes)
    assert sites == sum(v.kind == "matmul" for v in d.vertices)
    # q, k, v share one class; the FFN up-projection carries its gelu, the others a residual add.
    assert len(space.classes) < 10
    assert any(c.epilogue_kinds == ("gelu",) for c in space.classes)
    assert any(c.epilogue_kinds[:1] == ("add",) for c in space.classes)
    fc1 = next(c for c in space.classes if c.epilogue_kinds == ("gelu",))
    assert len(fc1.sites) == 12 and fc1.gemm == (1, 32, 3072, 768)


def test_epilogue_stops_at_a_second_reader(capture):
    d = capture("bert-base", 1, 32)
    q = next(v.name for v in d.vertices if v.kind == "matmul")
    assert epilogue_chain(d, q) == ()  # the projection feeds attention, not a pointwise op


@pytest.mark.parametrize("target", ["a100", "h100", "t4", "v100", "p4", "l4"])
def test_legal_tiles_fit_the_target(target):
    hw = load_profile(target)
    for dtype in ("fp32", "fp16"):
        tiles = legal_tiles(hw, dtype)
        assert tiles
        for c in tiles:
            assert smem_bytes(c, dtype) <= hw.shared_memory_per_unit
            assert c.num_warps * 32 <= hw.max_threads_per_unit
            assert c.block_m * c.block_n / (c.num_warps * 32) <= MAX_ACCUMULATORS_PER_THREAD
    # A T4 (64 KiB per SM) takes fewer deep pipelines than an H100 (228 KiB).
    assert len(legal_tiles(load_profile("t4"), "fp32")) < len(legal_tiles(load_profile("h100"), "fp32"))


def test_no_tiles_off_gpu():
    assert legal_tiles(load_profile("cpu"), "fp32") == ()
    assert legal_tiles(load_profile("tpu-v4"), "bf16") == ()


def test_space_plans_are_legal_and_illegal_ones_are_refused(capture):
    d = capture("bert-base", 1, 32)
    space = Space(d, load_profile("a100"))
    tile = space.tiles["fp32"][0]
    plan = space.plan({c.key: (len(c.sites[0][1]), tile) for c in space.classes})
    space.check(plan)
    matmul = space.classes[0].sites[0][0]
    with pytest.raises(ValueError, match="not legal"):
        space.check(Plan((Tile(matmul, KernelConfig(256, 256, 64, 4, 4)),)))
    with pytest.raises(ValueError, match="takes no tile"):
        Space(d, load_profile("cpu")).check(Plan((Tile(matmul, tile),)))
    attn = next(v.name for v in d.vertices if v.kind == "attention")
    with pytest.raises(ValueError):
        space.check(Plan((Fuse((matmul, attn, space.classes[1].sites[0][0])),)))


def test_params_cover_three_kinds_of_rewrite(capture):
    d = capture("gpt2", 1, 64)
    names = [p.name for p in Space(d, load_profile("a100")).params]
    assert any(n.startswith("mm") and n.endswith(".tile") for n in names)
    assert any(n.startswith("at") for n in names)  # flash attention block sizes
    assert any(n.startswith("ln") for n in names)  # residual add + layer norm
    assert any(n.startswith("ew") for n in names)  # GPT-2's tanh GELU: a chain of pointwise ops
    cpu = Space(d, load_profile("cpu")).params
    # no kernel configs: fusions, and the graph level's eager-or-inductor rest (no CUDA graph)
    assert all((p.level == "mid" and p.name.endswith(".fuse")) or p.name == "rt.rest" for p in cpu)
    assert "rt.rest" in [p.name for p in cpu] and "rt.cuda_graph" in names
    for p in Space(d, load_profile("a100")).params:
        assert len(set(p.choices)) == len(p.choices) >= 2 and p.sites >= 1 and p.about


def test_mask_aware_attention_only_where_the_mask_has_zero_blocks(capture):
    def labels(model):
        space = Space(capture(model, 1, 64), load_profile("h100"))
        return [c for p in space.params if p.name.startswith("at") for c in p.labels]
    assert any(c.startswith("flash-skip") for c in labels("gpt2"))  # causal
    assert any(c.startswith("flash-skip") for c in labels("scgpt"))
    assert not any(c.startswith("flash-skip") for c in labels("bert-base"))  # no mask
    assert any(c.startswith("flash ") for c in labels("bert-base"))


def test_skipping_masked_blocks_is_cheaper_for_a_causal_mask(capture):
    from costmodel.models.roofline import Roofline

    space = Space(capture("gpt2", 1, 512), load_profile("a100"))
    at = next(p for p in space.params if p.name.startswith("at"))
    full = next(c for c in at.choices if c and c.block_m == 128 and c.block_n == 64 and not c.skip_masked)
    skip = KernelConfig(**{**full.to_dict(), "skip_masked": True})
    assert skip in at.choices
    price = [Roofline().predict_plan(space.diagram, space.target, space.plan_from({at.name: c})).total_ms
             for c in (full, skip)]
    assert price[1] < price[0]


def test_attention_configs_fit_the_target(capture):
    for target in ("t4", "a100", "h100"):
        hw = load_profile(target)
        space = Space(capture("scgpt", 1, 64), hw)
        plan = space.plan_from({p.name: p.choices[-1] for p in space.params if p.name.startswith("at")})
        space.check(plan)
        for d in plan.decisions:
            assert smem_bytes(d.config, "fp32") <= hw.shared_memory_per_unit


def test_plan_from_refuses_unknown_and_illegal(capture):
    d = capture("bert-base", 1, 32)
    space = Space(d, load_profile("a100"))
    with pytest.raises(ValueError, match="no parameter"):
        space.plan_from({"nope": 1})
    p = space.params[0]
    with pytest.raises(ValueError, match="not a legal choice"):
        space.plan_from({p.name: "banana"})
    with pytest.raises(ValueError, match="not a legal choice"):
        space.plan_from_labels({p.name: "banana"})
    assert space.plan_from_labels({p.name: p.labels[-1]}) == space.plan_from({p.name: p.choices[-1]})
    # A residual add taken by a matmul epilogue and by an add + layer norm kernel: the merged
    # kernel would put a layer norm in the matmul's epilogue.
    every = {q.name: q.choices[-1] for q in space.params if q.name.endswith(".fuse")}
    with pytest.raises(ValueError, match="layer norm"):
        space.plan_from(every)
    assert space.plan_from({}) == Plan()


def test_overlapping_groups_merge_into_one_legal_kernel(capture):
    d = capture("gpt2", 1, 32)
    space = Space(d, load_profile("cpu"))
    every = {q.name: True for q in space.params if q.name.startswith("ew")}
    plan = space.plan_from(every)
    space.check(plan)
    members = [v for f in plan.decisions for v in f.vertices]
    assert len(members) == len(set(members))  # no vertex in two kernels


@pytest.mark.parametrize("model", ["bert-base", "gpt2", "scgpt"])
def test_every_group_the_space_proposes_is_one_measurement_times(capture, model):
    """The space and measurement read one rule book: each fusion group a single decision asks
    for is a fusion candidate, whose subdiagram measurement times."""
    from costmodel.measure.variants import sites

    d = capture(model, 1, 64)
    space = Space(d, load_profile("a100"))
    measured = {s.subdiagram.hash for s in sites(d)}
    for p in space.params:
        if p.kind not in ("epilogue", "fuse"):
            continue
        for value in p.choices[1:]:
            for group in space.groups({p.name: value}):
                assert d.subdiagram(check_fusable(d, group)).hash in measured, (p.name, value)


def test_pointwise_groups_are_floating_point_only():
    """An integer op (a mask's comparison) is no pointwise kernel measurement times."""
    import torch

    from costmodel.ir.capture import export_module

    class Masked(torch.nn.Module):
        def forward(self, x, ids):
            return (x * 2.0 + 1.0) * (ids > 3).float()

    with torch.device("meta"):
        _, d = export_module(Masked(), (torch.zeros(4, 8), torch.zeros(4, 8, dtype=torch.long)),
                             name="masked")
    for c in rules.fusion_candidates(d):
        assert all(d.vertex[n].dtype in rules.COMPUTE_DTYPES for n in c.vertices)
