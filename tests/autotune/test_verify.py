"""Verifying a plan on the host CPU: a two-layer BERT from a config file, its matmul epilogues
fused. One real run (inductor compiles included) is shared; failures are injected by replacing
the compiler, so they need no compile. The timings are noise here: the plumbing is tested."""
import json

import pytest
import torch

from autotune import executor as E
from autotune import verify as V
from autotune.space import Space
from costmodel.data.shards import read_table
from costmodel.errors import UserError
from costmodel.hardware import load_profile
from costmodel.ir.plan import Fuse, KernelConfig, Plan, Tile
from costmodel.ir.zoo import capture_model

TINY_BERT = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
             "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}
SEQ = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-bert.json"
    path.write_text(json.dumps(TINY_BERT))
    return str(path), Space(capture_model(str(path), 1, SEQ), load_profile("cpu"))


def epilogues(space: Space) -> Plan:
    """Every matmul with its whole epilogue chain fused."""
    return space.plan({c.key: (len(c.sites[0][1]), None) for c in space.classes})


def first_group(space: Space) -> Plan:
    cls = next(c for c in space.classes if c.sites[0][1])
    return Plan((Fuse((cls.sites[0][0], *cls.sites[0][1])),))


@pytest.fixture(scope="module")
def verified(tiny):
    path, space = tiny
    plan = epilogues(space)
    tile = Tile(space.classes[0].sites[0][0], KernelConfig(64, 64, 32))
    return V.verify_plan(path, 1, SEQ, "fp32", Plan((*plan.decisions, tile)), repeats=3,
                         warmup=1, progress=False)


def test_the_plan_matches_eager_and_is_timed(verified, tiny):
    v, space = verified, tiny[1]
    assert v.diagram_hash == space.diagram.hash  # the graph that ran is the one the plan was made on
    assert v.ok and v.max_abs_error <= v.tolerance < 1e-2
    assert v.compiled_max_abs_error <= v.tolerance and v.compiled.error is None
    for result in (v.eager, v.planned, v.compiled):
        assert result.repeats == 3 and 0 < result.min_ms <= result.runtime_ms <= result.max_ms
    assert v.eager_ms == v.eager.runtime_ms and v.plan_ms > 0 and v.compiled_ms > 0
    assert v.threads == torch.get_num_threads() and v.ignored_tiles == 1 and v.device == "cpu"
    assert v.plan_compile_s > 0 and v.compiled_compile_s > 0


def test_each_fusion_group_ran_as_one_kernel(verified):
    fused = [d.vertices for d in verified.plan.decisions if isinstance(d, Fuse)]
    assert len(verified.kernels) == len(fused) > 0
    for k in verified.kernels:
        assert any(set(f) <= set(k.vertices) for f in fused)
        assert k.max_abs_error <= verified.tolerance
    # Groups of the same code share one compile: the first of each kind has the compile time.
    first = {}
    for k in verified.kernels:
        first.setdefault(k.subdiagram_hash, k)
    assert {k.vertices for k in verified.kernels if k.compile_s is not None} == \
        {k.vertices for k in first.values()}


def test_record_writes_model_rows_that_read_back(verified, tmp_path):
    assert V.record(verified, "cpu", root=tmp_path) == {"written": 3, "skipped": 0}
    m = read_table("measurements", tmp_path)
    assert len(m) == 3 and set(m["scope"]) == {"model"} and set(m["source"]) == {"host"}
    assert set(m["diagram_hash"]) == {verified.diagram_hash}
    assert set(m["hardware"]) == {verified.hardware}
    extra = {e["plan"]: e for e in map(json.loads, m["extra_json"])}
    assert set(extra) == {"eager", "plan", "compiled"}
    assert extra["plan"]["plan_hash"] == verified.plan_hash and extra["plan"]["fusion"] is True
    assert "fusion" not in extra["eager"] and extra["eager"]["workload"] == f"tiny-bert-inf-{SEQ}-1"
    by_plan = dict(zip((json.loads(e)["plan"] for e in m["extra_json"]), m["runtime_ms"]))
    assert by_plan["eager"] == verified.eager_ms and by_plan["plan"] == verified.plan_ms
    assert verified.diagram_hash in set(read_table("diagrams", tmp_path)["diagram_hash"])
    assert verified.hardware in set(read_table("hardware", tmp_path)["hardware"])
    from costmodel.models.examples import model_workloads

    assert model_workloads(tmp_path) == []  # no per-node kernel rows: nothing to compose, no error
    assert V.record(verified, "cpu", root=tmp_path) == {"written": 0, "skipped": 3}  # same run: kept once


def test_plan_hash_is_stable_and_ignores_order():
    a = Plan((Fuse(("x", "y")), Fuse(("u", "v"))))
    b = Plan((Fuse(("u", "v")), Fuse(("x", "y"))))
    assert a.digest() == b.digest() != Plan().digest()
    assert len(a.digest()) == 16 and int(a.digest(), 16) >= 0


