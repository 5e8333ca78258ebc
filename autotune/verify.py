"""Run a plan for real where its target is (the host CPU, the CUDA GPU here, or the fake GPU):
check it computes what eager PyTorch computes, and time it through the runner's timer.

Three ways, timed interleaved (`Runner.time`):
- eager: the exported ATen graph, one op after another (the diagram's eager partition);
- plan: the same graph with every decision applied (`executor.lower_plan`): tiles, flash blocks
  and add + layer norm by our Triton kernels where Triton runs (a GPU), other fusion groups
  compiled by inductor, the rest eager or compiled around them as the plan's `Runtime` says,
  and replayed as a CUDA graph when it says so;
- compiled: the whole graph compiled by inductor at once (what torch.compile gives for free).

Inductor is called on the fx modules directly (`torch._inductor.compile`, what torch.compile runs
after dynamo's capture): dynamo's guard checks cost over 100 µs a call here, more than a small
fused kernel takes, and would be charged to the plan once per group.

Before timing, one checked run calls every group's implementation and its eager nodes on the
same inputs and compares (naming the first group that differs), and the plan's and the whole
compile's outputs are compared with the model's own eager forward (`Runner.check`: the rule
book's tolerance per dtype). A decision with no kernel here (a tile on the CPU) is counted as
ignored and said (`Verification.applied`).

On a GPU, fp32 runs with TF32 off and tf32 with it on (`Runner.numerics`). The fake runner runs
every graph on meta tensors (shapes are checked, nothing is compiled, our kernels' shape rules
stand in for them) and prices each way by the roofline of the kernels it runs: the whole path,
with no GPU.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

from autotune.executor import (Applied, Group, PlanError, _Compiled, _how, build_model, compile_group,
                               executor, flat_inputs, lower_plan, partition)
from costmodel.data.schema import DATA_DIR
from costmodel.data.shards import ShardWriter, existing_ids
from costmodel.errors import UserError
from costmodel.ir.diagram import Diagram
from costmodel.ir.plan import Kernel, Plan, eager_partition
from costmodel.measure import Result, Runner, runner as resolve_runner
from costmodel.measure.collect import add_context_rows
from costmodel.measure.fake import FACTORS
from costmodel.measure.runner import describe, output_error

RUNNERS = ("cpu", "cuda", "fake")


@dataclass(frozen=True)
class FusedKernel:
    """One fusion group of the plan as it ran. `compile_s` is the first call's wall time
    (compile plus one run) for the group that compiled its code, None for groups that reuse it."""

    vertices: tuple[str, ...]  # the kernel's vertices, free views included, in graph order
    subdiagram_hash: str
    compile_s: float | None
    max_abs_error: float  # against the same nodes run eagerly on the same inputs


@dataclass(frozen=True)
class Verification:
    """What running a plan on this machine gave. Times in milliseconds (median over `repeats`
    interleaved calls after `warmup`). Compile times in seconds: first calls, compile included;
    inductor's on-disk cache makes them shorter when the same code compiled before."""

    model: str
    batch: int
    seq: int
    dtype: str
    plan: Plan
    plan_hash: str
    hardware: str  # the host's or the GPU's hardware name, as `costmodel measure` rows name it
    device: str  # "cpu", "cuda:0", or "meta" (the fake runner)
    threads: int
    repeats: int
    warmup: int
    eager: Result  # the exported graph run op by op
    planned: Result  # the plan: fusion groups compiled, the rest eager
    compiled: Result  # the whole graph compiled by inductor; a Result with `error` if it failed
    plan_compile_s: float  # all distinct fusion groups
    compiled_compile_s: float | None
    max_abs_error: float  # the plan's outputs against the model's eager forward
    compiled_max_abs_error: float | None
    tolerance: float  # the largest max_abs_error accepted for these outputs
    kernels: tuple[FusedKernel, ...]
    ignored_tiles: int  # configs (tiles, flash blocks) not applied: no kernel for them here
    applied: Applied  # how each kernel ran
    loadavg_1m: float | None  # the host's load when timing ended: other processes skew timings
    diagram: Diagram = field(repr=False, compare=False)

    @property
    def diagram_hash(self) -> str:
        return self.diagram.hash

    @property
    def eager_ms(self) -> float:
        return self.eager.runtime_ms

    @property
    def plan_ms(self) -> float:
        return self.planned.runtime_ms

    @property
    def compiled_ms(self) -> float | None:
        return self.compiled.runtime_ms

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


