"""Where kernels and models run and how they are timed: the `Runner` base.

A runner owns a device and the one way this project times anything there (`Runner.time`: warm-up,
then calls timed by the device's clock, callables interleaved so load from other processes falls
on all of them alike), the one check of outputs against a reference (`Runner.check`, with the
rule book's tolerance per dtype), and the one way a timing becomes a dataset row
(`Runner.row`: provenance, software, machine). Collection (`costmodel.measure.collect`),
`autotune --measure` (`autotune.verify`) and the GPU benchmarks all go through these.

Runners: `host.HostRunner` (this CPU), `cuda.CudaRunner` (GPU 0), `fake.FakeRunner` (a GPU that
is not there: the CUDA plumbing with seeded timings, so the whole path runs on a CPU machine).
"""
from __future__ import annotations

import abc
import contextlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from costmodel.data.schema import Provenance, dumps, measurement_row, now
from costmodel.hardware import HardwareProfile
from costmodel.ir import rules
from costmodel.ir.capture import tensors

from costmodel.measure.slicing import Program, Workload, implicit_mask_sdpa
from costmodel.measure.variants import Request, Site, Variant, estimate_s, sites

if TYPE_CHECKING:
    from costmodel.ir.plan import Kernel

LICENCE = "Apache-2.0"  # our own measurements carry the project's licence


@dataclass(frozen=True)
class Result:
    """Timings of one request in milliseconds (median, IQR, min, max over `repeats` calls), or
    the error that stopped it. `extra` holds runner details (compile seconds, clocks, ...)."""

    runtime_ms: float | None = None
    iqr_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    repeats: int = 0
    error: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, samples_ms: Sequence[float], **extra: Any) -> Result:
        s = sorted(samples_ms)
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else (s[0],) * 3
        return cls(statistics.median(s), q3 - q1, s[0], s[-1], len(s), None, tuple(extra.items()))

    @classmethod
    def failure(cls, error: str, **extra: Any) -> Result:
        return cls(error=error, extra=tuple(extra.items()))


