"""The GBDT cost model: the contract, trees walked as arrays equal scikit-learn's, and the
shipped checkpoint (synthetic labels: these test the machinery, not accuracy)."""
import numpy as np
import pytest
import torch

from costmodel.errors import UserError
from costmodel.hardware import load_profile
from costmodel.models import features
from costmodel.models.base import Composition
from costmodel.models.gbdt import (FILL, GBDTConfig, GBDTCostModel, Trees, flat_features, kernel_features,
                                   roofline_ln)

from .test_base import CostModelContract
from .test_gnn import examples


@pytest.fixture(scope="module")
def fitted(capture):
    return GBDTCostModel.fit(examples(capture), GBDTConfig(max_iter=40))


class TestGBDT(CostModelContract):
    @pytest.fixture
    def model(self, fitted):
        return fitted


def test_trees_as_arrays_predict_what_sklearn_predicts(capture):
    from sklearn.ensemble import HistGradientBoostingRegressor

    graphs = examples(capture)
    X = flat_features(graphs)
    rng = np.random.default_rng(0)
    y = rng.normal(size=len(X))
    X[::7, 3] = np.nan  # missing values go where the split says
    model = HistGradientBoostingRegressor(max_iter=25, random_state=0).fit(X, y)
    assert np.allclose(Trees.of(model).predict(X), model.predict(X))


def test_same_data_same_trees_and_the_record(capture, tmp_path):
    a = GBDTCostModel.fit(examples(capture), GBDTConfig(max_iter=20))
    b = GBDTCostModel.fit(examples(capture), GBDTConfig(max_iter=20))
    assert np.array_equal(a.trees.value, b.trees.value)
    assert a.trained_on["features_hash"] == features.code_hash()
    a.composition = Composition(1.0, 0.0, {"t4": 2.0})  # the t4's own scale
    a.save(tmp_path / "g.pt")
    again = GBDTCostModel.load(tmp_path / "g.pt")
    assert again.trained_on == a.trained_on and again.hw_range == a.hw_range
    assert again.composition == a.composition
    d = capture("bert-base", 1, 32)
    on_t4, on_a100 = again.predict_plan(d, "t4"), again.predict_plan(d, "a100")
    assert on_t4.total_ms == pytest.approx(2 * on_t4.kernels_ms)
    assert on_a100.total_ms == pytest.approx(on_a100.kernels_ms)


def test_a_gnn_checkpoint_is_no_gbdt(tmp_path):
    torch.save({"cost_model": "gnn"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a GBDT"):
        GBDTCostModel.load(tmp_path / "x.pt")


def test_the_shipped_gbdt_is_a_cost_model_anyone_can_pick(capture):
    from costmodel.models import load_cost_model
    from costmodel.models.registry import default_checkpoint

    assert default_checkpoint("gbdt").stat().st_size < 5_000_000
    model = load_cost_model("gbdt")
    assert isinstance(model, GBDTCostModel) and model.trained_on["data"] == "0.1"
    priced = model.predict_plan(capture("bert-base", 1, 32), "a100-pcie-40gb")
    assert priced.cost_model == "gbdt" and priced.total_ms > 0 and priced.overhead_ms != 0


def test_repeated_kernels_are_priced_once_and_alike(fitted, capture, monkeypatch):
    from costmodel.hardware import load_profile
    from costmodel.ir.plan import eager_partition
    from costmodel.models.features import graph_key

    subs = eager_partition(capture("bert-base", 1, 32))  # twelve identical layers
    hw = load_profile("a100-pcie-40gb")
    alone = np.array([fitted.predict([s], hw)[0] for s in subs])
    made = []
    real = features.node_features
    monkeypatch.setattr(features, "node_features", lambda *a, **k: made.append(1) or real(*a, **k))
    together = fitted.predict(subs, hw)
    assert np.allclose(together, alone)
    assert len(made) == len({graph_key(s) for s in subs}) < len(subs) / 3


def test_only_descriptors_it_reads_count_as_extrapolation(capture):
    graphs = examples(capture)  # an A100 and a T4
    blind = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=10, hardware="none"))
    seeing = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=10, hardware="all"))
    assert blind.extrapolation(load_profile("h200")) == []  # it reads only the kind of target
    assert "log10_memory_bandwidth" in seeing.extrapolation(load_profile("h200"))


