"""A few GEMMs timed alone on this machine, for a calibration of its target
(`costmodel calibrate`; `costmodel.models.calibration` says what is done with them)."""
from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from costmodel.data.schema import now
from costmodel.hardware import HardwareProfile
from costmodel.ir.diagram import Subdiagram
from costmodel.measure.runner import Runner
from costmodel.measure.slicing import Program
from costmodel.models.calibration import Calibration, kernel_op


def _program(sub: Subdiagram, seed: int):
    """The kernel as a one-op exported program: its first input drawn, the rest the module's
    parameters (a weight is not computed ahead as a graph value)."""
    import torch

    from costmodel.ir.capture import TORCH_DTYPES, export_module

    op = kernel_op(sub)
    dtype = TORCH_DTYPES[sub.vertices[0].dtype]
    shapes = sub.vertices[0].input_shapes

    class Gemm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.operands = torch.nn.ParameterList(
                torch.nn.Parameter(torch.empty(s, dtype=dtype, device="meta"), requires_grad=False)
                for s in shapes[1:])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return op(x, *self.operands)

    x = torch.empty(shapes[0], dtype=dtype, device="meta")
    exported, diagram = export_module(Gemm(), (x,), name=f"gemm-{sub.hash[:10]}", dtype=sub.vertices[0].dtype)
    return Program(exported, diagram, seed=seed)


def time_shots(be: Runner, subs: Sequence[Subdiagram], *, progress: bool = True) -> list[dict]:
    """Each kernel timed alone by the runner `be` (its eager variant, as `costmodel measure`
    times a model's kernels): one shot record per kernel, an error recorded, never raised."""
    from tqdm import tqdm

    eager = {"fused": False, "compiler": "eager"}
    out = []
    for sub in tqdm(subs, desc=f"GEMMs on {be.hardware}", unit="GEMM", file=sys.stderr, disable=not progress):
        program = _program(sub, be.seed)
        req = next(r for r in be.requests(program) if not r.site.fused and r.variant.config == eager)
        result = be.run([req])[0]
        out.append({"hash": sub.hash, "subdiagram": sub.to_record(), "measured_ms": result.runtime_ms,
                    "iqr_ms": result.iqr_ms, "repeats": result.repeats, "error": result.error})
    return out


def timed(be: Runner, target: HardwareProfile, subs: Sequence[Subdiagram], *, seed: int, release: str | Path,
          progress: bool = True) -> Calibration:
    """An unfitted calibration of `target`: `subs` timed by `be`, and what timed them."""
    import torch

    env = be.environment()
    made = {"runner": be.name, "device": be.hardware, "date": now(), "seed": seed,
            "release": Path(release).name, "torch": env.get("framework_version", torch.__version__),
            "driver": env.get("driver_version"), "cuda": env.get("cuda_version"),
            "host": platform.machine(), "statistic": "median of the runner's timed calls"}
    if be.name == "fake":
        made["note"] = "fake timings (FakeRunner: the roofline with noise): the plumbing, not a calibration"
    return Calibration(target.name, tuple(time_shots(be, subs, progress=progress)), made)