class _Checked(nn.Module):
    """Runs a group's implementation (compiling it on the first call) and the group's own ATen
    nodes on the same inputs; raises PlanError naming the group when it fails or the results
    differ. Returns the implementation's result."""

    def __init__(self, group: Group, impl: Callable, dtype: str, first: set) -> None:
        super().__init__()
        self.group, self.impl, self.dtype, self.first = group, impl, dtype, first
        self.compile_s: float | None = None  # the first call's seconds, on the group that compiled
        self.max_abs_error = 0.0

    def forward(self, *xs: Any) -> Any:
        start = time.perf_counter()
        how = {"inductor": "inductor", "eager": "eager"}.get(
            _how(self.impl), f"our Triton kernel ({type(self.impl).__name__})")
        try:
            out = self.impl(*xs)
            if id(self.impl) not in self.first:  # groups sharing one kernel compile it once
                self.first.add(id(self.impl))
                self.compile_s = time.perf_counter() - start
        except Exception as e:  # inductor and Triton fail in many ways: say which group
            raise PlanError(f"fusion group {self.group.label}: {how} failed: {describe(e)}") from e
        ref = self.group.module(*xs)
        err, allowed, reason = output_error(out, ref, self.dtype)
        self.max_abs_error = err
        if reason or err > allowed:
            raise PlanError(f"fusion group {self.group.label} ({how}) differs from eager: "
                            f"{reason or f'max abs error {err:.3g}'}, allowed {allowed:.3g} ({self.dtype})")
        return out


def _runner(spec: str | Runner) -> Runner:
    if isinstance(spec, Runner):
        return spec
    if spec not in RUNNERS:
        raise UserError(f"verify runs on {', '.join(RUNNERS[:-1])} or {RUNNERS[-1]}, not {spec!r}")
    return resolve_runner(spec)  # cuda says plainly when there is no GPU


