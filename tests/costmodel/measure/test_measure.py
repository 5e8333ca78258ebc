"""Measurement: requests, backends (host CPU, fake GPU; CUDA where present), rows, budgets,
re-runs and interrupts. Small models and short timings: the numbers are noise, the plumbing is
what is tested."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from costmodel.ir import rules
from costmodel.ir.plan import KernelConfig
from costmodel.measure import Program, Result, Runner, collect, measure, runner
from costmodel.measure.cuda import CudaRunner
from costmodel.measure.fake import FakeRunner
from costmodel.measure.host import HostRunner
from costmodel.measure.variants import Request
from costmodel.ir.capture import export_module
from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.ir.plan import Fuse, Plan, eager_partition
from costmodel.ir.zoo import export_model

TINY = {"n_genes": 64, "d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 32}


@pytest.fixture(scope="module")
def tiny():
    """A one-layer scGPT at seq 16: embedding, matmuls, an explicit scGPT mask, layer norms."""
    return export_model("scgpt", 1, 16, "fp32", overrides=TINY)


@pytest.fixture(scope="module")
def program(tiny):
    return Program(*tiny)


def fast_host(**kw) -> HostRunner:
    """Timings of a few calls, eager only (no compiles): fast, for the plumbing."""
    opts = {"target_s": 0.002, "min_repeats": 3, "max_repeats": 20, "warmup_s": 0.0,
            "compilers": ("eager",), "fusion": False}
    return HostRunner(**{**opts, **kw})


def rows(root):
    return read_table("measurements", root)


# ---------------------------------------------------------------------------------------------
# Contract every backend keeps


class RunnerContract:
    def make_runner(self) -> Runner:
        raise NotImplementedError

    def test_one_result_per_request_in_order(self, program):
        be = self.make_runner()
        reqs = be.requests(program)[:4]
        results = be.run(reqs)
        assert len(results) == len(reqs)
        for r in results:
            assert isinstance(r, Result)
            assert (r.runtime_ms is None) == (r.error is not None)
            if r.error is None:
                assert r.repeats >= 1 and r.iqr_ms >= 0
                assert 0 <= r.min_ms <= r.runtime_ms <= r.max_ms

    def test_a_failure_is_a_result_and_the_run_goes_on(self, program):
        be = self.make_runner()
        good = be.requests(program)[0]
        broken = Request(good.site, good.variant, None, good.dtype)  # no graph to run
        results = be.run([broken, good])
        assert len(results) == 2
        assert results[0].runtime_ms is None and "no program" in results[0].error
        assert results[1].error is None and results[1].runtime_ms > 0

    def test_key_names_the_software(self):
        be = self.make_runner()
        key = be.key()
        assert key["torch"] == torch.__version__ and key == be.key()
        assert be.hardware and be.source


class TestHostContract(RunnerContract):
    def make_runner(self):
        return fast_host()

    def test_records_threads(self):
        assert self.make_runner().environment()["threads"] == torch.get_num_threads()


class TestFakeContract(RunnerContract):
    def make_runner(self):
        return FakeRunner()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCudaContract(RunnerContract):
    def make_runner(self):
        return CudaRunner(target_s=0.005, min_repeats=3, max_repeats=50)


def test_backends_resolve_by_name():
    assert isinstance(runner("cpu"), HostRunner)
    assert isinstance(runner("fake"), FakeRunner)
    be = FakeRunner()
    assert runner(be) is be
    with pytest.raises(UserError, match="cpu, cuda, fake"):
        runner("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(UserError, match="--target cpu"):
        runner("cuda")


# ---------------------------------------------------------------------------------------------
# What is measured


def test_every_eager_kernel_is_requested_once(program):
    d = program.diagram
    reqs = fast_host().requests(program)
    hashes = [r.site.subdiagram.hash for r in reqs]
    assert len(hashes) == len(set(hashes))  # one per distinct kernel
    assert set(hashes) == {s.hash for s in eager_partition(d)}
    assert sum(r.count for r in reqs) == len(eager_partition(d))
    assert all(r.variant.config == {"fused": False, "compiler": "eager"} for r in reqs)


def test_inputs_are_the_models_own_or_in_range(program):
    d = program.diagram
    genes = program.spec(program.nodes["genes"])
    assert genes.high == TINY["n_genes"] and int(genes.value.max()) < TINY["n_genes"]
    [attn] = [v for v in d.vertices if v.kind == "attention"]
    mask = program.spec(program.nodes[attn.inputs[3]])
    assert mask.value is not None and mask.value.dtype == torch.bool  # evaluated, not drawn
    assert attn.mask_kind == "scgpt" and mask.value.float().mean().item() == pytest.approx(attn.mask_density)


class _Index(nn.Module):
    def forward(self, x, idx, pos):
        return torch.gather(x, 1, idx) + x[pos].sum()


def test_index_inputs_are_drawn_below_the_dimension_they_index():
    x, idx, pos = torch.zeros(4, 9), torch.zeros(4, 3, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    with torch.device("meta"):
        ep, d = export_module(_Index(), (x.to("meta"), idx.to("meta"), pos.to("meta")), name="index")
    prog = Program(ep, d)
    assert prog.spec(prog.nodes["idx"]).high == 9 and prog.spec(prog.nodes["pos"]).high == 4
    results = fast_host().run(fast_host().requests(prog))
    assert results and all(r.error is None for r in results)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        return F.gelu(self.fc(x))


def test_fused_and_unfused_variants_of_the_same_group(tmp_path):
    with torch.device("meta"):
        ep, d = export_module(_MLP(), (torch.zeros(4, 16, device="meta"),), name="mlp")
    be = HostRunner(target_s=0.002, min_repeats=3, max_repeats=20, warmup_s=0.0)
    counts = measure((ep, d), target=be, root=tmp_path, progress=False, budget_s=300)
    assert counts["failed"] == 0 and counts["measured"] == counts["requests"] == 4
    frame = rows(tmp_path)
    [linear, gelu] = [v.name for v in d.vertices if not v.is_free]
    [fused_kernel] = [k for k in Plan((Fuse((linear, gelu)),)).kernels(d)]
    group = frame[frame.subdiagram_hash == fused_kernel.subdiagram.hash]  # the hash autotune prices
    configs = sorted(group.kernel_config_json.map(json.loads), key=lambda c: c["fused"])
    assert configs == [{"fused": False, "compiler": "eager"}, {"fused": True, "compiler": "inductor"}]
    assert group.runtime_ms.notna().all() and (group.repeats >= 3).all()


class _Causal(nn.Module):
    def forward(self, q, k, v):
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _causal(dtype):
    qkv = tuple(torch.zeros(1, 2, 8, 16, dtype=dtype, device="meta") for _ in range(3))
    return export_module(_Causal(), qkv, name="causal", dtype={torch.float32: "fp32", torch.float16: "fp16"}[dtype])


def test_an_explicit_causal_mask_is_also_measured_as_is_causal():
    prog = Program(*_causal(torch.float32))
    [attn] = [v for v in prog.diagram.vertices if v.kind == "attention"]
    assert attn.mask_kind == "causal"
    be = fast_host()
    reqs = [r for r in be.requests(prog) if r.site.subdiagram.kinds == ("attention",)]
    assert [r.variant.config.get("mask") for r in reqs] == [None, "implicit"]
    assert all(r.error is None for r in be.run(reqs))  # the mismatch check passed
    fp16 = Program(*_causal(torch.float16))
    names = {r.variant.name for r in FakeRunner().requests(fp16)}
    assert "sdpa-flash:attention-implicit-mask" in names and "sdpa-flash:attention" not in names


def test_mismatch_is_reported():
    ref = torch.ones(4, 4)
    check = HostRunner().check
    assert check(ref.clone(), ref, "fp32") is None
    assert "max abs error" in check(ref + 0.5, ref, "fp32")
    assert "NaN" in check(torch.full((4, 4), float("nan")), ref, "fp32")
    assert "shape" in check(torch.ones(2), ref, "fp32")
    assert check(ref + 0.01, ref, "bf16") is None  # the rule book's tolerance per dtype


# ---------------------------------------------------------------------------------------------
# measure(): rows, failures, budgets, re-runs, interrupts


def test_measure_writes_a_row_per_request_with_its_context(tiny, tmp_path):
    be = fast_host()
    counts = measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
    assert counts["measured"] + counts["failed"] == counts["requests"] > 10
    assert counts["remaining"] == counts["skipped"] == 0 and not counts["interrupted"]
    frame = rows(tmp_path)
    assert len(frame) == counts["requests"] and frame.measurement_id.is_unique
    assert (frame.hardware == be.hardware).all() and (frame.threads == torch.get_num_threads()).all()
    assert (frame.framework_version == torch.__version__).all()
    assert (frame.diagram_hash == tiny[1].hash).all()
    extra = json.loads(frame.extra_json.iloc[0])
    assert extra["model"] == "scgpt" and extra["seq"] == 16 and extra["vertices"]
    subs = read_table("subdiagrams", tmp_path)
    assert set(subs.subdiagram_hash) == set(frame.subdiagram_hash)
    assert set(read_table("diagrams", tmp_path).diagram_hash) == {tiny[1].hash}
    assert list(read_table("hardware", tmp_path).hardware) == [be.hardware]


def test_a_failing_kernel_is_a_row_with_its_error(tiny, tmp_path, monkeypatch):
    be = fast_host()
    real = HostRunner._callable

    def failing(self, request, wl):
        if "attention" in request.site.subdiagram.kinds:
            raise RuntimeError("compile error (on purpose)")
        return real(self, request, wl)

    monkeypatch.setattr(HostRunner, "_callable", failing)
    counts = measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
    frame = rows(tmp_path)
    assert counts["failed"] == 1 and len(frame) == counts["requests"]
    bad = frame[frame.error.notna()]
    assert len(bad) == 1 and bad.runtime_ms.isna().all()
    [bad] = bad.itertuples()
    assert bad.error == "RuntimeError: compile error (on purpose)" and bad.kernel_name == "eager:attention"


def test_fake_cuda_runs_the_gpu_path_and_writes_gpu_rows(tiny, tmp_path):
    be = FakeRunner(fail_rate=0.05, seed=3)
    counts = measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
    frame = rows(tmp_path)
    assert len(frame) == counts["requests"] == counts["measured"] + counts["failed"]
    assert counts["failed"] > 0 and frame[frame.error.notna()].runtime_ms.isna().all()
    assert (frame.hardware == "a100-sxm4-80gb").all() and (frame.source == "fake").all()
    assert (frame.driver_version == "fake").all() and (frame.cuda_version == "fake").all()
    ok = frame[frame.error.isna()]
    assert ok.clocks_json.map(json.loads).map(lambda c: c["fake"]).all()
    configs = frame.kernel_config_json.map(json.loads)
    tiles = [KernelConfig.from_record(c) for c in configs if c["compiler"] == "triton"]
    assert tiles and set(tiles) <= set(be.tiles("fp32"))
    backends = {c.get("sdpa_backend") for c in configs}
    assert {"auto", "efficient", "math"} <= backends and "flash" not in backends  # fp32, explicit mask
    assert {"eager", "inductor", "triton"} <= {c["compiler"] for c in configs}
    assert (tmp_path / "measurements" / "fake" / "a100-sxm4-80gb").is_dir()
    # a rerun with the same seed and software skips everything
    again = measure(tiny, target=FakeRunner(fail_rate=0.05, seed=3), root=tmp_path, progress=False)
    assert again["skipped"] == counts["requests"] and again["measured"] == again["failed"] == 0


def test_tiles_launch_on_the_target():
    be = FakeRunner(hardware="t4")
    for dtype in ("fp32", "fp16"):
        tiles = be.tiles(dtype)
        assert tiles and not any(rules.launch_problem(t, be.profile(), dtype) for t in tiles)
        assert set(tiles) == set(rules.legal_tiles(be.profile(), dtype))  # the space's tiles
    assert KernelConfig.from_record({"fused": False, "compiler": "eager"}) is None
    t = be.tiles("fp16")[0]
    assert KernelConfig.from_record(json.dumps({"compiler": "triton", **t.__dict__})) == t


def test_budget_is_respected(tiny, tmp_path):
    class Slow(FakeRunner):
        def _measure(self, request):
            import time

            time.sleep(0.02)
            return super()._measure(request)

    # The budget counts the setup (listing the requests) too, which takes seconds on a slow
    # machine: give it one second past what the setup took here, measured with a zero budget.
    setup = measure(tiny, target=Slow(), root=tmp_path / "setup", progress=False, budget_s=0.0)
    assert setup["measured"] == 0 and setup["remaining"] == setup["requests"]
    budget = setup["seconds"] + 1.0
    counts = measure(tiny, target=Slow(), root=tmp_path, progress=False, budget_s=budget)
    assert counts["remaining"] > 0 and 0 < counts["measured"] < counts["requests"]
    assert counts["seconds"] < budget + 0.2  # at most one request past the budget
    assert len(rows(tmp_path)) == counts["measured"]


def test_rerun_skips_what_exists(tiny, tmp_path):
    first = measure(tiny, target=fast_host(), root=tmp_path, progress=False)
    second = measure(tiny, target=fast_host(), root=tmp_path, progress=False)
    assert second["skipped"] == first["requests"] and second["measured"] == 0
    frame = rows(tmp_path)
    assert len(frame) == first["requests"] and frame.measurement_id.is_unique
    assert len(read_table("subdiagrams", tmp_path, dedupe=False)) == first["requests"]


def test_interrupted_run_keeps_its_rows_and_a_rerun_completes(tiny, tmp_path, monkeypatch):
    be = fast_host()
    real, done = be.run, []

    def interrupting(requests):
        if len(done) == 5:
            raise KeyboardInterrupt
        out = real(requests)
        done.extend(out)
        return out

    monkeypatch.setattr(be, "run", interrupting)
    counts = measure(tiny, target=be, root=tmp_path, progress=False, flush_every=2)
    assert counts["interrupted"] and counts["measured"] + counts["failed"] == 5
    assert len(rows(tmp_path)) == 5  # four flushed on the way, the fifth on the way out
    rerun = measure(tiny, target=fast_host(), root=tmp_path, progress=False)
    assert rerun["skipped"] == 5 and rerun["measured"] + rerun["failed"] == counts["requests"] - 5
    frame = rows(tmp_path)
    assert len(read_table("measurements", tmp_path, dedupe=False)) == len(frame) == counts["requests"]


def test_collect_shares_the_budget_and_reports_impossible_sizes(tmp_path, monkeypatch):
    from costmodel.ir import zoo

    monkeypatch.setattr(zoo, "export_model", lambda model, b, s, dt: export_model("scgpt", b, s, dt, overrides=TINY))
    out = collect(["scgpt"], target=fast_host(), batches=(1,), seqs=(2, 16), budget_s=60,
                    root=tmp_path, progress=False)
    assert len(out["runs"]) == 2 and "query genes" in out["runs"][0]["error"]
    assert out["runs"][1]["measured"] > 0 and out["measured"] == out["runs"][1]["measured"]
    assert not out["interrupted"] and out["seconds"] < 60


# ---------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_measures_eager_triton_and_sdpa_variants(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rules, "legal_tiles", lambda hw, dtype: (KernelConfig(64, 64, 32, 4, 3),
                                                                 KernelConfig(64, 128, 32, 4, 3)))
    be = CudaRunner(target_s=0.002, min_repeats=3, max_repeats=50, warmup_s=0.0,
                       compilers=("eager", "triton"))
    counts = measure(tiny, target=be, root=tmp_path, progress=False, budget_s=600)
    frame = rows(tmp_path)
    errors = frame[frame.error.notna()][["kernel_name", "error"]].values.tolist()
    assert counts["remaining"] == 0 and not errors, errors
    assert frame.driver_version.notna().all() and frame.cuda_version.notna().all()
    assert frame.clocks_json.map(json.loads).map(lambda c: "sm_mhz" in c).all()
    names = set(frame.kernel_name)
    assert {"triton:matmul", "sdpa-auto:attention", "sdpa-math:attention"} <= names
    assert (frame.extra_json.map(json.loads).map(lambda e: e["input_sets"]) >= 1).all()


@needs_cuda
def test_cuda_fused_group_under_inductor(tmp_path):
    with torch.device("meta"):
        ep, d = export_module(_MLP(), (torch.zeros(64, 16, device="meta"),), name="mlp")
    be = CudaRunner(target_s=0.002, min_repeats=3, max_repeats=50, warmup_s=0.0,
                       compilers=("eager", "inductor"))
    measure((ep, d), target=be, root=tmp_path, progress=False, budget_s=600)
    frame = rows(tmp_path)
    errors = frame[frame.error.notna()][["kernel_name", "error"]].values.tolist()
    assert not errors, errors
    assert {"inductor:matmul+gelu", "inductor-max-autotune:matmul+gelu", "eager:matmul+gelu"} <= set(frame.kernel_name)