def test_rows_from_kernels_equal_rows_from_their_graphs(fitted, capture):
    """Prediction builds the rows without the graphs; training reads them from the graphs."""
    from costmodel.ir.plan import KernelConfig, eager_partition

    subs = eager_partition(capture("gpt2", 2, 64))
    tile = KernelConfig(block_m=64, block_n=128, block_k=32, num_warps=4, num_stages=3)
    kernels = [(s, tile if i % 3 == 0 else None) for i, s in enumerate(subs)]
    hw = load_profile("t4")
    graphs = [features.to_data(s, hw, c) for s, c in kernels]
    for hardware in features.HARDWARE:
        for fill in FILL:
            X, ln = kernel_features(kernels, hw, hardware, fill)
            assert np.array_equal(X, flat_features(graphs, hardware, fill), equal_nan=True)
            assert np.array_equal(ln, roofline_ln(graphs))
    assert flat_features(graphs, "none", "all").shape[1] == flat_features(graphs, "none").shape[1] + 4
    assert np.array_equal(fitted.predict_kernels(kernels, hw)[0], fitted.predict_ln(graphs)[0])


def test_fill_on_tpus_alone_leaves_other_kernels_without_it(capture):
    """fill="tpu": a TPU kernel's row carries how it fills the machine; any other kernel's fill
    columns are missing, so two GPU kernels that differ only there get the same row."""
    from costmodel.ir.plan import eager_partition

    sub = max(eager_partition(capture("gpt2", 2, 64)), key=lambda s: sum(v.flops for v in s.vertices))
    gpu, tpu = features.to_data(sub, load_profile("t4"), None), features.to_data(sub, load_profile("tpu-v3"), None)
    n = features.FILL_DIM
    assert np.isnan(flat_features([gpu], "none", "tpu")[0, -n:]).all()
    assert np.array_equal(flat_features([tpu], "none", "tpu")[0, -n:], tpu.fill[0].numpy())
    assert np.array_equal(flat_features([gpu], "none", "all")[0, -n:], gpu.fill[0].numpy())
    other = gpu.clone()
    other.fill = other.fill + 1.0
    assert np.array_equal(flat_features([other], "none", "tpu"), flat_features([gpu], "none", "tpu"), equal_nan=True)
    with pytest.raises(ValueError, match="unknown fill"):
        flat_features([gpu], "none", "some")
    # a config saved when fill was a flag reads as the names it meant
    assert GBDTConfig(fill=True).fill == "all" and GBDTConfig(fill=False).fill == "none"
    with pytest.raises(UserError, match="unknown fill"):
        GBDTConfig(fill="some")


def test_a_checkpoint_records_the_versions_it_was_trained_with():
    import platform
    from importlib import metadata

    import sklearn

    from costmodel.models.train import environment

    env = environment()
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["scikit-learn"] == sklearn.__version__ and env["numpy"] == metadata.version("numpy")
    assert set(env) == {"python", "torch", "torch_geometric", "numpy", "scikit-learn", "cpu"}
    assert f"{torch.get_num_threads()} threads" in env["cpu"]


def _timed(roofline_us: float, measured_us: float, source: str, hardware: str = "t4"):
    """A kernel row as `labels` reads it: roofline terms (log10 s; launch 5 us) and y (ln ms)."""
    from torch_geometric.data import Data

    g = Data(roofline=torch.tensor([[-9.0, -9.0, np.log10(5e-6), np.log10(roofline_us * 1e-6)]]),
             y=torch.tensor([np.log(measured_us * 1e-3)], dtype=torch.float32))
    g.hardware, g.source = hardware, source
    return g


