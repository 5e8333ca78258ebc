"""A cost model calibrated on one target by a few GEMMs timed there (`costmodel calibrate`)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from costmodel.errors import UserError
from costmodel.ir.capture import single_op
from costmodel.measure import gemms
from costmodel.models import calibration as cal
from costmodel.models.evaluate import fit_calibration
from costmodel.models.examples import kernel_class
from costmodel.models.learned import GraphCostModel

aten = torch.ops.aten


def _meta(*shape):
    return torch.empty(*shape, device="meta")


class HalfMatmuls(GraphCostModel):
    """Prices a labelled kernel graph at its label, an unlabelled one at 1 ms, and every matmul
    at half that: a model off by 2x on matmuls alone."""

    name = "half-matmuls"

    def predict_ln(self, graphs):
        ln = np.array([float(g.y[0]) if getattr(g, "y", None) is not None else 0.0 for g in graphs])
        return ln - math.log(2.0) * np.array([kernel_class(g) == "matmul" for g in graphs]), np.zeros(len(graphs))

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def test_only_one_op_matmuls_and_convs_are_scaled(capture):
    d = capture("bert-base", 1, 32)
    matmul = next(v for v in d.vertices if v.kind == "matmul")
    gelu = next(v for v in d.vertices if v.kind == "gelu")
    assert cal.is_matmul(d.subdiagram([matmul.name]))
    assert not cal.is_matmul(d.subdiagram([gelu.name]))


def test_shots_are_timed_alone_by_the_runner():
    """Through the fake GPU each GEMM's time is its roofline (no noise); on this host it is a
    real time; a shot that fails is recorded, not raised."""
    from costmodel.hardware import load_profile
    from costmodel.ir.plan import Kernel
    from costmodel.measure.fake import FakeRunner
    from costmodel.measure.host import HostRunner
    from costmodel.models.roofline import Roofline

    subs = [single_op(aten.bmm.default, [_meta(4, 64, 32), _meta(4, 32, 48)]),
            single_op(aten.linear.default, [_meta(2, 16, 32), _meta(8, 32), _meta(8)])]
    fake = FakeRunner(hardware="h100-sxm", noise=0.0)
    shots = gemms.time_shots(fake, subs, progress=False)
    hw = load_profile("h100-sxm")
    for shot, sub in zip(shots, subs):
        assert shot["error"] is None and shot["hash"] == sub.hash
        assert shot["measured_ms"] == pytest.approx(Roofline().kernel_seconds(sub, hw, None) * 1e3)
    host = gemms.timed(HostRunner(target_s=0.01, min_repeats=3), load_profile("cpu"), subs[:1], seed=0,
                     release="datasets/releases/0.1", progress=False)
    assert host.shots[0]["measured_ms"] > 0 and host.shots[0]["repeats"] >= 3
    assert host.made["runner"] == "cpu" and host.shift is None
    assert Kernel(subs[0]).subdiagram.hash == host.shots[0]["hash"]


def _fitted(capture, monkeypatch, shots_ms=1.0):
    """A HalfMatmuls fitted on t4 from 4 GEMMs measured at `shots_ms`, the composition refitted on
    an a100 whose kernels and models are as labelled."""
    from costmodel.models import evaluate
    from costmodel.models.examples import Workload

    from .test_gnn import examples as labelled

    graphs = labelled(capture, targets=("a100",))
    matmuls = [i for i, g in enumerate(graphs) if kernel_class(g) == "matmul"]
    for g in graphs:
        g.source, g.diagram_hash = "neusight", ""
    graphs[matmuls[0]].diagram_hash = "h"  # a kernel of the models: their source's GEMMs are the shots
    workloads = []
    for n in (3, 5, 8):  # models of different sizes, so the composition's a and b are determined
        kernels = graphs[:n]
        total = sum(math.exp(float(g.y[0])) for g in kernels)
        workloads.append(Workload(f"m{n}", "a100", total + 0.01 * n, tuple(kernels), (1,) * n, "h"))
    monkeypatch.setattr(evaluate, "training_graphs", lambda *a, **k: graphs)
    monkeypatch.setattr(evaluate, "model_workloads", lambda *a, **k: workloads)
    d = capture("bert-base", 1, 32)
    subs = [d.subdiagram([v.name]) for v in d.vertices if v.kind == "matmul"][:4]
    shots = tuple({"hash": s.hash, "subdiagram": s.to_record(), "measured_ms": shots_ms, "error": None}
                  for s in subs)
    timed = cal.Calibration("t4", shots, {"seed": 0, "runner": "test"})
    assert len(matmuls) >= 5
    return HalfMatmuls(), evaluate.fit_calibration(HalfMatmuls(), timed, "unused", progress=False), d


def test_a_calibration_scales_the_targets_matmuls_and_refits_the_composition(capture, monkeypatch):
    """Shots measured at 1 ms that the model prices at 0.5 give a shift of ln 2; the training GPU
    calibrated by its own GEMMs the same way, its models' kernels add up to their times (a = 1,
    b = 0.01 ms a launch); the target's matmul kernels, only they, are doubled."""
    from costmodel.ir.plan import Plan

    model, fitted, d = _fitted(capture, monkeypatch)
    assert fitted.shift == pytest.approx(math.log(2.0))
    a, b = fitted.composition
    assert a == pytest.approx(1.0, abs=1e-6) and b == pytest.approx(0.01, abs=1e-6)
    assert fitted.cost_model == model.key and fitted.fitted["shots"] == 4
    calibrated = cal.Calibrated(model, fitted)
    plain, scaled = model.predict_plan(d, "t4"), calibrated.predict_plan(d, "t4")
    for p, s in zip(plain.kernels, scaled.kernels):
        assert s.ms == pytest.approx(p.ms * (2.0 if cal.is_matmul(p.subdiagram) else 1.0))
    assert scaled.total_ms == pytest.approx(a * scaled.kernels_ms + b * Plan().launches(len(scaled.kernels)))
    assert scaled.composition[2] == "calibrated"
    subs = [k.subdiagram for k in plain.kernels]
    assert np.allclose(calibrated.predict(subs, "t4"), [s.ms for s in scaled.kernels])
    elsewhere = calibrated.predict_plan(d, "a100")  # another target: as the model prices it
    assert elsewhere.total_ms == pytest.approx(model.predict_plan(d, "a100").total_ms)
    assert any("calibration is of t4" in w for w in elsewhere.warnings)
    assert calibrated.key != model.key and calibrated.name == model.name


