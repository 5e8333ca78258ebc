from pathlib import Path

import numpy as np
import pytest

from costmodel.models.base import Composition
from costmodel.models.examples import model_workloads
from costmodel.models.gbdt import flat_features
from costmodel.ir.diagram import Subdiagram
from costmodel.models.evaluate import (
    RankGroup,
    fusion_members,
    kendall_tau,
    mape,
    random_top_k_error,
    score_ranking,
    split_groups,
    top_k_error,
)

RELEASE = Path(__file__).resolve().parents[3] / "datasets" / "releases" / "0.1"


def test_metrics_by_hand():
    assert mape(np.array([1.1, 0.9]), np.array([1.0, 1.0])) == pytest.approx(0.1)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    # The model's top pick measured 12 where the best is 10: 20% worse.
    assert top_k_error([0.1, 0.2, 0.3], [12.0, 10.0, 11.0], 1) == pytest.approx(0.2)
    assert top_k_error([0.1, 0.2, 0.3], [12.0, 10.0, 11.0], 2) == 0
    # Predictions tied across the k-th place count as every order of the tied configs: all tied
    # is a random order; one sure pick and two of three tied, the expectation over the three.
    true = [20.0 + i for i in range(40)]
    true[6] = 10.0
    assert top_k_error([1.0] * 40, true, 5) == pytest.approx(random_top_k_error(true, 5))
    assert top_k_error([1.0] * 6 + [0.5] + [1.0] * 33, true, 1) == 0
    # [0.1 sure: 12], then 10 and 11 and 13 tied for the two places left: 10 is drawn 2/3 of
    # the time, else 11 (the best of 11 and 13): error (2/3 * 0 + 1/3 * 1) / 10.
    assert top_k_error([0.1, 0.2, 0.2, 0.2], [12.0, 10.0, 11.0, 13.0], 3) == pytest.approx(1 / 30)


def test_composition_recovers_overheads():
    rng = np.random.default_rng(0)
    totals, launches = rng.uniform(10, 1000, 20), rng.integers(100, 1000, 20).astype(float)
    measured = 1.3 * totals + 0.02 * launches
    c = Composition.fit(totals, launches, measured)
    assert (c.a, c.b) == pytest.approx((1.3, 0.02))
    assert Composition.fit(totals[:1], launches[:1], measured[:1]) == Composition()


def test_composition_refits_the_scale_when_the_launch_term_would_go_below_zero():
    # Whole models faster than their kernels' sum, by more the more kernels they launch: the
    # joint fit's b is negative, so b = 0 and a is the least-squares scale alone, not the joint a.
    totals, launches = np.array([100.0, 200.0, 300.0, 400.0]), np.array([900.0, 100.0, 800.0, 200.0])
    measured = 1.1 * totals - 0.01 * launches
    c = Composition.fit(totals, launches, measured)
    r = totals / measured
    assert c.b == 0 and c.a == pytest.approx(r.sum() / (r * r).sum())
    joint, *_ = np.linalg.lstsq(np.stack([totals, launches], 1) / measured[:, None], np.ones(4), rcond=None)
    assert joint[1] < 0 and c.a < joint[0]


def test_composition_scales_each_target_with_enough_models_of_its_own():
    rng = np.random.default_rng(0)
    totals, launches = rng.uniform(10, 1000, 9), rng.integers(100, 1000, 9).astype(float)
    hardware = ["a100"] * 4 + ["t4"] * 3 + ["p4"] * 2
    measured = np.array([1.0] * 4 + [1.4] * 3 + [1.2] * 2) * totals + 0.01 * launches
    c = Composition.fit(totals, launches, measured, hardware)
    pooled = Composition.fit(totals, launches, measured)
    assert (c.a, c.b) == (pooled.a, pooled.b) and pooled.own == {}
    assert set(c.own) == {"a100", "t4"}  # p4's two models are fewer than MIN_OWN
    for name, rows in (("a100", slice(0, 4)), ("t4", slice(4, 7))):
        a, b, fit = c.terms(name)
        assert (a, b, fit) == (c.own[name], c.b, "own")  # one parameter of its own: the pooled b
        x, y = totals[rows] / measured[rows], launches[rows] / measured[rows]
        (best,), *_ = np.linalg.lstsq(x[:, None], 1 - b * y, rcond=None)
        assert a == pytest.approx(best)
    assert c.own["a100"] < c.a < c.own["t4"] and c.terms("h100") == (c.a, c.b, "pooled")
    ape = lambda p: np.abs(p / measured[:7] - 1).mean()  # noqa: E731
    assert ape(c(totals[:7], launches[:7], hardware[:7])) < ape(pooled(totals[:7], launches[:7])) / 2
    # p4, and a target nobody measured, take the fit over every model.
    assert c(totals[7:], launches[7:], ["p4", "h100"]) == pytest.approx(pooled(totals[7:], launches[7:]))


