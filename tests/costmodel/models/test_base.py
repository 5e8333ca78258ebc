"""The cost-model contract (every implementation runs `CostModelContract`) and the roofline."""
import math

import numpy as np
import pytest

from costmodel.models.base import CostModel
from costmodel.models.roofline import LIBRARY_TILES, Roofline, tile_efficiency
from costmodel.models.registry import load_cost_model
from costmodel.errors import UserError
from costmodel.hardware import load_profile
from costmodel.ir.plan import KernelConfig, Plan, eager_partition


class CostModelContract:
    """Reused by every cost model: subclass it and provide a `model` fixture."""

    def test_predict_gives_positive_finite_ms_in_order(self, model, capture):
        subs = eager_partition(capture("gpt2", 1, 32))
        ms = model.predict(subs, "a100")
        assert isinstance(ms, np.ndarray) and ms.shape == (len(subs),)
        assert np.all(np.isfinite(ms)) and np.all(ms > 0)
        # Reordering changes float32 batch arithmetic, not the answer.
        assert np.allclose(model.predict(subs[::-1], "a100"), ms[::-1], rtol=1e-5)

    def test_batched_equals_one_by_one(self, model, capture):
        subs = eager_partition(capture("scgpt", 1, 32))[:20]
        alone = np.concatenate([model.predict([s], "h100") for s in subs])
        assert np.allclose(model.predict(subs, "h100"), alone)

    def test_save_load_gives_equal_predictions(self, model, capture, tmp_path):
        subs = eager_partition(capture("bert-base", 1, 32))
        model.save(tmp_path / "model.json")
        again = load_cost_model(str(tmp_path / "model.json"))
        assert np.array_equal(again.predict(subs, "t4"), model.predict(subs, "t4"))

    def test_configs_must_line_up(self, model, capture):
        subs = eager_partition(capture("bert-base", 1, 32))
        with pytest.raises(ValueError):
            model.predict(subs, "a100", [None])


class TestRoofline(CostModelContract):
    @pytest.fixture
    def model(self) -> CostModel:
        return Roofline()


def test_roofline_by_hand(capture):
    d = capture("bert-base", 8, 128)
    hw = load_profile("a100")
    ln = next(s for s in eager_partition(d) if s.kinds == ("layer_norm",))
    # A layer norm is memory-bound: bytes over bandwidth, plus the launch overhead.
    expected = (ln.bytes_read + ln.bytes_written) / hw.memory_bandwidth + hw.launch_overhead_s
    assert Roofline().kernel_seconds(ln, hw) == pytest.approx(expected)
    attn = next(s for s in eager_partition(d) if s.kinds == ("attention",))
    assert Roofline().kernel_seconds(attn, hw) == pytest.approx(
        attn.flops / hw.peak("fp32") + hw.launch_overhead_s)


def test_faster_chip_and_faster_dtype_are_cheaper(capture):
    rl = Roofline()
    fp32, bf16 = capture("gpt2", 4, 256), capture("gpt2", 4, 256, "bf16")
    t = {hw: rl.predict_plan(fp32, hw).total_ms for hw in ("t4", "v100", "a100", "h100")}
    assert t["t4"] > t["v100"] > t["a100"] > t["h100"]
    assert rl.predict_plan(bf16, "a100").total_ms < t["a100"] / 2


def test_unsupported_dtype_is_a_user_error(capture):
    with pytest.raises(UserError, match="bf16"):
        Roofline().predict_plan(capture("gpt2", 1, 32, "bf16"), "t4")


def test_tile_quantisation():
    hw = load_profile("a100")  # 108 SMs
    one_wave = KernelConfig(128, 128, 32)
    # 108 full tiles fill every SM once; 109 need a second wave that is nearly empty.
    assert tile_efficiency(1, 128 * 108, 128, one_wave, hw, "fp16") == pytest.approx(1.0)
    assert tile_efficiency(1, 128 * 109, 128, one_wave, hw, "fp16") == pytest.approx(109 / 216)
    # A 64-row problem on 128-row tiles wastes half of each tile.
    assert tile_efficiency(1, 64 * 108, 128, KernelConfig(64, 128, 32), hw, "fp16") == pytest.approx(1.0)
    assert tile_efficiency(1, 64, 128 * 108, one_wave, hw, "fp16") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shared memory"):
        tile_efficiency(1, 4096, 4096, KernelConfig(256, 256, 128, 8, 8), hw, "fp32")


def test_library_is_the_best_library_tile(capture):
    d = capture("bert-base", 1, 128)
    hw = load_profile("a100")
    sub = next(s for s in eager_partition(d) if s.kinds == ("matmul",))
    rl = Roofline()
    each = [rl.kernel_seconds(sub, hw, c) for c in LIBRARY_TILES]
    assert rl.kernel_seconds(sub, hw) == pytest.approx(min(each))
    split = rl.kernel_seconds(sub, hw, KernelConfig(128, 128, 32, split_k=4))
    assert math.isfinite(split) and split != each[0]


def test_fusion_is_priced_cheaper(capture):
    from costmodel.ir.plan import Fuse

    d = capture("bert-base", 1, 128)
    fc1 = [v.name for v in d.vertices if v.kind == "matmul"][4]
    gelu = next(v.name for v in d.vertices if v.kind == "gelu")
    rl = Roofline()
    assert rl.predict_plan(d, "a100", Plan((Fuse((fc1, gelu)),))).total_ms < \
        rl.predict_plan(d, "a100").total_ms


def test_cost_model_names_resolve(tmp_path):
    assert isinstance(load_cost_model("roofline"), Roofline)
    with pytest.raises(UserError, match="roofline"):
        load_cost_model("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(UserError, match="not a saved"):
        load_cost_model(str(bad))


def test_the_roofline_loads_without_the_learned_models_imports():
    """torch_geometric and the learned models cost seconds to import; a roofline needs neither."""
    import subprocess
    import sys

    code = ("import sys; from costmodel.models import load_cost_model; load_cost_model('roofline'); "
            "assert 'torch_geometric' not in sys.modules, 'torch_geometric imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