def test_a_calibration_file_round_trips_and_bad_ones_are_said(capture, monkeypatch, tmp_path):
    model, fitted, _ = _fitted(capture, monkeypatch)
    path = tmp_path / "t4.json"
    fitted.save(path)
    assert cal.Calibration.load(path) == fitted
    with pytest.raises(UserError, match="fitted for cost model"):
        cal.Calibrated(model, dataclasses.replace(fitted, cost_model="gnn-x"))
    with pytest.raises(UserError, match="timed but not fitted"):
        cal.Calibrated(model, cal.Calibration("t4", fitted.shots, fitted.made))
    (tmp_path / "bad.json").write_text('{"format": "feyntune-calibration/1", "target": "t4"}')
    with pytest.raises(UserError, match="damaged"):
        cal.Calibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a feyntune calibration"):
        cal.Calibration.load(tmp_path / "other.json")
    with pytest.raises(UserError, match="no calibration file"):
        cal.Calibration.load(tmp_path / "missing.json")
    failed = cal.Calibration("t4", tuple({**s, "measured_ms": None, "error": "out of memory"}
                                         for s in fitted.shots), fitted.made)
    with pytest.raises(UserError, match="fewer than 4.*out of memory"):
        fit_calibration(model, failed, "unused", progress=False)


def test_shots_are_drawn_from_the_releases_gemm_micro_benchmarks():
    """One-op matmuls of no model, by a source that timed models; the same seed, the same shots."""
    pool = cal.gemm_pool("datasets/releases/0.1")
    assert len(pool) > 1000 and all(cal.is_matmul(s) and s.vertices[0].kind == "matmul" for s in pool)
    first = cal.draw_shots("datasets/releases/0.1", 5, seed=3)
    assert [s.hash for s in first] == [s.hash for s in cal.draw_shots("datasets/releases/0.1", 5, seed=3)]
    assert [s.hash for s in first] != [s.hash for s in cal.draw_shots("datasets/releases/0.1", 5, seed=4)]
