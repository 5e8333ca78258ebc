"""Measuring models into the dataset: `measure` times one model's kernels within a budget,
most useful first (`variants.requests`); `collect` loops it over the zoo.

A measurement's id hashes the source, hardware, subdiagram hash, kernel config and a `key`
naming the software (torch version, threads; on CUDA also GPU name, driver, CUDA and Triton
versions), not the model: the same kernel in another model is the same measurement, and a
re-run skips what exists. `diagram_hash` on the row names the model it was measured in.

`measure` writes through a `ShardWriter` flushed every few results, so an interrupt (Ctrl-C)
loses at most the kernel being timed.
"""
from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from costmodel.data.schema import DATA_DIR, diagram_rows, subdiagram_row
from costmodel.data.shards import ShardWriter, existing_ids, read_table
from costmodel.errors import UserError, unknown_choice
from costmodel.ir.diagram import Diagram
from costmodel.measure.runner import Result, Runner
from costmodel.measure.slicing import Program
from costmodel.measure.variants import Request

RUNNERS = ("cpu", "cuda", "fake")


def runner(spec: str | Runner = "cpu") -> Runner:
    """A runner from its name ("cpu": this host, "cuda": GPU 0, "fake": a GPU that is not
    there) or an instance (returned as it is)."""
    if isinstance(spec, Runner):
        return spec
    if spec == "cpu":
        from costmodel.measure.host import HostRunner

        return HostRunner()
    if spec == "cuda":
        from costmodel.measure.cuda import CudaRunner

        return CudaRunner()
    if spec == "fake":
        from costmodel.measure.fake import FakeRunner

        return FakeRunner()
    raise unknown_choice("measurement target", spec, RUNNERS)



def measure(model: str | tuple[torch.export.ExportedProgram, Diagram], *, target: str | Runner = "cpu",
            batch: int = 1, seq: int = 128, dtype: str = "fp32", budget_s: float = 600.0,
            root: str | Path = DATA_DIR, progress: bool = True, flush_every: int = 16) -> dict:
    """Measure a model's kernels on `target` for about `budget_s` seconds (capture included),
    most useful first, writing rows under `root` (measurements, and the diagram, subdiagram and
    hardware rows they refer to); what already exists there is skipped.

    `model` is a zoo name or Hugging Face config path (captured at batch, seq, dtype) or an
    (exported program, diagram) pair from `zoo.export_*`. No request starts once the budget is
    spent; one that started runs to its end. Rows are flushed every `flush_every` results and on
    any exit; Ctrl-C while kernels are timed stops the loop, flushes, and returns with
    "interrupted": True (a command line should then exit with status 130). Ctrl-C during the
    capture, before anything is written, raises KeyboardInterrupt as usual.

    Returns {"model", "hardware", "diagram_hash", "requests", "measured" (rows with a time),
    "failed" (rows with an error), "skipped" (already measured), "remaining" (left by the
    budget), "interrupted", "seconds"}.
    """
    start = time.perf_counter()
    be = runner(target)
    if isinstance(model, str):
        if dtype not in be.dtypes:
            raise unknown_choice(f"dtype for target {be.name}", dtype, be.dtypes)
        from costmodel.ir.zoo import export_model

        exported, diagram = export_model(model, batch, seq, dtype)
    else:
        exported, diagram = model
    program = Program(exported, diagram, seed=getattr(be, "seed", 0))
    reqs = be.requests(program)
    done = existing_ids(root, be.source)
    todo = [r for r in reqs if be.row_id(scope="kernel", kernel_config=r.variant.config,
                                         subdiagram_hash=r.site.subdiagram.hash) not in done]
    counts = {"model": diagram.name, "hardware": be.hardware, "diagram_hash": diagram.hash,
              "requests": len(reqs), "measured": 0, "failed": 0, "skipped": len(reqs) - len(todo),
              "remaining": len(todo), "interrupted": False}
    have_subs = _existing_subdiagrams(root, be.source, diagram.hash)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{diagram.name} on {be.hardware}", unit="kernel",
               file=sys.stderr, disable=not progress)
    try:
        with ShardWriter(root, source=be.source) as writer:
            if todo:
                add_context_rows(writer, be, diagram, root)
            try:
                for n, req in enumerate(todo, start=1):
                    if time.perf_counter() - start > budget_s:
                        break
                    result = be.run([req])[0]
                    writer.add("measurements", kernel_row(req, result, be, diagram))
                    if req.site.subdiagram.hash not in have_subs:
                        writer.add("subdiagrams", subdiagram_row(req.site.subdiagram, be.source, diagram.hash))
                        have_subs.add(req.site.subdiagram.hash)
                    counts["failed" if result.error else "measured"] += 1
                    counts["remaining"] -= 1
                    bar.update()
                    if n % flush_every == 0:
                        writer.flush()
            except KeyboardInterrupt:
                counts["interrupted"] = True
    finally:
        bar.close()
    counts["seconds"] = round(time.perf_counter() - start, 3)
    return counts