def test_a_target_nobody_measured_takes_the_median_of_the_targets_own_scales():
    # Four GPUs, one (a100) with many models whose kernels sum to more than its runs: the pooled
    # a leans to it, the median of the four scales does not, and counts each GPU once.
    rng = np.random.default_rng(1)
    scale = {"a100": 0.8, "p100": 1.0, "t4": 1.05, "v100": 1.1}
    hardware = ["a100"] * 10 + ["p100"] * 3 + ["t4"] * 3 + ["v100"] * 3
    totals, launches = rng.uniform(10, 1000, len(hardware)), rng.integers(100, 1000, len(hardware)).astype(float)
    measured = np.array([scale[h] for h in hardware]) * totals + 0.01 * launches
    c = Composition.fit(totals, launches, measured, hardware)
    median = float(np.median([c.own[h] for h in scale]))
    assert c.own == pytest.approx(scale, rel=3e-3) and median == pytest.approx(1.025, rel=3e-3)
    assert c.a < 0.95  # the pooled fit, pulled by the a100's ten models
    assert c.unseen == (pytest.approx(median), "median") and c.terms("h100") == (c.unseen[0], c.b, "median")
    assert c(totals[:1], launches[:1], ["h100"])[0] == pytest.approx(median * totals[0] + c.b * launches[0])
    assert c(totals[:1], launches[:1])[0] == pytest.approx(median * totals[0] + c.b * launches[0])
    # Fewer than MIN_MEDIAN scales of their own: the pooled fit.
    two = [h if h in ("a100", "p100") else "" for h in hardware]
    few = Composition.fit(totals, launches, measured, [h or f"gpu{i}" for i, h in enumerate(two)])
    assert len(few.own) == 2 and few.terms("h100") == (few.a, few.b, "pooled")


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
    import costmodel.models.evaluate as ev
    from costmodel.models.evaluate import leave_one_model_out
    from costmodel.models.examples import Workload
    from costmodel.models.gnn import GNNConfig

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

    monkeypatch.setattr(ev, "score_fold", fake_fold)
    rows = leave_one_model_out(graphs, workloads, cfg=GNNConfig(), progress=False)
    assert list(rows) == ["bert_large", "gpt2_large"]
    assert seen[0] == ({"gpt-graph", ""}, {"bert-graph"}, {"gpt2_large"}, {"bert_large"})
    assert seen[1] == ({"bert-graph", ""}, {"gpt-graph"}, {"bert_large"}, {"gpt2_large"})


def test_each_fold_says_when_it_starts(capture, monkeypatch, capsys):
    """A fold trains for minutes: the protocols say which one runs, on stderr."""
    import costmodel.models.evaluate as ev
    from costmodel.models.examples import Workload
    from costmodel.models.gnn import GNNConfig

    from .test_gnn import examples

    graphs = examples(capture)
    for g in graphs:
        g.diagram_hash = "h"
    workloads = [Workload("bert_large-inf-128-1", hw, 1.0, tuple(graphs[:3]), (1, 1, 1), "h")
                 for hw in ("a100", "t4")]
    monkeypatch.setattr(ev, "score_fold", lambda *a, **kw: None)
    ev.leave_one_gpu_out(graphs, workloads, cfg=GNNConfig())
    ev.leave_one_model_out(graphs, workloads, cfg=GNNConfig())
    err = capsys.readouterr().err.splitlines()
    assert err == ["fold 1/2: a100 held out", "fold 2/2: t4 held out", "fold 1/1: bert_large held out"]
    ev.leave_one_gpu_out(graphs, workloads, cfg=GNNConfig(), progress=False)
    assert capsys.readouterr().err == ""