def describe(e: BaseException) -> str:
    """An exception on one line: its type and the first line of its message."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:500] if lines else ''}".rstrip(": ")


def output_error(out: Any, ref: Any, dtype: str) -> tuple[float, float, str]:
    """(max |out - ref| over every floating-point output, the most `dtype` allows for these
    outputs (`rules.allowed_error`), why they differ in kind: "" when they compare at all).
    Integer outputs must be equal; NaNs where the other has none, a different count or shape
    of outputs are reasons, with an infinite error."""
    outs, refs = tensors(out), tensors(ref)
    if len(outs) != len(refs):
        return float("inf"), 0.0, f"{len(outs)} outputs, the reference gives {len(refs)}"
    err, scale = 0.0, 0.0
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            return float("inf"), 0.0, f"output {i} has shape {tuple(o.shape)}, the reference {tuple(r.shape)}"
        if o.device.type == "meta" or r.device.type == "meta":
            continue  # no values to compare (the fake runner): shapes are all there is
        if not r.dtype.is_floating_point:
            if not torch.equal(o.cpu(), r.cpu()):
                return float("inf"), 0.0, f"output {i} ({r.dtype}) differs"
            continue
        o, r = o.detach().float().cpu(), r.detach().float().cpu()
        if bool((o.isnan() != r.isnan()).any()):
            return float("inf"), 0.0, f"output {i} has NaNs where the reference has none (or the reverse)"
        finite = r.isfinite() & o.isfinite()
        if finite.any():
            err = max(err, (o[finite] - r[finite]).abs().max().item())
            scale = max(scale, r[finite].abs().max().item())
    return err, rules.allowed_error(dtype, scale), ""


class Runner(abc.ABC):
    """A device that runs kernels and models, and how they are timed there.

    Invariants every implementation keeps (`tests/costmodel/test_measure.py` checks them):
    - `run(requests)` returns exactly one `Result` per request, in order;
    - a failure (compile error, out of memory, timeout, output mismatch against eager PyTorch)
      is a Result with `error` set: never an exception that ends the run (KeyboardInterrupt
      excepted), never a missing result;
    - `time` returns, for each callable, the milliseconds of each timed call after a warm-up;
      a `Result.of` those samples is a median with IQR, min, max and the repeat count;
    - `key()` names the software and machine (never what varies run to run, like clocks), so
      the same kernel measured again on the same set-up has the same measurement id.
    """

    name: str = ""  # what `runner()` resolves
    source: str = ""  # the provenance source of its rows
    kind: str = ""  # the hardware kind: "cpu" or "gpu"
    dtypes: tuple[str, ...] = ("fp32",)
    device = torch.device("cpu")
    min_warmup = 1  # calls before timing, at the least

    def __init__(self, *, target_s: float, min_repeats: int, max_repeats: int, warmup_s: float,
                 timeout_s: float, compilers: Sequence[str], check: bool, fusion: bool,
                 seed: int) -> None:
        self.target_s = target_s  # adaptive timing stops once calls add up to about this
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.warmup_s = warmup_s
        self.timeout_s = timeout_s  # a call longer than this is a "timeout" failure
        self.compilers = tuple(compilers)
        self.check_outputs = check
        self.fusion = fusion  # whether fusion groups are measured
        self.seed = seed

    # -- the machine

    @property
    @abc.abstractmethod
    def hardware(self) -> str:
        """The hardware column of its rows (a profile name where one matches)."""

    def profile(self) -> HardwareProfile | None:
        return None

    def environment(self) -> dict:
        """Measurement columns that describe the software and machine."""
        return {"framework": "torch", "framework_version": torch.__version__,
                "threads": torch.get_num_threads()}

    def key(self) -> dict:
        env = self.environment()
        return {"torch": env["framework_version"], "threads": env["threads"]}

    def clocks(self) -> dict | None:
        """The device's clocks now (what varies run to run: recorded, never keyed)."""
        return None

    def provenance(self) -> Provenance:
        return Provenance(self.source, now()[:10], LICENCE, origin=self.hardware)

    def hardware_row(self) -> dict:
        """The hardware table's row for this machine."""
        p = self.profile()
        return {"hardware": self.hardware, "kind": self.kind,
                "display_name": p.display_name if p else self.hardware,
                "descriptor_json": dumps(p.descriptor()) if p else None,
                "profile_json": dumps(p.to_dict()) if p else None, "source": self.source}

    def numerics(self, dtype: str) -> contextlib.AbstractContextManager:
        """The math settings `dtype` runs under here (a GPU's TF32 switch)."""
        return contextlib.nullcontext()

    def sync(self) -> None:
        """Wait for the device to finish what it was given."""

    # -- the one row builder

    def row(self, result: Result, *, scope: str, kernel_config: Any, kernel_name: str,
            subdiagram_hash: str | None = None, diagram_hash: str | None = None,
            key: Mapping | None = None, extra: Mapping | None = None, id_diagram: bool = True) -> dict:
        """The measurements row of `result`: this runner's provenance, software and machine, the
        clocks now, `extra` (JSON). The id hashes what ran, where and `key` (default the
        runner's own); with `id_diagram` False it leaves the diagram out (a kernel costs the
        same in any model), while the row still names it."""
        env, key = self.environment(), dict(key or self.key())
        details = dict(result.extra)
        clocks = details.pop("clocks", None)
        if clocks is None:
            clocks = self.clocks()
        row = measurement_row(
            self.provenance(), hardware=self.hardware, runtime_ms=result.runtime_ms, scope=scope,
            subdiagram_hash=subdiagram_hash, diagram_hash=diagram_hash if id_diagram else None,
            kernel_config=kernel_config, kernel_name=kernel_name, error=result.error, key=key,
            runtime_iqr_ms=result.iqr_ms, runtime_min_ms=result.min_ms,
            runtime_max_ms=result.max_ms, repeats=result.repeats, framework=env.get("framework"),
            framework_version=env.get("framework_version"),
            driver_version=env.get("driver_version"), cuda_version=env.get("cuda_version"),
            clocks_json=dumps(clocks) if clocks is not None else env.get("clocks_json"),
            threads=key.get("threads", env.get("threads")),
            extra_json=dumps({**(extra or {}), **details}))
        row["diagram_hash"] = diagram_hash
        return row

    def row_id(self, *, scope: str, kernel_config: Any, subdiagram_hash: str | None = None,
               diagram_hash: str | None = None, key: Mapping | None = None) -> str:
        """The id `row` would give (to skip what was measured before)."""
        return measurement_row(self.provenance(), hardware=self.hardware, runtime_ms=None,
                               scope=scope, subdiagram_hash=subdiagram_hash,
                               diagram_hash=diagram_hash, kernel_config=kernel_config,
                               key=dict(key or self.key()))["measurement_id"]

    # -- the one check

    def check(self, out: Any, ref: Any, dtype: str) -> str | None:
        """Why `out` differs from `ref` beyond `dtype`'s tolerance, or None when it does not."""
        err, allowed, reason = output_error(out, ref, dtype)
        if reason:
            return reason
        if err > allowed:
            return f"max abs error {err:.3g}, allowed {allowed:.3g} ({dtype})"
        return None

    # -- the one timer

    @abc.abstractmethod
    def _start(self) -> Any:
        """A mark on the device's clock just before a call."""

    @abc.abstractmethod
    def _elapsed(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks (after `sync`)."""

    def time(self, fns: Mapping[str, Callable], input_sets: Sequence[Sequence[Any]], *,
             repeats: int | None = None, warmup: int | None = None, pipelined: bool = False,
             work: Mapping[str, tuple[Sequence[Kernel], float]] | None = None
             ) -> dict[str, list[float]]:
        """Milliseconds of each timed call of each callable, called on the input sets in turn.

        Warm-up: `warmup` calls of each, or (None) calls for `warmup_s` (at least one). Timed:
        `repeats` calls of each, or (None) as many as add up to `target_s`, within
        `min_repeats`..`max_repeats`. The callables are interleaved, rotated each round, so
        load from other processes falls on all of them alike. A round ends with a
        synchronisation, so each call's time is what a caller waits for; `pipelined` instead
        queues every call back to back and synchronises once (a kernel's time on a busy
        device, its launch hidden behind the previous call). A call longer than `timeout_s`
        raises TimeoutError. `work` (what each callable runs, and a factor) is for runners that
        price rather than run; real runners ignore it."""
        names = list(fns)
        n_sets = max(1, len(input_sets))
        calls, start = 0, time.perf_counter()

        def warming() -> bool:
            if warmup is not None:
                return calls < warmup
            return calls < self.min_warmup or (time.perf_counter() - start < self.warmup_s
                                               and calls < 1000)

        while warming() or (calls == 0 and repeats is None):  # an estimate needs one call
            for name in names:
                fns[name](*input_sets[calls % n_sets])
            calls += 1
        self.sync()
        per_call = (time.perf_counter() - start) / max(calls * len(names), 1)
        if per_call > self.timeout_s:
            raise TimeoutError(f"one call takes {per_call:.1f} s, over the {self.timeout_s} s limit")
        if repeats is None:
            repeats = int(self.target_s / max(per_call, 1e-9))
            repeats = min(self.max_repeats, max(self.min_repeats, repeats))
        marks: dict[str, list[tuple[Any, Any]]] = {n: [] for n in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                begin = self._start()
                fns[name](*input_sets[(calls + r) % n_sets])
                marks[name].append((begin, self._start()))
            if not pipelined:
                self.sync()
        self.sync()
        return {n: [self._elapsed(a, b) for a, b in marks[n]] for n in names}

    # -- measuring requests (collection)

    @abc.abstractmethod
    def configs(self, site: Site, dtype: str) -> list[Variant]:
        """The variants of `site` this runner measures."""

    def requests(self, program: Program) -> list[Request]:
        """What this runner measures of a model, one per distinct (subdiagram hash, config),
        most useful first: by tier, then sweep round, then estimated seconds at stake."""
        diagram = program.diagram
        dtype = diagram.info("dtype", "fp32")
        profile = self.profile()
        first: dict[tuple[str, str], Request] = {}
        counts: dict[tuple[str, str], int] = {}
        for site in sites(diagram, fusion=self.fusion):
            for variant in self.configs(site, dtype):
                req = Request(site, variant, program, dtype)
                counts[req.key] = counts.get(req.key, 0) + 1
                first.setdefault(req.key, req)
        out = []
        for k, req in first.items():
            seconds = estimate_s(req.site.subdiagram, profile)
            out.append(Request(req.site, req.variant, program, dtype, counts[k], counts[k] * seconds))
        out.sort(key=lambda r: (r.variant.tier, r.variant.round, -r.priority, r.site.subdiagram.hash,
                                r.variant.config_json))
        return out

    def run(self, requests: Sequence[Request]) -> list[Result]:
        """One Result per request, in order (see the class docstring)."""
        out = []
        for r in requests:
            try:
                out.append(self._measure(r))
            except Exception as e:  # noqa: BLE001 - failures are data: compile errors, OOM, illegal configs
                out.append(Result.failure(describe(e)))
            finally:
                self._cleanup(r)
        return out

    def _measure(self, request: Request) -> Result:
        cfg = request.variant.config
        wl = request.workload(self.device)
        sets = self._input_sets(wl)
        with torch.no_grad():
            reference = None
            if self.check_outputs and (cfg.get("compiler") != "eager"
                                       or cfg.get("sdpa_backend", "auto") != "auto" or "mask" in cfg):
                with self.numerics(request.dtype):
                    reference = wl.module.forward(*sets[0])
            with self._context(request):
                fn = self._callable(request, wl)
                start = time.perf_counter()
                out = fn(*sets[0])
                self.sync()
                first_s = time.perf_counter() - start
                if reference is not None and (bad := self.check(out, reference, request.dtype)):
                    return Result.failure(f"mismatch against eager PyTorch: {bad}", first_call_s=first_s)
                del out, reference
                samples = self.time({"kernel": fn}, sets, pipelined=True)["kernel"]
        return Result.of(samples, first_call_s=round(first_s, 6), input_sets=len(sets),
                         input_bytes=wl.input_bytes, **self._row_extra())

    def _callable(self, request: Request, wl: Workload) -> Callable:
        cfg = request.variant.config
        compiler = cfg.get("compiler")
        if compiler not in self.compilers:
            raise ValueError(f"compiler {compiler!r} is not one of this runner's {self.compilers}")
        if compiler == "eager" and cfg.get("mask") == "implicit":
            v = next(v for v in request.site.subdiagram.vertices if v.kind == "attention")
            return wl.with_target(implicit_mask_sdpa(v.mask_kind == "causal"))
        if compiler == "eager":
            return wl.module.forward
        if compiler == "inductor":
            return torch.compile(wl.module, backend="inductor", fullgraph=True, dynamic=False,
                                 mode=cfg.get("mode"))
        if compiler == "triton":
            return self._triton(request, wl)
        raise ValueError(f"unknown compiler {compiler!r}")

    def _triton(self, request: Request, wl: Workload) -> Callable:
        raise ValueError(f"{self.name} runs no Triton kernels")

    def _context(self, request: Request) -> contextlib.AbstractContextManager:
        return self.numerics(request.dtype)

    def _cleanup(self, request: Request) -> None:
        if request.variant.config.get("compiler") == "inductor":
            torch._dynamo.reset()  # drop compiled graphs: memory, and dynamo's cache limits

    def _row_extra(self) -> dict:
        return {}

    @abc.abstractmethod
    def _input_sets(self, wl: Workload) -> list[list[torch.Tensor]]: ...
