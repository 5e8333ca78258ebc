"""The GNN cost model by its properties (synthetic labels: these test the machinery, not accuracy)."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from costmodel.models import features
from costmodel.models.features import to_data
from costmodel.models.gnn import GNNConfig, GNNCostModel, Normaliser
from costmodel.hardware import load_profile
from costmodel.ir.plan import Fuse, Plan, eager_partition
from costmodel.models.train import group_batches, ranking_loss, train

from .test_base import CostModelContract

TINY = GNNConfig(hidden=16, layers=2, epochs=2, batch_size=64, members=2, seed=1)


def examples(capture, targets=("a100", "t4")):
    """Kernel graphs labelled with a made-up function of their roofline time."""
    d = capture("bert-base", 1, 32)
    fc1 = [v.name for v in d.vertices if v.kind == "matmul"][4]
    gelu = next(v.name for v in d.vertices if v.kind == "gelu")
    kernels = [k.subdiagram for k in Plan((Fuse((fc1, gelu)),)).kernels(d)]
    out = []
    for name in targets:
        hw = load_profile(name)
        for sub in kernels:
            g = to_data(sub, hw)
            g.y = g.roofline[0, 3:4] * math.log(10) + math.log(1e3) + 0.5
            g.hardware = name
            out.append(g)
    return out


@pytest.fixture(scope="module")
def trained(capture):
    return train(examples(capture), TINY, progress=False)


class TestGNN(CostModelContract):
    @pytest.fixture
    def model(self, trained):
        return trained


def test_same_seed_same_weights(capture):
    graphs = examples(capture)[:40]
    a, b = (train(graphs, TINY, progress=False) for _ in range(2))
    for ma, mb in zip(a.members, b.members):
        for (_, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
            assert torch.equal(pa, pb)


def test_permutation_invariance(trained, capture):
    g = examples(capture)[3]
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(0))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    h = g.clone()
    h.x = g.x[perm]
    h.edge_index = inverse[g.edge_index]
    a, _ = trained.predict_ln([g])
    b, _ = trained.predict_ln([h])
    assert np.allclose(a, b, atol=1e-5)


def test_batched_equals_unbatched(trained, capture):
    graphs = examples(capture)[:30]
    together, _ = trained.predict_ln(graphs)
    alone = np.concatenate([trained.predict_ln([g])[0] for g in graphs])
    assert np.allclose(together, alone, atol=1e-5)


def test_ensemble_gives_a_spread(trained, capture):
    _, std = trained.predict_ln(examples(capture)[:10])
    assert std.shape == (10,) and np.all(std >= 0) and np.any(std > 0)


def test_group_batches_keep_groups_whole(capture):
    import random

    graphs = examples(capture)
    for g in graphs[::2]:
        g.kernel_hash = "shared"
    seen = [tuple(b) for b in group_batches(graphs, 8, random.Random(0))]
    assert sorted(i for b in seen for i in b) == list(range(len(graphs)))
    holding = [b for b in seen if any(graphs[i].kernel_hash == "shared" and graphs[i].hardware == "a100"
                                      for i in b)]
    assert len(holding) == 1


def test_ranking_loss_prefers_the_right_order():
    y = torch.tensor([1.0, 2.0, 0.0])
    group = torch.tensor([0, 0, 1])
    right = ranking_loss(torch.tensor([1.0, 3.0, 5.0]), y, group)
    wrong = ranking_loss(torch.tensor([3.0, 1.0, 5.0]), y, group)
    assert right < wrong
    assert ranking_loss(y, y, torch.tensor([0, 1, 2])) == 0


def test_save_load_rejects_other_features(trained, tmp_path):
    trained.save(tmp_path / "m.pt")
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    doc["features_version"] = "0"
    torch.save(doc, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="retrain"):
        GNNCostModel.load(tmp_path / "old.pt")


def test_normaliser_standardises():
    hw = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    n = Normaliser.fit(hw)
    out = n(hw)
    assert torch.allclose(out[:, 0], torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)]))
    assert torch.equal(out[:, 1], torch.zeros(2))  # constant columns are left centred, not blown up


def test_normaliser_clamps_to_the_training_range():
    hw = torch.tensor([[1.0, 5.0], [3.0, 7.0]])
    n = Normaliser.fit(hw, clamp=True)
    far = n(torch.tensor([[100.0, -100.0]]))
    assert torch.allclose(far, n(torch.tensor([[3.0, 5.0]])))  # the nearest hardware it saw
    assert torch.equal(Normaliser.fit(hw)(torch.tensor([[100.0, 5.0]])) > 10, torch.tensor([[True, False]]))


def test_the_correction_stays_in_its_band(trained, capture):
    from costmodel.models.features import roofline_ln_ms

    lo, hi = trained.config.correction
    graphs = examples(capture, targets=("a100", "h200", "cpu"))
    member = trained.members[0]
    saved = member.head[-1].weight.detach().clone()
    with torch.no_grad():
        member.head[-1].weight.mul_(1e4)  # even with its head blown up, no prediction leaves the band
        try:
            batch = Batch.from_data_list(graphs)
            c = member(batch, trained.normaliser(batch.hw)) - roofline_ln_ms(batch)
        finally:
            member.head[-1].weight.copy_(saved)  # the fixture is shared: restore it exactly
    assert float(c.min()) < lo + 1e-3 or float(c.max()) > hi - 1e-3  # pushed to the band's edge
    assert float(c.min()) >= lo - 1e-5 and float(c.max()) <= hi + 1e-5


def test_a_checkpoint_from_before_the_guards_loads_unguarded(trained, tmp_path):
    trained.save(tmp_path / "m.pt")
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    for key in ("clamp_hardware", "correction"):
        del doc["config"][key]
    for key in ("lo", "hi"):
        del doc["normaliser"][key]
    torch.save(doc, tmp_path / "old.pt")
    old = GNNCostModel.load(tmp_path / "old.pt")
    assert old.config.correction is None and old.members[0].correction is None
    assert old.normaliser.lo == () and trained.normaliser.lo != ()


def test_plan_prices_carry_spread_overhead_and_extrapolation(trained, capture):
    from dataclasses import replace

    from costmodel.models.base import Composition

    d = capture("bert-base", 1, 32)
    plain = trained.predict_plan(d, "a100")
    assert plain.overhead_ms == pytest.approx(0.0) and plain.warnings == ()  # trained on a100 and t4
    assert all(k.spread >= 0 for k in plain.kernels)
    slower = GNNCostModel(trained.config, trained.members, trained.normaliser,
                          composition=Composition(1.5, 0.01), hw_range=trained.hw_range,
                          trained_on={"hardware": ["a100", "t4"],
                                      "features_hash": features.code_hash()})
    priced = slower.predict_plan(d, "a100")
    assert priced.total_ms == pytest.approx(1.5 * plain.kernels_ms + 0.01 * len(plain.kernels))
    far = slower.predict_plan(d, "h200")
    assert far.warnings and "extrapolates" in far.warnings[0] and "memory_bandwidth" in far.warnings[0]
    assert replace(priced, warnings=()).total_ms == priced.total_ms



def test_physical_hardware_inputs(capture, tmp_path):
    from dataclasses import replace

    from costmodel.models.features import PHYSICAL, hardware_columns

    cols = hardware_columns("physical")
    assert len(cols) == len(PHYSICAL) < len(hardware_columns("all"))
    model = train(examples(capture), replace(TINY, hardware="physical", members=1), progress=False)
    assert model.normaliser.columns == cols and len(model.normaliser.mean) == len(cols)
    model.save(tmp_path / "m.pt")
    again = GNNCostModel.load(tmp_path / "m.pt")
    graphs = examples(capture)[:5]
    assert np.allclose(again.predict_ln(graphs)[0], model.predict_ln(graphs)[0])
    with pytest.raises(ValueError, match="physical"):
        hardware_columns("identity")


def test_the_shipped_checkpoint_is_the_default(capture):
    from costmodel.models.registry import default_checkpoint, load_cost_model

    path = default_checkpoint()
    assert path.stat().st_size < 5_000_000  # small enough to ship in the package
    model = load_cost_model("gnn")
    assert isinstance(model, GNNCostModel) and len(model.members) >= 2
    assert model.trained_on["data"] == "0.1" and "a100-pcie-40gb" in model.trained_on["hardware"]
    d = capture("bert-base", 1, 32)
    priced = model.predict_plan(d, "a100-pcie-40gb")  # a GPU it trained on
    assert priced.cost_model == "gnn" and priced.total_ms > 0
    assert not [w for w in priced.warnings if "outside" in w]
    assert GNNCostModel.load(path).predict_plan(d, "a100-pcie-40gb").total_ms == priced.total_ms
    assert "outside" in model.predict_plan(d, "h200").warnings[0]  # 4.8 TB/s: far beyond its GPUs


def test_a_checkpoint_records_its_feature_code(trained, capture, tmp_path):
    """Loading under other features says so in one line; a checkpoint from before the record
    still loads, flagged."""
    d = capture("bert-base", 1, 32)
    assert trained.trained_on["features_hash"] == features.code_hash()
    trained.save(tmp_path / "m.pt")
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    doc["trained_on"]["features_hash"] = "0123456789ab"
    torch.save(doc, tmp_path / "other.pt")
    other = GNNCostModel.load(tmp_path / "other.pt").predict_plan(d, "a100").warnings
    [line] = [w for w in other if "feature code" in w]
    assert "0123456789ab" in line and features.code_hash() in line and "\n" not in line
    del doc["trained_on"]["features_hash"]
    torch.save(doc, tmp_path / "old.pt")
    old = GNNCostModel.load(tmp_path / "old.pt").predict_plan(d, "a100").warnings
    assert any("does not record the feature code" in w for w in old)


def test_kernels_price_as_their_graphs(trained, capture):
    """`predict_kernels` batches the kernels directly; `predict_ln` reads their graphs."""
    from costmodel.ir.plan import KernelConfig

    subs = eager_partition(capture("gpt2", 2, 64))
    tile = KernelConfig(block_m=64, block_n=128, block_k=32, num_warps=4, num_stages=3)
    kernels = [(s, tile if i % 3 == 0 else None) for i, s in enumerate(subs)]
    hw = load_profile("t4")
    direct = trained.predict_kernels(kernels, hw, batch_size=50)
    graphs = trained.predict_ln([to_data(s, hw, c) for s, c in kernels])
    for a, b in zip(direct, graphs):
        assert np.allclose(a, b, atol=1e-6)
    assert [len(a) for a in trained.predict_kernels([], hw)] == [0, 0]