def kernel_row(req: Request, result: Result, be: Runner, diagram: Diagram) -> dict:
    """The measurements row of one request: the id leaves the model out (a kernel costs the same
    in any model); the row still names the diagram it was measured in."""
    mask_kinds = sorted({v.mask_kind for v in req.site.subdiagram.vertices if v.mask_kind})
    return be.row(result, scope="kernel", kernel_config=req.variant.config,
                  kernel_name=req.variant.name, subdiagram_hash=req.site.subdiagram.hash,
                  diagram_hash=diagram.hash, id_diagram=False,
                  extra={"model": diagram.name, "batch": diagram.info("batch"),
                         "seq": diagram.info("seq"), "dtype": req.dtype, "group": req.site.group,
                         "vertices": list(req.site.vertices), "count": req.count,
                         "mask_kinds": mask_kinds})


def _existing_subdiagrams(root: str | Path, source: str, diagram_hash: str) -> set[str]:
    subs = read_table("subdiagrams", root, columns=["subdiagram_hash", "diagram_hash", "source"])
    mine = subs[(subs["diagram_hash"] == diagram_hash) & (subs["source"] == source)]
    return set(mine["subdiagram_hash"])


def add_context_rows(writer: ShardWriter, be: Runner, diagram: Diagram | None, root: str | Path) -> None:
    """The diagram's (where there is one) and the hardware's rows, unless `root` has them for
    this source already."""
    diagrams = read_table("diagrams", root, columns=["diagram_hash", "source"])
    if diagram is not None and not ((diagrams["diagram_hash"] == diagram.hash)
                                    & (diagrams["source"] == be.source)).any():
        writer.add_rows(diagram_rows(diagram, be.source))
    hardware = read_table("hardware", root, columns=["hardware", "source"])
    if not ((hardware["hardware"] == be.hardware) & (hardware["source"] == be.source)).any():
        writer.add("hardware", be.hardware_row())


def collect(models: Sequence[str] | None = None, *, target: str | Runner = "cpu",
            batches: Sequence[int] = (1, 4), seqs: Sequence[int] = (64, 256),
            dtypes: Sequence[str] = ("fp32",), budget_s: float = 3600.0, root: str | Path = DATA_DIR,
            progress: bool = True) -> dict:
    """Run `measure` over every (model, batch, seq, dtype), smallest batch x seq first, within
    `budget_s` seconds in all: each run gets an equal share of what is left, so time one run
    does not spend passes to the next. Sizes a model cannot take (a seq over its positions) are
    reported as errors and skipped. Stops at Ctrl-C. Returns the per-run counts and totals.

    Host collection (the lead runs it on a quiet machine):
        from costmodel.measure import collect
        collect(target="cpu", batches=(1, 4), seqs=(64, 256), budget_s=4 * 3600)
    """
    from costmodel.ir.zoo import ZOO_NAMES

    models = list(models or ZOO_NAMES)
    be = runner(target)
    combos = sorted(itertools.product(models, batches, seqs, dtypes),
                    key=lambda c: (c[1] * c[2], models.index(c[0]), c[3]))
    start = time.perf_counter()
    runs: list[dict] = []
    interrupted = False
    for i, (model, b, s, dt) in enumerate(combos):
        left = budget_s - (time.perf_counter() - start)
        if left <= 0:
            break
        try:
            r = measure(model, target=be, batch=b, seq=s, dtype=dt, budget_s=left / (len(combos) - i),
                        root=root, progress=progress)
        except UserError as e:
            runs.append({"model": model, "batch": b, "seq": s, "dtype": dt, "error": str(e)})
            continue
        except KeyboardInterrupt:  # Ctrl-C during a capture: nothing was being written
            interrupted = True
            break
        runs.append({"batch": b, "seq": s, "dtype": dt, **r})
        if r["interrupted"]:
            interrupted = True
            break
    totals = {k: sum(r.get(k, 0) for r in runs) for k in ("measured", "failed", "skipped", "remaining")}
    return {"runs": runs, **totals, "interrupted": interrupted,
            "seconds": round(time.perf_counter() - start, 3)}