def verify_plan(model: str, batch: int, seq: int, dtype: str, plan: Plan, *, repeats: int = 20,
                warmup: int = 3, seed: int = 0, threads: int | None = None,
                runner: str | Runner = "cpu", attention: str = "sdpa", triton: bool | None = None,
                cuda_graph: bool | None = None, progress: bool = True) -> Verification:
    """Run `plan` for `model` (a zoo name or a Hugging Face config.json path) at (batch, seq,
    dtype) on `runner` ("cpu", "cuda" for this machine's GPU 0, "fake", or a Runner): check its
    outputs against eager PyTorch, then time eager, the plan and the whole graph compiled by
    inductor, interleaved, `repeats` times each after `warmup` calls. `threads` sets torch's
    CPU threads for the run (None: as they are).

    Raises PlanError (a UserError) naming the fusion group when the plan does not fit the
    model's graph, a group fails to compile, or its result differs from eager beyond the
    tolerance; UserError when the runner is not here.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be at least 1 and warmup at least 0; got {repeats}, {warmup}")
    be = _runner(runner)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad(), be.numerics(dtype):
            return _verify(model, batch, seq, dtype, plan, repeats=repeats, warmup=warmup,
                           seed=seed, be=be, attention=attention, triton=triton,
                           cuda_graph=cuda_graph, progress=progress)
    finally:
        torch.set_num_threads(before)


def _verify(model: str, batch: int, seq: int, dtype: str, plan: Plan, *, repeats: int,
            warmup: int, seed: int, be: Runner, attention: str, triton: bool | None,
            cuda_graph: bool | None, progress: bool) -> Verification:
    from costmodel.ir.zoo import export_model

    say = _say if progress else lambda *_: None
    fake = be.device.type == "meta"
    say(f"verify: capturing {model} batch {batch} seq {seq} {dtype}")
    exported, diagram = export_model(model, batch, seq, dtype, attention=attention)
    try:
        kernels = plan.kernels(diagram)
    except ValueError as e:
        raise PlanError(f"the plan does not fit {diagram.name}: {e}") from None
    device = be.device
    say(f"verify: building {diagram.name} on {device} with random weights (seed {seed})")
    module, args, kwargs = build_model(model, batch, seq, dtype, seed=seed, device=device,
                                       attention=attention)
    inputs = flat_inputs(exported, module, args, kwargs)
    gm = exported.graph_module
    user_outputs = [k for k, s in enumerate(exported.graph_signature.output_specs)
                    if s.kind.name == "USER_OUTPUT"]

    def outputs(flat: Any) -> list:
        return [flat[k] for k in user_outputs]

    graph, _ = partition(gm, [], device)
    eager = torch.fx.GraphModule({}, graph)
    # The model's own forward is the reference; on meta tensors (the fake runner) the graph's
    # shapes are all there is to check, and some forwards read values (a mask's .item()).
    reference = outputs(eager(*inputs)) if fake else \
        [t for t in pytree.tree_leaves(module(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    err, allowed, reason = output_error(outputs(eager(*inputs)), reference, dtype)
    if reason or err > allowed:  # the captured graph must compute the model, or nothing below means anything
        raise PlanError(f"the exported graph of {diagram.name} differs from the model's forward "
                        f"({reason or f'max abs error {err:.3g}'}); cannot verify plans on it")

    compile = (lambda module, example: module) if fake else compile_group
    use_triton = (device.type in ("cuda", "meta")) if triton is None else triton
    exe = lower_plan(gm, diagram, plan, device=device, triton=use_triton, tf32=dtype == "tf32")
    if fake:  # nothing compiles on meta tensors: inductor groups run their own ATen nodes
        exe = dataclasses.replace(exe, implementations={
            k: (g.module if isinstance(v, _Compiled) else v)
            for (k, v), g in zip(exe.implementations.items(), exe.groups)})
    first: set[int] = set()
    checks = {name: _Checked(g, impl, dtype, first)
              for (name, impl), g in zip(exe.implementations.items(), exe.groups)}
    say(f"verify: the plan's {len(exe.groups)} kernels ({exe.applied.triton} ours, "
        f"{exe.applied.inductor} by inductor), checking each against eager")
    for reason in exe.applied.fallbacks:
        say(f"verify: {reason}")
    plan_err, plan_allowed, reason = output_error(outputs(exe.module(checks)(*inputs)), reference, dtype)
    if reason or plan_err > plan_allowed:
        raise PlanError(f"the plan's outputs differ from eager: "
                        f"{reason or f'max abs error {plan_err:.3g}'}, allowed {plan_allowed:.3g} "
                        f"({dtype}), though each kernel matched alone")
    plan_compile_s = sum(c.compile_s or 0.0 for c in checks.values())
    # On meta tensors nothing compiles and no graph is captured: the shapes are what is checked.
    planned = executor(exe, inputs, cuda_graph=False if fake else cuda_graph,
                       compile_rest=(lambda module, example: module) if fake else None)
    built = exe.groups

    say("verify: compiling the whole model with inductor")
    start = time.perf_counter()
    try:
        whole = compile(eager, inputs)
        whole_err, _, _ = output_error(outputs(whole(*inputs)), reference, dtype)
        whole_s: float | None = time.perf_counter() - start
        whole_error = None
        if whole_err > plan_allowed:
            say(f"verify: warning: the whole-model compile differs from eager by {whole_err:.3g}")
    except Exception as e:  # noqa: BLE001 - a failed baseline is reported, not fatal
        whole_err, whole_s, whole_error = None, None, describe(e)
        say(f"verify: the whole-model compile failed: {whole_error}")

    fns = {"eager": eager, "plan": planned}
    if whole_error is None:
        fns["compiled"] = whole
    where = f"on {torch.get_num_threads()} threads" if device.type == "cpu" else f"on {be.hardware}"
    say(f"verify: timing {', '.join(fns)}: {warmup} warm-up and {repeats} timed calls each {where}")
    eager_kernels = [Kernel(s) for s in eager_partition(diagram)]
    work = {"eager": (eager_kernels, FACTORS["eager"]), "plan": (list(kernels), FACTORS["eager"]),
            "compiled": (eager_kernels, FACTORS["inductor"])}
    samples = be.time(fns, [inputs], repeats=repeats, warmup=warmup, work=work)
    compiled = Result.of(samples["compiled"]) if whole_error is None else Result.failure(whole_error)
    hashes = {tuple(v.name for v in k.subdiagram.vertices): k.subdiagram.hash for k in kernels}
    fused = tuple(FusedKernel(g.vertices, hashes.get(g.vertices, ""), checks[f"group_{i}"].compile_s,
                              checks[f"group_{i}"].max_abs_error)
                  for i, g in enumerate(built))
    return Verification(
        model=diagram.name, batch=batch, seq=seq, dtype=dtype, plan=plan, plan_hash=plan.digest(),
        hardware=be.hardware, device=str(device), threads=torch.get_num_threads(),
        repeats=repeats, warmup=warmup, eager=Result.of(samples["eager"]),
        planned=Result.of(samples["plan"]), compiled=compiled,
        plan_compile_s=round(plan_compile_s, 3),
        compiled_compile_s=None if whole_s is None else round(whole_s, 3),
        max_abs_error=plan_err, compiled_max_abs_error=whole_err, tolerance=plan_allowed,
        kernels=fused, ignored_tiles=exe.applied.tiles_ignored, applied=exe.applied,
        loadavg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, diagram=diagram)


def _label(vertices: Sequence) -> str:
    """A group as people read it: its compute vertices and the module it sits in."""
    names = "+".join(v.name for v in vertices if not v.is_free)
    module = next((v.module for v in vertices if v.module), "")
    return f"{names} ({module})" if module else names


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Into the dataset


def record(verification: Verification, runner: str | Runner, *, root: str | Path = DATA_DIR
           ) -> dict[str, int]:
    """Append the whole-model timings (eager, plan, whole-model compile) to the dataset at
    `root` as "model"-scope rows of the runner's source ("host", "cuda", "fake"), with the
    diagram and hardware rows they refer to, built by the runner's row builder as
    `costmodel measure` builds its rows. Rows already there (same model, plan, machine and
    software) are skipped. Returns {"written", "skipped"}.

    Like NeuSight's whole-model rows: `diagram_hash` names the graph, `extra_json` holds the
    workload, and runs whose kernels are not the graph's eager ops carry "fusion": true (the
    plan, the whole compile), so `costmodel.models.evaluate.model_workloads` leaves them out of
    eager composition."""
    v = verification
    be = _runner(runner)
    if v.hardware != be.hardware:
        raise ValueError(f"this verification ran on {v.hardware}, not on this machine ({be.hardware})")
    key = {**be.key(), "threads": v.threads}
    base = {"model": v.model, "batch": v.batch, "seq": v.seq, "dtype": v.dtype,
            "workload": f"{v.model}-inf-{v.seq}-{v.batch}", "warmup": v.warmup,
            "loadavg_1m": v.loadavg_1m, "cache": "warm (one input set)", "device": v.device}
    runs = [
        ("eager", v.eager, {"plan": "eager", "compiler": "eager"}, {"plan": "eager"}),
        ("plan", v.planned, {"plan": v.plan_hash, "compiler": "inductor", "fused": True},
         {"plan": "plan", "plan_hash": v.plan_hash, "fusion": True, "decisions": v.plan.to_list(),
          "fused_kernels": len(v.kernels), "ignored_tiles": v.ignored_tiles,
          "compile_s": v.plan_compile_s, "max_abs_error": v.max_abs_error}),
        ("compiled", v.compiled, {"plan": "whole-graph", "compiler": "inductor", "fused": True},
         {"plan": "compiled", "fusion": True, "compile_s": v.compiled_compile_s,
          "max_abs_error": v.compiled_max_abs_error}),
    ]
    done = existing_ids(root, be.source)
    counts = {"written": 0, "skipped": 0}
    rows = []
    for name, result, config, extra in runs:
        row = be.row(result, scope="model", kernel_config=config, kernel_name=f"{name}:model",
                     diagram_hash=v.diagram_hash, key=key, extra={**base, **extra})
        counts["skipped" if row["measurement_id"] in done else "written"] += 1
        if row["measurement_id"] not in done:
            rows.append(row)
    if rows:
        with ShardWriter(root, source=be.source) as writer:
            add_context_rows(writer, be, v.diagram, root)
            for row in rows:
                writer.add("measurements", row)
    return counts