def test_device_labels_take_off_what_a_harness_adds_to_every_kernel():
    from costmodel.models.examples import labels, timing_floors

    rng = np.random.default_rng(0)
    harness = [_timed(r, r + 30.0, "neusight") for r in rng.uniform(5.5, 7.5, 150)]  # adds 30 us
    clean = [_timed(r, r, "deepbench") for r in rng.uniform(5.5, 7.5, 150)]  # adds nothing
    few = [_timed(6.0, 50.0, "other") for _ in range(10)]  # too few tiny kernels to tell
    big = [_timed(500.0, 700.0, "neusight"), _timed(500.0, 700.0, "deepbench")]
    graphs = harness + clean + few + big
    floors = timing_floors(graphs)
    assert floors[("t4", "neusight")] == pytest.approx(30e-6, rel=1e-3)
    assert floors[("t4", "deepbench")] == pytest.approx(0.0, abs=1e-7)
    assert floors[("t4", "other")] == 0.0
    measured = labels(graphs)
    assert np.array_equal(measured, [float(g.y[0]) for g in graphs])
    device = np.exp(labels(graphs, "device")) * 1e3  # us
    assert device[-2] == pytest.approx(670.0, rel=1e-4) and device[-1] == pytest.approx(700.0, rel=1e-4)
    assert np.allclose(device[:150], [np.exp(float(g.y[0])) * 1e3 - 30.0 for g in harness], rtol=1e-3)
    assert np.allclose(device[300:310], 50.0, rtol=1e-4)  # no floor told, none taken off
    # a row the floor would take below the launch overhead keeps the launch overhead
    assert np.exp(labels([*harness, _timed(6.0, 20.0, "neusight")], "device"))[-1] * 1e3 == pytest.approx(5.0)
    with pytest.raises(ValueError, match="valid: measured, device"):
        labels(graphs, "wall")


def test_device_labels_train_other_trees(capture):
    from costmodel.models.examples import timing_floors

    graphs = examples(capture) * 3  # labelled 1.65 x the roofline: its tiny kernels 3 us over it
    for g in graphs:
        g.source = "harness"
    assert all(f > 1e-6 for f in timing_floors(graphs).values())
    measured = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=20))
    assert GBDTConfig().labels == "measured"
    device = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=20, labels="device"))
    assert device.config.labels == "device"
    assert not np.array_equal(measured.trees.value, device.trees.value)
    tiny = [g for g in graphs if 10 ** float(g.roofline[0, 3]) < 6e-6]
    assert device.predict_ln(tiny)[0].mean() < measured.predict_ln(tiny)[0].mean()


