"""Measurement: requests, backends (host CPU, fake GPU; CUDA where present), rows, budgets,
re-runs and interrupts. Small models and short timings: the numbers are noise, the plumbing is
what is tested."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from costmodel import measure as M
from costmodel.capture import export_module
from costmodel.dataset import read_table
from costmodel.errors import UserError
from costmodel.plan import EPILOGUE_KINDS, Fuse, Plan, check_fusable, eager_partition
from costmodel.zoo import ScGPTConfig, export_scgpt

TINY = ScGPTConfig(n_genes=64, d_model=32, n_heads=2, n_layers=1, d_ff=32)


@pytest.fixture(scope="module")
def tiny():
    """A one-layer scGPT at seq 16: embedding, matmuls, an explicit scGPT mask, layer norms."""
    return export_scgpt(1, 16, "fp32", config=TINY)


@pytest.fixture(scope="module")
def program(tiny):
    return M.Program(*tiny)


def fast_host(**kw) -> M.HostBackend:
    """Timings of a few calls, eager only (no compiles): fast, for the plumbing."""
    opts = {"target_s": 0.002, "min_repeats": 3, "max_repeats": 20, "warmup_s": 0.0,
            "compilers": ("eager",), "fusion": False}
    return M.HostBackend(**{**opts, **kw})


def rows(root):
    return read_table("measurements", root)


# ---------------------------------------------------------------------------------------------
# Contract every backend keeps


class BackendContract:
    def make_backend(self) -> M.Backend:
        raise NotImplementedError

    def test_one_result_per_request_in_order(self, program):
        be = self.make_backend()
        reqs = M.requests(program, be)[:4]
        results = be.run(reqs)
        assert len(results) == len(reqs)
        for r in results:
            assert isinstance(r, M.Result)
            assert (r.runtime_ms is None) == (r.error is not None)
            if r.error is None:
                assert r.repeats >= 1 and r.iqr_ms >= 0
                assert 0 <= r.min_ms <= r.runtime_ms <= r.max_ms

    def test_a_failure_is_a_result_and_the_run_goes_on(self, program):
        be = self.make_backend()
        good = M.requests(program, be)[0]
        broken = M.Request(good.site, good.variant, None, good.dtype)  # no graph to run
        results = be.run([broken, good])
        assert len(results) == 2
        assert results[0].runtime_ms is None and "no program" in results[0].error
        assert results[1].error is None and results[1].runtime_ms > 0

    def test_key_names_the_software(self):
        be = self.make_backend()
        key = be.key()
        assert key["torch"] == torch.__version__ and key == be.key()
        assert be.hardware and be.source


class TestHostContract(BackendContract):
    def make_backend(self):
        return fast_host()

    def test_records_threads(self):
        assert self.make_backend().environment()["threads"] == torch.get_num_threads()


class TestFakeContract(BackendContract):
    def make_backend(self):
        return M.FakeBackend()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCudaContract(BackendContract):
    def make_backend(self):
        return M.CudaBackend(target_s=0.005, min_repeats=3, max_repeats=50)


def test_backends_resolve_by_name():
    assert isinstance(M.backend("cpu"), M.HostBackend)
    assert isinstance(M.backend("fake"), M.FakeBackend)
    be = M.FakeBackend()
    assert M.backend(be) is be
    with pytest.raises(UserError, match="cpu, cuda, fake"):
        M.backend("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(UserError, match="--target cpu"):
        M.backend("cuda")


# ---------------------------------------------------------------------------------------------
# What is measured


def test_every_eager_kernel_is_requested_once(program):
    d = program.diagram
    reqs = M.requests(program, fast_host())
    hashes = [r.site.subdiagram.hash for r in reqs]
    assert len(hashes) == len(set(hashes))  # one per distinct kernel
    assert set(hashes) == {s.hash for s in eager_partition(d)}
    assert sum(r.count for r in reqs) == len(eager_partition(d))
    assert all(r.variant.config == {"fused": False, "compiler": "eager"} for r in reqs)


def test_inputs_are_the_models_own_or_in_range(program):
    d = program.diagram
    genes = program.spec(program.nodes["genes"])
    assert genes.high == TINY.n_genes and int(genes.value.max()) < TINY.n_genes
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
    prog = M.Program(ep, d)
    assert prog.spec(prog.nodes["idx"]).high == 9 and prog.spec(prog.nodes["pos"]).high == 4
    results = fast_host().run(M.requests(prog, fast_host()))
    assert results and all(r.error is None for r in results)


def test_fusion_groups_are_legal_and_typed(tiny):
    d = tiny[1]
    groups = M.fusion_groups(d)
    assert groups
    for names, kind in groups.items():
        check_fusable(d, names)
        kinds = [d.vertex[n].kind for n in names]
        if kind.startswith("epilogue"):
            assert kinds[0] == "matmul" and set(kinds[1:]) <= set(EPILOGUE_KINDS)
        elif kind == "residual-norm":
            assert kinds == ["add", "layer_norm"]
    assert "residual-norm" in groups.values() and "epilogue" in groups.values()


class _Chain(nn.Module):
    def forward(self, x):
        return torch.tanh(x * 2.0) + 1.0


def test_elementwise_chains_are_groups():
    with torch.device("meta"):
        _, d = export_module(_Chain(), (torch.zeros(8, 8, device="meta"),), name="chain")
    assert list(M.fusion_groups(d).values()) == ["elementwise"]
    [names] = M.fusion_groups(d)
    assert [d.vertex[n].kind for n in names] == ["mul", "activation", "add"]


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        return F.gelu(self.fc(x))


def test_fused_and_unfused_variants_of_the_same_group(tmp_path):
    with torch.device("meta"):
        ep, d = export_module(_MLP(), (torch.zeros(4, 16, device="meta"),), name="mlp")
    be = M.HostBackend(target_s=0.002, min_repeats=3, max_repeats=20, warmup_s=0.0)
    counts = M.measure((ep, d), target=be, root=tmp_path, progress=False, budget_s=300)
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
    prog = M.Program(*_causal(torch.float32))
    [attn] = [v for v in prog.diagram.vertices if v.kind == "attention"]
    assert attn.mask_kind == "causal"
    be = fast_host()
    reqs = [r for r in M.requests(prog, be) if r.site.subdiagram.kinds == ("attention",)]
    assert [r.variant.config.get("mask") for r in reqs] == [None, "implicit"]
    assert all(r.error is None for r in be.run(reqs))  # the mismatch check passed
    fp16 = M.Program(*_causal(torch.float16))
    names = {r.variant.name for r in M.requests(fp16, M.FakeBackend())}
    assert "sdpa-flash:attention-implicit-mask" in names and "sdpa-flash:attention" not in names


def test_mismatch_is_reported():
    ref = torch.ones(4, 4)
    assert M._mismatch(ref.clone(), ref, "fp32") is None
    assert "max abs error" in M._mismatch(ref + 0.5, ref, "fp32")
    assert "NaN" in M._mismatch(torch.full((4, 4), float("nan")), ref, "fp32")
    assert "shape" in M._mismatch(torch.ones(2), ref, "fp32")


# ---------------------------------------------------------------------------------------------
# measure(): rows, failures, budgets, re-runs, interrupts


def test_measure_writes_a_row_per_request_with_its_context(tiny, tmp_path):
    be = fast_host()
    counts = M.measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
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
    real = M.HostBackend._callable

    def failing(self, request, wl):
        if "attention" in request.site.subdiagram.kinds:
            raise RuntimeError("compile error (on purpose)")
        return real(self, request, wl)

    monkeypatch.setattr(M.HostBackend, "_callable", failing)
    counts = M.measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
    frame = rows(tmp_path)
    assert counts["failed"] == 1 and len(frame) == counts["requests"]
    bad = frame[frame.error.notna()]
    assert len(bad) == 1 and bad.runtime_ms.isna().all()
    [bad] = bad.itertuples()
    assert bad.error == "RuntimeError: compile error (on purpose)" and bad.kernel_name == "eager:attention"


def test_fake_cuda_runs_the_gpu_path_and_writes_gpu_rows(tiny, tmp_path):
    be = M.FakeBackend(fail_rate=0.05, seed=3)
    counts = M.measure(tiny, target=be, root=tmp_path, progress=False, budget_s=300)
    frame = rows(tmp_path)
    assert len(frame) == counts["requests"] == counts["measured"] + counts["failed"]
    assert counts["failed"] > 0 and frame[frame.error.notna()].runtime_ms.isna().all()
    assert (frame.hardware == "a100-sxm4-80gb").all() and (frame.source == "fake").all()
    assert (frame.driver_version == "fake").all() and (frame.cuda_version == "fake").all()
    ok = frame[frame.error.isna()]
    assert ok.clocks_json.map(json.loads).map(lambda c: c["fake"]).all()
    configs = frame.kernel_config_json.map(json.loads)
    tiles = [M.tile_config(c) for c in configs if c["compiler"] == "triton"]
    assert tiles and set(tiles) <= set(be.tiles("fp32"))
    backends = {c.get("sdpa_backend") for c in configs}
    assert {"auto", "efficient", "math"} <= backends and "flash" not in backends  # fp32, explicit mask
    assert {"eager", "inductor", "triton"} <= {c["compiler"] for c in configs}
    assert (tmp_path / "measurements" / "fake" / "a100-sxm4-80gb").is_dir()
    # a rerun with the same seed and software skips everything
    again = M.measure(tiny, target=M.FakeBackend(fail_rate=0.05, seed=3), root=tmp_path, progress=False)
    assert again["skipped"] == counts["requests"] and again["measured"] == again["failed"] == 0


def test_tiles_launch_on_the_target():
    be = M.FakeBackend(hardware="t4")
    for dtype, element in (("fp32", 4), ("fp16", 2)):
        tiles = be.tiles(dtype)
        assert tiles and all(t.smem_bytes(element) <= be._smem for t in tiles)
    assert M.tile_config({"fused": False, "compiler": "eager"}) is None
    t = be.tiles("fp16")[0]
    assert M.tile_config(json.dumps({"compiler": "triton", **t.__dict__})) == t


def test_budget_is_respected(tiny, tmp_path):
    class Slow(M.FakeBackend):
        def _measure(self, request):
            import time

            time.sleep(0.02)
            return super()._measure(request)

    counts = M.measure(tiny, target=Slow(), root=tmp_path, progress=False, budget_s=0.3)
    assert counts["remaining"] > 0 and 0 < counts["measured"] < counts["requests"]
    assert counts["seconds"] < 0.3 + 0.2  # at most one request past the budget
    assert len(rows(tmp_path)) == counts["measured"]


def test_rerun_skips_what_exists(tiny, tmp_path):
    first = M.measure(tiny, target=fast_host(), root=tmp_path, progress=False)
    second = M.measure(tiny, target=fast_host(), root=tmp_path, progress=False)
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
    counts = M.measure(tiny, target=be, root=tmp_path, progress=False, flush_every=2)
    assert counts["interrupted"] and counts["measured"] + counts["failed"] == 5
    assert len(rows(tmp_path)) == 5  # four flushed on the way, the fifth on the way out
    rerun = M.measure(tiny, target=fast_host(), root=tmp_path, progress=False)
    assert rerun["skipped"] == 5 and rerun["measured"] + rerun["failed"] == counts["requests"] - 5
    frame = rows(tmp_path)
    assert len(read_table("measurements", tmp_path, dedupe=False)) == len(frame) == counts["requests"]


def test_collect_shares_the_budget_and_reports_impossible_sizes(tmp_path, monkeypatch):
    from costmodel import zoo

    monkeypatch.setattr(zoo, "export_model", lambda model, b, s, dt: export_scgpt(b, s, dt, config=TINY))
    out = M.collect(["scgpt"], target=fast_host(), batches=(1,), seqs=(2, 16), budget_s=60,
                    root=tmp_path, progress=False)
    assert len(out["runs"]) == 2 and "query genes" in out["runs"][0]["error"]
    assert out["runs"][1]["measured"] > 0 and out["measured"] == out["runs"][1]["measured"]
    assert not out["interrupted"] and out["seconds"] < 60


# ---------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_measures_eager_triton_and_sdpa_variants(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(M, "TILE_GRID", {"block_m": (64,), "block_n": (64, 128), "block_k": (32,),
                                         "num_warps": (4,), "num_stages": (3,)})
    be = M.CudaBackend(target_s=0.002, min_repeats=3, max_repeats=50, warmup_s=0.0,
                       compilers=("eager", "triton"))
    counts = M.measure(tiny, target=be, root=tmp_path, progress=False, budget_s=600)
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
    be = M.CudaBackend(target_s=0.002, min_repeats=3, max_repeats=50, warmup_s=0.0,
                       compilers=("eager", "inductor"))
    M.measure((ep, d), target=be, root=tmp_path, progress=False, budget_s=600)
    frame = rows(tmp_path)
    errors = frame[frame.error.notna()][["kernel_name", "error"]].values.tolist()
    assert not errors, errors
    assert {"inductor:matmul+gelu", "inductor-max-autotune:matmul+gelu", "eager:matmul+gelu"} <= set(frame.kernel_name)
