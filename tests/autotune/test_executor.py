"""The executor on the CPU: tiny BERT, GPT-2 and scGPT with every decision a GPU space offers
applied through our Triton kernels (run by Triton's interpreter here), their outputs checked
against the model's own forward; the rest of the graph compiled by inductor around the kernels
(custom operators); what cannot run here said and counted."""
import json
import os

import pytest
import torch
import torch.utils._pytree as pytree

from autotune.executor import Executable, PlanError, build_model, executor, flat_inputs, lower_plan
from autotune.lowering import AddLayerNormKernel, AttentionKernel, MatmulKernel
from autotune.space import Space
from costmodel.hardware import load_profile
from costmodel.ir.plan import Plan, Tile
from costmodel.ir.zoo import export_model, tiny_config
from costmodel.measure.runner import output_error

pytest.importorskip("triton", reason="the executor's kernels are Triton's")
if not os.environ.get("TRITON_INTERPRET"):  # tests/conftest.py sets it where there is no GPU
    pytest.skip("these run our kernels on CPU tensors through Triton's interpreter; on a GPU, "
                "benchmarks/plans_gpu.py runs them for real", allow_module_level=True)

CONFIGS = {"bert": tiny_config("bert-base", 2), "gpt2": tiny_config("gpt2", 2),
           "scgpt": tiny_config("scgpt", 2, query_fraction=0.5)}
BATCH, SEQ = 2, 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, config in CONFIGS.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config))
        exported, diagram = export_model(str(path), BATCH, SEQ, "fp32")
        out[name] = str(path), exported, diagram
    return out


def everything(space: Space, first: str) -> Plan:
    """Every decision taken: the smallest tile, flash attention skipping masked blocks where it
    can, and fusions as long as legal, the `first` kind of fusion before the others."""
    assignment = {}
    fusions = sorted((p for p in space.params if p.kind in ("epilogue", "fuse")),
                     key=lambda p: p.kind != first)
    for p in fusions:
        for choice in reversed(p.choices):
            try:
                space.plan_from({**assignment, p.name: choice})
            except ValueError:
                continue
            assignment[p.name] = choice
            break
    for p in space.params:
        if p.kind == "tile":
            assignment[p.name] = min(p.choices[1:], key=lambda c: (c.block_m * c.block_n * c.block_k, c.split_k))
        elif p.kind == "attention":
            assignment[p.name] = next((c for c in p.choices[1:] if c.skip_masked), p.choices[1])
    return space.plan_from(assignment)


def _run(path, exported, fn_of):
    module, args, kwargs = build_model(path, BATCH, SEQ, "fp32", seed=0, device="cpu")
    inputs = flat_inputs(exported, module, args, kwargs)
    users = [k for k, s in enumerate(exported.graph_signature.output_specs) if s.kind.name == "USER_OUTPUT"]
    with torch.no_grad():
        reference = [t for t in pytree.tree_leaves(module(*args, **kwargs)) if isinstance(t, torch.Tensor)]
        flat = fn_of(inputs)(*inputs)
    return output_error([flat[k] for k in users], reference, "fp32")


@pytest.mark.parametrize("first", ["epilogue", "fuse"], ids=["epilogues-first", "norms-first"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_decision_applied_matches_the_model(models, name, first):
    path, exported, diagram = models[name]
    plan = everything(Space(diagram, load_profile("a100")), first)
    exe = lower_plan(exported.graph_module, diagram, plan, device=torch.device("cpu"), triton=True)
    tiles = sum(isinstance(d, Tile) for d in plan.decisions)
    assert exe.applied.tiles_applied == tiles > 0 and exe.applied.tiles_ignored == 0
    assert not exe.applied.fallbacks
    kinds = {type(i) for i in exe.implementations.values()}
    assert MatmulKernel in kinds and (AttentionKernel in kinds) == any(
        isinstance(d, Tile) and diagram.vertex[d.vertex].kind == "attention" for d in plan.decisions)
    if first == "fuse" and name != "scgpt":  # scGPT's norms follow a matmul's add: epilogues win
        assert AddLayerNormKernel in kinds
    err, allowed, reason = _run(path, exported, lambda inputs: exe.module())
    assert not reason and err <= allowed


def test_the_plans_tiles_reach_the_kernel(models, monkeypatch):
    """Each matmul runs with its Tile decision's config: the kernel sees every one."""
    from costmodel.kernels import matmul as kernels

    path, exported, diagram = models["gpt2"]
    plan = everything(Space(diagram, load_profile("a100")), "epilogue")
    seen = []
    real = kernels.matmul
    monkeypatch.setattr(kernels, "matmul", lambda *a, config, **k: seen.append(config) or real(*a, config=config, **k))
    exe = lower_plan(exported.graph_module, diagram, plan, device=torch.device("cpu"), triton=True)
    _run(path, exported, lambda inputs: exe.module())
    wanted = [d.config for d in plan.decisions if isinstance(d, Tile) and diagram.vertex[d.vertex].kind == "matmul"]
    assert sorted(map(repr, seen)) == sorted(map(repr, wanted))


def test_inductor_compiles_the_rest_around_the_kernels(models):
    path, exported, diagram = models["scgpt"]
    plan = everything(Space(diagram, load_profile("a100")), "epilogue")
    exe = lower_plan(exported.graph_module, diagram, plan, device=torch.device("cpu"), triton=True,
                     rest="inductor")
    assert isinstance(exe, Executable) and exe.rest == "inductor"
    err, allowed, reason = _run(path, exported, lambda inputs: executor(exe, inputs))
    assert not reason and err <= allowed


def test_without_triton_tiles_are_counted_not_applied(models):
    path, exported, diagram = models["bert"]
    plan = everything(Space(diagram, load_profile("a100")), "epilogue")
    exe = lower_plan(exported.graph_module, diagram, plan, device=torch.device("cpu"), triton=False)
    tiles = sum(isinstance(d, Tile) for d in plan.decisions)
    assert exe.applied.triton == 0 and exe.applied.tiles_ignored == tiles
    assert len(exe.applied.fallbacks) == tiles and "no Triton here" in exe.applied.fallbacks[0]
    err, allowed, reason = _run(path, exported, lambda inputs: exe.module())
    assert not reason and err <= allowed


def test_bad_requests_say_so(models):
    path, exported, diagram = models["bert"]
    with pytest.raises(PlanError, match="eager or inductor"):
        lower_plan(exported.graph_module, diagram, Plan(()), device=torch.device("cpu"), triton=True,
                   rest="tvm")
    exe = lower_plan(exported.graph_module, diagram, Plan(()), device=torch.device("cpu"), triton=True)
    with pytest.raises(PlanError, match="CUDA graph needs the model on a CUDA GPU"):
        executor(exe, [torch.zeros(1)], cuda_graph=True)