def test_a_gpus_matmul_level_is_learnt_and_interpolated_in_its_tdp(capture, tmp_path):
    """level="tdp": the models' matmuls of a 70 W T4 run at half the roofline, of a 250 W V100
    at 0.8 of it; the trees, which cannot tell the two apart, learn what is left, and a 75 W P4
    nobody trained on takes the level between them, a 700 W H100 the V100's."""
    from costmodel.ir.plan import eager_partition
    from costmodel.models.base import MATMULS
    from costmodel.models.gbdt import Levels

    subs = eager_partition(capture("gpt2", 2, 64))
    slower = {"t4": np.log(2.0), "v100": np.log(1.25)}
    graphs = []
    for name, level in slower.items():
        hw = load_profile(name)
        for sub in subs:
            g = features.to_data(sub, hw, None)
            matmul = len(sub.vertices) == 1 and sub.vertices[0].kind in MATMULS
            g.y = torch.tensor([float(roofline_ln([g])[0]) + (level if matmul else 0.3)], dtype=torch.float32)
            g.hardware, g.diagram_hash, g.source = hw.name, "gpt2", "test"
            graphs.append(g)
    model = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=40, level="tdp"))
    (t4_tdp, t4_level), (v100_tdp, v100_level) = model.levels.points
    assert t4_level == pytest.approx(slower["t4"], abs=1e-6) and v100_level == pytest.approx(slower["v100"], abs=1e-6)
    assert t4_tdp == pytest.approx(np.log10(70.0), abs=1e-5) and v100_tdp == pytest.approx(np.log10(250.0), abs=1e-5)
    matmuls = [s for s in subs if len(s.vertices) == 1 and s.vertices[0].kind in MATMULS]
    assert matmuls and len(matmuls) < len(subs)
    for name, expected in (("t4", 2.0), ("v100", 1.25), ("h100-sxm", 1.25)):
        hw = load_profile(name)
        over = np.exp(model.predict_kernels([(s, None) for s in matmuls], hw)[0]
                      - roofline_ln([features.to_data(s, hw, None) for s in matmuls]))
        assert np.allclose(over, expected, rtol=0.05), name
    p4 = load_profile("p4")
    kernels = [(s, None) for s in subs]
    between = np.exp(model.predict_kernels(kernels, p4)[0]
                     - roofline_ln([features.to_data(s, p4, None) for s in subs]))
    is_mm = np.array([s in matmuls for s in subs])
    assert np.all((between[is_mm] > 1.25) & (between[is_mm] < 2.0))
    assert np.allclose(between[~is_mm], np.exp(0.3), rtol=0.05)  # a level moves matmuls alone
    graphs_p4 = [features.to_data(s, p4, None) for s in subs]
    assert np.allclose(model.predict_ln(graphs_p4)[0], model.predict_kernels(kernels, p4)[0], atol=1e-5)
    model.save(tmp_path / "g.pt")
    assert GBDTCostModel.load(tmp_path / "g.pt").levels == model.levels
    assert GBDTCostModel.fit(graphs, GBDTConfig(max_iter=5)).levels == Levels()  # the default learns none
    with pytest.raises(UserError, match="valid: none, tdp"):
        GBDTConfig(level="sm")


def test_own_levels_keep_each_training_gpu_its_own(capture):
    """level="own": two 250 W GPUs at other levels keep theirs (found by their descriptors, as a
    workload's graphs carry no name); "tdp" gives them their mean (the trees, which see their
    roofline terms, may learn the rest)."""
    from costmodel.ir.plan import eager_partition
    from costmodel.models.base import MATMULS

    subs = [s for s in eager_partition(capture("gpt2", 2, 64)) if len(s.vertices) == 1 and s.vertices[0].kind in MATMULS]
    slower = {"t4": np.log(2.0), "v100": np.log(1.25), "a100-pcie-40gb": np.log(1.1)}
    graphs = []
    for name, level in slower.items():
        hw = load_profile(name)
        for sub in subs:
            g = features.to_data(sub, hw, None)
            g.y = torch.tensor([float(roofline_ln([g])[0]) + level], dtype=torch.float32)
            g.hardware, g.diagram_hash, g.source = hw.name, "gpt2", "test"
            graphs.append(g)
    own = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=40, level="own"))
    shared = GBDTCostModel.fit(graphs, GBDTConfig(max_iter=40, level="tdp"))
    for name in slower:
        hw = load_profile(name)
        nameless = [features.to_data(s, hw, None) for s in subs]  # no .hardware, as a workload's
        over = np.exp(own.predict_kernels([(s, None) for s in subs], hw)[0] - roofline_ln(nameless))
        assert np.allclose(over, np.exp(slower[name]), rtol=0.03), name
        assert np.allclose(own.predict_ln(nameless)[0], own.predict_kernels([(s, None) for s in subs], hw)[0], atol=1e-5)
    assert not shared.levels.own and len(own.levels.own) == 3
    assert shared.levels.points == own.levels.points  # by TDP: the 250 W pair's mean
    assert shared.levels.points[1][1] == pytest.approx((np.log(1.25) + np.log(1.1)) / 2, abs=1e-6)