def test_a_fold_scores_the_same_whichever_folds_run_with_it(capture):
    """Each fold's training starts from the seed: holding out t4 alone or after a100 gives the
    same scores, for every method."""
    from costmodel.models.evaluate import leave_one_gpu_out
    from costmodel.models.examples import Workload
    from costmodel.models.gnn import GNNConfig

    from .test_gnn import examples

    graphs = examples(capture)
    workloads = [Workload(f"bert_large-inf-32-{i}", hw, 1.0, tuple(graphs[i:i + 3]), (1, 1, 1), "h")
                 for hw in ("a100", "t4") for i in (0, 3)]
    cfg = GNNConfig(hidden=8, layers=1, epochs=1, members=1, batch_size=64)
    both = leave_one_gpu_out(graphs, workloads, cfg=cfg, gpus=["a100", "t4"], progress=False)
    alone = leave_one_gpu_out(graphs, workloads, cfg=cfg, gpus=["t4"], progress=False)
    assert both["t4"] == alone["t4"]
    assert set(both["t4"].mape) == {"gnn", "gbdt", "hybrid", "roofline"}


def test_ranking_metrics_by_hand():
    assert kendall_tau([0.1, 0.5, 0.2, 0.9], [1, 5, 2, 9]) == 1
    assert kendall_tau([0.1, 0.5, 0.2, 0.9], [9, 2, 5, 1]) == -1
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 of 3 pairs in order
    # Measured 10, 12, 11: a random pick is 11 on average (10% off); the best of a random
    # pair is 10, 10 or 11 (1/30 off); every config at once finds the best.
    true = [10.0, 12.0, 11.0]
    assert random_top_k_error(true, 1) == pytest.approx(0.1)
    assert random_top_k_error(true, 2) == pytest.approx(1 / 30)
    assert random_top_k_error(true, 5) == 0 and top_k_error([3, 2, 1], true, 5) == 0


def group(family, key, measured, kernels=()):
    return RankGroup(family, key, "hw", tuple(f"c{i}" for i in range(len(measured))), tuple(measured),
                     kernels, frozenset({key}))


def test_split_holds_out_half_of_each_family_by_seed():
    groups = [group("a", f"k{i}", [1, 2]) for i in range(7)] + [group("b", "only", [1, 2])]
    train, held = split_groups(groups, seed=0)
    assert sorted(g.family for g in held) == ["a"] * 4 + ["b"]  # ceil(n/2) of each family
    assert {g.key for g in train}.isdisjoint(g.key for g in held) and len(train) + len(held) == 8
    assert split_groups(groups, seed=0) == (train, held)
    assert {g.key for g in split_groups(groups, seed=1)[1]} != {g.key for g in held}


def test_score_ranking_sums_a_configs_kernels(capture):
    """Config 0 runs two kernels, config 1 one: a method's time for a config is their sum."""
    from .test_gnn import examples

    a, b, c = examples(capture, targets=("a100",))[:3]
    groups = [group("f", "g1", [5.0, 1.0], ((a, b), (c,))), group("f", "g2", [1.0, 3.0], ((a,), (b, c))),
              group("tpu", "p", [2.0, 1.0, 4.0])]
    ms = {id(a): 2.0, id(b): 2.5, id(c): 4.0}  # by hand: g1 is (4.5, 4.0), g2 is (2.0, 6.5)

    def by_hand(graphs):
        return np.log([ms[id(g)] for g in graphs])

    rows = score_ranking(groups, {"hand": by_hand})
    f = rows["f"]
    assert (f.groups, f.configs) == (2, (2, 2, 2.0))
    assert f.kendall_tau["hand"] == 1 and f.top1["hand"] == 0 and f.top5["hand"] == 0
    assert f.top1["random"] == pytest.approx((2.0 + 1.0) / 2)  # a coin flip: (5-1)/1 or (3-1)/1
    # No kernels: the features cannot tell the configs apart; only the random order is scored.
    tpu = rows["tpu"]
    assert np.isnan(tpu.kendall_tau["hand"]) and np.isnan(tpu.top1["hand"])
    assert tpu.top1["random"] == pytest.approx((1.0 + 0.0 + 3.0) / 3)
    assert tpu.to_dict()["kendall_tau"]["hand"] is None  # JSON null, not NaN


def test_fusion_members_are_the_measured_eager_kernels(capture):
    from costmodel.ir.plan import Fuse, Plan

    d = capture("bert-base", 1, 32)
    fc1 = [v.name for v in d.vertices if v.kind == "matmul"][4]
    gelu = next(v.name for v in d.vertices if v.kind == "gelu")
    fused = next(k.subdiagram for k in Plan((Fuse((fc1, gelu)),)).kernels(d) if len(k.subdiagram.kinds) > 1)
    # Rebuilt from the group alone (as the dataset stores it), not from the whole diagram.
    rebuilt = Subdiagram.from_record(fused.to_record())
    assert [k.hash for k in fusion_members(rebuilt)] == [d.subdiagram([fc1]).hash, d.subdiagram([gelu]).hash]


