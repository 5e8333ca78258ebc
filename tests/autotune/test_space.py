import pytest

from autotune.space import MAX_ACCUMULATORS_PER_THREAD, Space, legal_tiles
from costmodel.hardware import load_profile
from costmodel.plan import Fuse, KernelConfig, Plan, Tile, epilogue_chain


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
    for dtype, element in (("fp32", 4), ("fp16", 2)):
        tiles = legal_tiles(hw, dtype)
        assert tiles
        for c in tiles:
            assert c.smem_bytes(element) <= hw.shared_memory_per_unit
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