def test_a_vertex_not_in_the_model_is_a_clear_error(tiny):
    path, space = tiny
    matmul = space.classes[0].sites[0][0]
    with pytest.raises(E.PlanError, match="no vertex 'no_such_vertex'"):
        V.verify_plan(path, 1, SEQ, "fp32", Plan((Fuse((matmul, "no_such_vertex")),)),
                      progress=False)


def test_a_group_that_computes_wrongly_is_named(tiny, monkeypatch):
    path, space = tiny
    plan = first_group(space)
    anchor = plan.decisions[0].vertices[0]
    monkeypatch.setattr(E, "compile_group", lambda module, example: lambda *xs: tuple(
        t + 1 for t in module(*xs)))
    with pytest.raises(E.PlanError, match=rf"fusion group {anchor}\+.*differs from eager"):
        V.verify_plan(path, 1, SEQ, "fp32", plan, progress=False)


def test_a_group_that_does_not_compile_is_named(tiny, monkeypatch):
    path, space = tiny
    plan = first_group(space)

    def broken(module, example):
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(E, "compile_group", broken)
    with pytest.raises(E.PlanError, match=rf"{plan.decisions[0].vertices[0]}.*inductor failed: "
                                          "RuntimeError: no kernel for you"):
        V.verify_plan(path, 1, SEQ, "fp32", plan, progress=False)


def test_a_group_that_leaves_and_comes_back_is_refused():
    class Net(torch.nn.Module):
        def forward(self, x, w):
            y = x @ w
            return y + torch.relu(y)

    gm = torch.export.export(Net(), (torch.randn(4, 4), torch.randn(4, 4))).graph_module
    names = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    matmul, add = names[0], names[-1]
    with pytest.raises(E.PlanError, match="leaves a group and comes back"):
        E.partition(gm, [((matmul, add), "matmul+add")], torch.device("cpu"))


def test_build_model_is_seeded_and_leaves_the_global_rng_alone(tiny):
    path = tiny[0]
    state = torch.random.get_rng_state()
    a, args_a, _ = E.build_model(path, 1, SEQ, "fp32", seed=1)
    b, args_b, _ = E.build_model(path, 1, SEQ, "fp32", seed=1)
    c, _, _ = E.build_model(path, 1, SEQ, "fp32", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training and torch.equal(args_a[0], args_b[0])
    assert args_a[0].shape == (1, SEQ) and int(args_a[0].max()) < TINY_BERT["vocab_size"]
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_bad_repeats_are_refused(tiny):
    with pytest.raises(UserError, match="repeats"):
        V.verify_plan(tiny[0], 1, SEQ, "fp32", Plan(), repeats=0, progress=False)


def test_a_device_that_is_not_here_is_a_clear_error(tiny):
    with pytest.raises(UserError, match="cpu, cuda or fake, not 'mps'"):
        V.verify_plan(tiny[0], 1, SEQ, "fp32", Plan(), runner="mps", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"torch.cuda.is_available\(\) is False"):
            V.verify_plan(tiny[0], 1, SEQ, "fp32", Plan(), runner="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_plan_runs_on_the_gpu(tiny, tmp_path):
    path, space = tiny
    v = V.verify_plan(path, 4, SEQ, "fp32", epilogues(space), repeats=5, warmup=2,
                      runner="cuda", progress=False)
    assert v.device.startswith("cuda") and v.ok and v.compiled.error is None
    assert len(v.kernels) > 0 and all(k.max_abs_error <= v.tolerance for k in v.kernels)
    for result in (v.eager, v.planned, v.compiled):
        assert result.repeats == 5 and 0 < result.min_ms <= result.runtime_ms
    assert V.record(v, "cuda", root=tmp_path) == {"written": 3, "skipped": 0}
    m = read_table("measurements", tmp_path)
    assert set(m["source"]) == {"cuda"} and m["driver_version"].notna().all()
    assert set(m["hardware"]) == {v.hardware} and v.hardware != "cpu"


def test_inputs_that_are_not_tensors_are_folded_into_the_compile(monkeypatch):
    graph = torch.fx.Graph()
    x, _, k = graph.placeholder("x"), graph.placeholder("use_cache"), graph.placeholder("k")
    graph.output((graph.call_function(torch.ops.aten.mul.Scalar, (x, k)),))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    seen = []

    def inductor(module, example):  # some releases refuse a bool input: only tensors may reach it
        seen.append([type(e) for e in example])
        return module

    monkeypatch.setattr(torch._inductor, "compile", inductor)
    fn = E.compile_group(gm, [torch.ones(2), False, 3])
    assert seen == [[torch.Tensor]]
    assert torch.equal(fn(torch.ones(2), False, 3)[0], torch.full((2,), 3.0))
    assert len([n for n in gm.graph.nodes if n.op == "placeholder"]) == 3  # the original is kept