def test_ranking_end_to_end_on_a_fake_gpu(tmp_path):
    """A one-layer model measured on the fake GPU (seeded roofline-shaped timings): fusion groups
    and matmul tiles become groups; the held-out half never reaches training."""
    import costmodel.models.evaluate as ev
    from costmodel.ir.zoo import export_model
    from costmodel.measure import measure
    from costmodel.measure.fake import FakeRunner
    from costmodel.models.gnn import GNNConfig
    from costmodel.models.train import training_graphs

    from ..measure.test_measure import TINY

    measure(export_model("scgpt", 1, 16, "fp32", overrides=TINY), target=FakeRunner(),
            root=tmp_path / "data", progress=False, budget_s=120)
    graphs = training_graphs(tmp_path / "data", tmp_path / "cache", progress=False)
    groups = ev.ranking_groups(tmp_path / "data")
    assert {g.family for g in groups} == {"fusion / a100-sxm4-80gb", "tiles / a100-sxm4-80gb"}
    tiles = next(g for g in groups if g.family.startswith("tiles"))
    assert tiles.configs[0] == '{"compiler": "eager", "fused": false}' and len(tiles.configs) > 5
    cfg = GNNConfig(hidden=8, layers=1, epochs=1, members=1, batch_size=256)
    _, held = ev.split_groups(groups, cfg.seed)
    hidden = {(h, g.hardware) for g in held for h in g.exclude}
    seen = []
    real = ev.train

    def spy(train_set, *a, **kw):
        seen.extend((g.kernel_hash, g.hardware) for g in train_set)
        return real(train_set, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "train", spy)
        rows = ev.ranking(graphs, groups, cfg=cfg, progress=False)
    assert seen and hidden.isdisjoint(seen)
    assert set(rows) == {g.family for g in held}
    for s in rows.values():
        assert -1 <= s.kendall_tau["gnn"] <= 1 and s.top1["gbdt"] >= 0
    # The fake GPU times tiles as the roofline prices them (plus 5% noise): it ranks them well.
    assert rows["tiles / a100-sxm4-80gb"].kendall_tau["roofline"] > 0.5


def test_composition_floor_prices_kernels_at_their_measured_times(capture):
    """Whole models whose kernels add up to them exactly score 0 on every fold; a GPU whose
    kernels add up to 1.5 times its whole models is left with the error the composition fitted
    on the other GPU's models makes of them."""
    import math

    from costmodel.models.evaluate import composition_floor
    from costmodel.models.examples import Workload

    from .test_gnn import examples

    graphs = examples(capture)[:6]
    for g in graphs:
        g.hardware, g.diagram_hash = "a100", ""  # kernels of no model's graph: no family holds them
    total = sum(math.exp(float(g.y[0])) for g in graphs[:3])
    exact = [Workload(f"{fam}-inf-32-1", hw, total, tuple(graphs[:3]), (1, 1, 1), "h")
             for fam in ("bert_large", "gpt2_large") for hw in ("a100", "t4")]
    floor = composition_floor(graphs, exact)
    assert floor["logo"] == {"a100": pytest.approx(0)}  # t4 has workloads but no kernels
    assert floor["lomo"] == {"bert_large": pytest.approx(0), "gpt2_large": pytest.approx(0)}
    off = [Workload(w.name, w.hardware, w.measured_ms / (1.5 if w.hardware == "t4" else 1.0),
                    w.graphs, w.repeats, w.diagram_hash) for w in exact]
    for g in graphs:
        g.hardware = "t4" if g is graphs[0] else "a100"
    floor = composition_floor(graphs, off)
    assert floor["logo"]["t4"] == pytest.approx(0.5) and floor["logo"]["a100"] == pytest.approx(1 / 3)
    # Summed as they are, a100's own rows agree with its runs: only the fit from t4's pulls it off.
    assert floor["logo_sum"] == {"a100": pytest.approx(0), "t4": pytest.approx(0.5)}
    assert floor["lomo_sum"]["bert_large"] == pytest.approx(0.25)  # one GPU's run of two is off by half


def test_holding_out_hardware_the_data_lacks_names_what_it_has(capture):
    from costmodel.errors import UserError
    from costmodel.models.evaluate import leave_one_gpu_out
    from costmodel.models.gnn import GNNConfig

    from .test_gnn import examples

    with pytest.raises(UserError, match="no kernels measured on h999; hardware in the data: a100, t4"):
        leave_one_gpu_out(examples(capture), [], cfg=GNNConfig(), gpus=["h999"], progress=False)


