from pathlib import Path

import numpy as np
import pytest

from costmodel.cost import Composition
from costmodel.evaluate import flat_features, kendall_tau, mape, model_workloads, top_k_error

RELEASE = Path(__file__).resolve().parents[2] / "datasets" / "releases" / "0.1"


def test_metrics_by_hand():
    assert mape(np.array([1.1, 0.9]), np.array([1.0, 1.0])) == pytest.approx(0.1)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    # The model's top pick measured 12 where the best is 10: 20% worse.
    assert top_k_error([0.1, 0.2, 0.3], [12.0, 10.0, 11.0], 1) == pytest.approx(0.2)
    assert top_k_error([0.1, 0.2, 0.3], [12.0, 10.0, 11.0], 2) == 0


def test_composition_recovers_overheads():
    rng = np.random.default_rng(0)
    totals, launches = rng.uniform(10, 1000, 20), rng.integers(100, 1000, 20).astype(float)
    measured = 1.3 * totals + 0.02 * launches
    c = Composition.fit(totals, launches, measured)
    assert (c.a, c.b) == pytest.approx((1.3, 0.02))
    assert Composition.fit(totals[:1], launches[:1], measured[:1]) == Composition()


@pytest.mark.skipif(not RELEASE.is_dir(), reason="release 0.1 is not in this checkout")
def test_neusight_workloads_are_whole_models():
    workloads = model_workloads(RELEASE)
    assert {w.hardware for w in workloads} == {"a100-pcie-40gb", "p100-pcie-16gb", "p4", "t4",
                                               "v100-pcie-32gb"}
    bert = next(w for w in workloads if w.name == "bert_large-inf-512-8" and w.hardware == "t4")
    # 24 blocks of the repeated layer plus the embeddings, pooler and classifier around them.
    per_block = sum(1 for r in bert.repeats if r == 24)
    assert per_block >= 10 and sum(bert.repeats) == 24 * per_block + (len(bert.repeats) - per_block)
    assert flat_features(bert.graphs).shape[0] == len(bert.graphs)


def test_leave_one_model_out_keeps_the_family_out_of_training(capture, monkeypatch):
    import costmodel.evaluate as ev
    from costmodel.evaluate import Workload, leave_one_model_out
    from costmodel.gnn import GNNConfig

    from .test_gnn import examples

    graphs = examples(capture)
    for i, g in enumerate(graphs):
        g.diagram_hash = ["bert-graph", "gpt-graph", ""][i % 3]
    workloads = [Workload(f"{fam}-inf-128-1", hw, 1.0, tuple(graphs[:3]), (1, 1, 1), dh)
                 for fam, dh in (("bert_large", "bert-graph"), ("gpt2_large", "gpt-graph"))
                 for hw in ("a100", "t4")]
    seen = []

    def fake_fold(train_set, test_set, train_w, test_w, **kw):
        seen.append(({g.diagram_hash for g in train_set}, {g.diagram_hash for g in test_set},
                     {w.family for w in train_w}, {w.family for w in test_w}))
        return None

    monkeypatch.setattr(ev, "score_fold", fake_fold)
    rows = leave_one_model_out(graphs, workloads, cfg=GNNConfig(), progress=False)
    assert list(rows) == ["bert_large", "gpt2_large"]
    assert seen[0] == ({"gpt-graph", ""}, {"bert-graph"}, {"gpt2_large"}, {"bert_large"})
    assert seen[1] == ({"bert-graph", ""}, {"gpt-graph"}, {"bert_large"}, {"gpt2_large"})