def test_calibration_is_the_median_ratio_of_measured_to_predicted():
    from costmodel.models.base import calibration

    # Three kernels at twice their predicted time and one odd timing: the odd one moves nothing.
    assert calibration(np.zeros(4), np.log([2.0, 2.0, 2.0, 50.0])) == pytest.approx(np.log(2.0))
    with pytest.raises(ValueError, match="2 predictions for 1 measured"):
        calibration(np.zeros(2), np.zeros(1))
    with pytest.raises(ValueError):
        calibration(np.zeros(0), np.zeros(0))


def test_few_shot_scales_a_held_out_gpu_by_its_own_matmuls(capture):
    """A model that prices every matmul at half its time is off on both GPUs; with any number of
    each GPU's own matmul micro-benchmarks timed it is exact on the held-out GPU's other kernels
    and its whole models (the composition fitted on the training GPU's calibrated kernels). A
    model off on every kernel is mended on the matmuls alone. Only matmuls of no model, from the
    source that measured the models, are shots."""
    import math

    from costmodel.models.evaluate import few_shot, shot_pool, workload_parts
    from costmodel.models.examples import Workload, kernel_class

    from .test_gnn import examples

    def setup(target):
        graphs = examples(capture, targets=(target,))
        matmuls = [i for i, g in enumerate(graphs) if kernel_class(g) == "matmul"]
        for g in graphs:
            g.source, g.diagram_hash = "neusight", ""
        graphs[matmuls[0]].diagram_hash = "h"  # the model's own kernel: never a shot
        graphs[matmuls[1]].source = "deepbench"  # another harness: never a shot
        workloads = []
        for n in (2, 3, 5):  # models of different sizes, so the composition's fit is determined
            kernels = graphs[:n]
            total = sum(math.exp(float(g.y[0])) for g in kernels)
            workloads.append(Workload(f"bert_large-inf-32-{n}", target, total, tuple(kernels), (1,) * n, "h"))
        return graphs, workloads, matmuls

    test, test_w, matmuls = setup("t4")
    train, train_w, _ = setup("a100")
    assert len(matmuls) >= 6 and shot_pool(test, test_w) == matmuls[2:]
    exact = {id(g): float(g.y[0]) for g in (*test, *train)}
    is_mm = {id(g): kernel_class(g) == "matmul" for g in (*test, *train)}
    fns = {"gbdt": lambda gs: np.array([exact[id(g)] - math.log(2.0) * is_mm[id(g)] for g in gs]),
           "roofline": lambda gs: np.array([exact[id(g)] + math.log(2.0) for g in gs])}
    pred = {m: f(test) for m, f in fns.items()}
    parts = {m: (workload_parts(f, train_w), workload_parts(f, test_w)) for m, f in fns.items()}
    kernel, whole = few_shot(fns, pred, parts, train, test, train_w, test_w, shots=(1, 3, 99), draws=3, seed=0)
    assert set(kernel) == set(whole) == {"1", "3"}  # more shots than the pool holds: left out
    others = sum(not is_mm[id(g)] for g in test)
    for k in (1, 3):
        assert kernel[str(k)]["gbdt"] == pytest.approx(0) and whole[str(k)]["gbdt"] == pytest.approx(0)
        # The roofline's other kernels stay twice their time: 100% off each, the k shots not scored.
        assert kernel[str(k)]["roofline"] == pytest.approx(others / (len(test) - k))
    # Draws depend on the seed and the GPU alone: the same call gives the same figures.
    again = few_shot(fns, pred, parts, train, test, train_w, test_w, shots=(1, 3, 99), draws=3, seed=0)
    assert again == (kernel, whole)


def test_the_eval_table_shows_the_few_shot_scores_beneath_the_unseen_ones():
    from costmodel.models.evaluate import Scores, format_table

    plain = Scores({"gbdt": 0.2}, 10, {"gbdt": 0.15}, 3)
    assert "shots" not in format_table("t", {"t4": plain})
    shot = Scores({"gbdt": 0.2}, 10, {"gbdt": 0.15}, 3, {"8": {"gbdt": 0.18}}, {"8": {"gbdt": 0.09}})
    lines = format_table("t", {"t4": shot}).splitlines()
    assert lines[-1] == "| t4 | 8 | 18.0% | 9.0% |" and "| held out | shots |" in lines[-3]
