"""Optuna search over a `Space`, scored by a cost model.

Each trial assigns a label to every `Param` of the space; the objective is the predicted time of
the whole plan in milliseconds. Trials are asked in batches and their plans priced together: a
kernel's price is cached by (content hash, config), so a kernel shared by every layer is priced
once and each batch sends the cost model only the kernels no trial has seen.

Illegal assignments (groups that overlap into an illegal kernel) are scored as the eager plan and
marked infeasible (a trial constraint, which TPE uses to steer away). Priors enter as enqueued trials. With a storage (a
journal file, SQLite or PostgreSQL URL) the study outlives the process: rerunning the same
search resumes it, and `autotune worker` processes can share it.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from autotune.space import Choice, Space, tile_label
from autotune.storage import fail_stale
from costmodel.models.base import CostModel, PlanCost
from costmodel.ir.plan import Fuse, KernelConfig, Plan, Tile

SAMPLERS = ("tpe", "random")
BATCH = 8  # trials asked, priced and told together


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    baseline: PlanCost
    best: PlanCost
    trials: int
    history: tuple[float, ...]  # predicted ms of each complete trial, in trial order
    study_name: str = ""
    suggested: int = 0  # prior suggestions enqueued
    compiled: PlanCost | None = None  # whole-model torch.compile, the space's point for it

    @property
    def speedup(self) -> float:
        return self.baseline.total_ms / self.best.total_ms

    @property
    def speedup_spread(self) -> float:
        """Std of ln(speedup) from the kernels' ensemble spreads (0 for a deterministic model)."""
        var = sum((k.ms * k.spread) ** 2 for k in self.best.kernels) / self.best.kernels_ms ** 2 \
            + sum((k.ms * k.spread) ** 2 for k in self.baseline.kernels) / self.baseline.kernels_ms ** 2
        return var ** 0.5


class Evaluator:
    """Prices plans of one space with one cost model, caching each distinct kernel's price."""

    def __init__(self, space: Space, cost_model: CostModel) -> None:
        self.space = space
        self.cost_model = cost_model
        self._ms: dict[tuple[str, KernelConfig | None], float] = {}

    def total_ms(self, plan: Plan) -> float:
        return self.total_ms_many([plan])[0]

    def total_ms_many(self, plans: Sequence[Plan]) -> list[float]:
        kernels = [plan.kernels(self.space.diagram) for plan in plans]
        missing = {}
        for ks in kernels:
            for k in ks:
                key = (k.subdiagram.hash, k.config)
                if key not in self._ms and key not in missing:
                    missing[key] = k
        if missing:
            todo = list(missing.values())
            ms = self.cost_model.predict([k.subdiagram for k in todo], self.space.target,
                                         [k.config for k in todo])
            self._ms.update(zip(missing, map(float, ms)))
        return [self.cost_model.plan_total(sum(self._ms[(k.subdiagram.hash, k.config)] for k in ks),
                                           plan.launches(len(ks)), self.space.target.name)
                for plan, ks in zip(plans, kernels)]


def _legal(trial: optuna.trial.FrozenTrial) -> bool:
    return "illegal" not in trial.user_attrs


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")


def open_study(name: str, storage: str | optuna.storages.BaseStorage | None, sampler: str,
               seed: int, attrs: Mapping | None = None) -> optuna.Study:
    """Create the study, or load it if the storage has one of that name (resume)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=make_sampler(sampler, seed), load_if_exists=True)
    for key, value in (attrs or {}).items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    return study


def run_trials(study: optuna.Study, space: Space, evaluator: Evaluator, trials: int, *,
               time_budget: float | None = None, progress: bool = True, batch: int = BATCH,
               desc: str = "autotune") -> int:
    """Ask, price and tell `trials` trials (fewer if the time budget runs out). A trial cut off
    by Ctrl-C is told as failed, so the storage keeps every finished trial and no stale one."""
    params = space.params
    heartbeat = getattr(study._storage, "get_heartbeat_interval", lambda: None)() is not None
    bar = tqdm(total=trials, desc=desc, unit="trial", file=sys.stderr, disable=not progress,
               mininterval=0.5)
    start, done = time.monotonic(), 0
    try:
        while done < trials and (time_budget is None or time.monotonic() - start < time_budget):
            asked: list[optuna.Trial] = []
            told: set[int] = set()
            try:
                for _ in range(min(batch, trials - done)):
                    asked.append(study.ask())
                    if heartbeat:  # a worker killed now leaves a trial the next one can fail
                        study._storage.record_heartbeat(asked[-1]._trial_id)
                plans, legal = [], []
                for t in asked:
                    labels = {p.name: t.suggest_categorical(p.name, p.labels) for p in params}
                    try:
                        plans.append(space.plan_from_labels(labels))
                        legal.append(True)
                    except ValueError as e:
                        t.set_user_attr("illegal", str(e)[:200])
                        plans.append(Plan())
                        legal.append(False)
                values = evaluator.total_ms_many(plans)
                for t, value, ok in zip(asked, values, legal):
                    t.set_constraint("legal", 0.0 if ok else 1.0)
                    study.tell(t, value)
                    told.add(t.number)
            except BaseException:
                for t in asked:
                    if t.number not in told:
                        study.tell(t, state=TrialState.FAIL)
                raise
            done += len(asked)
            bar.update(len(asked))
            bar.set_postfix(best_ms=f"{study.best_value:.3f}")
    finally:
        bar.close()
    return done


def best_plan(study: optuna.Study, space: Space) -> Plan:
    feasible = [t for t in study.trials if t.state == TrialState.COMPLETE and _legal(t)]
    if not feasible:
        return Plan()
    best = min(feasible, key=lambda t: (t.value, t.number))
    return space.plan_from_labels(best.params)


def search(space: Space, cost_model: CostModel, *, trials: int = 200, seed: int = 0,
           progress: bool = True,
           suggestions: Sequence[Mapping[str, Choice]] | Callable[[], Sequence[Mapping[str, Choice]]] = (),
           storage: str | optuna.storages.BaseStorage | None = None, study_name: str = "autotune",
           sampler: str = "tpe", time_budget: float | None = None,
           attrs: Mapping | None = None) -> SearchResult:
    """Search `trials` trials (in all, counting those a resumed study already holds; or until
    `time_budget` seconds) and return the best plan found. The eager plan is the first trial;
    `suggestions` (from a prior) are enqueued after it; pass a callable to have them asked for
    only when the study is new (a resumed study has them already, and an LLM prior is slow)."""
    study = open_study(study_name, storage, sampler, seed, attrs)
    stale = fail_stale(study, locked=isinstance(storage, optuna.storages.JournalStorage))
    if stale:
        print(f"failed {stale} trials a stopped run left running", file=sys.stderr)
    evaluator = Evaluator(space, cost_model)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    suggested = 0
    if not study.trials:
        if callable(suggestions):
            suggestions = suggestions()
        # Eager first (the reference every search sees), then whole-model torch.compile (with a
        # CUDA graph too on a GPU: what users get for free), then the prior's suggestions; a
        # param a suggestion leaves out takes what eager does.
        for given in [{}, *space.compile_points, *suggestions]:
            study.enqueue_trial({p.name: p.label(given.get(p.name, p.choices[0])) for p in space.params},
                                skip_if_exists=True)
        suggested = len(suggestions)
    elif progress:
        print(f"resuming study {study_name!r}: {len(finished)} trials done", file=sys.stderr)
    run_trials(study, space, evaluator, max(0, trials - len(finished)), time_budget=time_budget,
               progress=progress)
    return result_of(study, space, cost_model, suggested)


def result_of(study: optuna.Study, space: Space, cost_model: CostModel,
              suggested: int = 0) -> SearchResult:
    """The study's best legal plan, priced; eager itself when no trial beats eager (a plan is
    never reported as tuned when it is predicted slower)."""
    plan = best_plan(study, space)
    space.check(plan)
    baseline = cost_model.predict_plan(space.diagram, space.target, Plan())
    best = cost_model.predict_plan(space.diagram, space.target, plan)
    compiled = cost_model.predict_plan(space.diagram, space.target,
                                       space.plan_from(space.compile_points[0]))
    if best.total_ms >= baseline.total_ms:
        plan, best = Plan(), baseline
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                      key=lambda t: t.number)
    return SearchResult(plan, baseline, best, len(complete), tuple(t.value for t in complete),
                        study.study_name, suggested, compiled)


def changes(plan: Plan) -> dict[str, list[str]]:
    """What the plan changed, per vertex: fused with which ops, which tile."""
    out: dict[str, list[str]] = {}
    for d in plan.decisions:
        if isinstance(d, Fuse):
            out.setdefault(d.vertices[0], []).append("fused " + "+".join(d.vertices[1:]))
        elif isinstance(d, Tile):
            out.setdefault(d.vertex, []).append("tile " + tile_label(d.config))
    return out


def plan_document(result: SearchResult, *, model: str, diagram_hash: str, batch: int, seq: int,
                  dtype: str, seed: int, extra: dict | None = None) -> dict:
    """The JSON written as plan.json."""
    return {
        "target": result.best.target,
        "model": model,
        "batch": batch,
        "seq": seq,
        "dtype": dtype,
        "diagram_hash": diagram_hash,
        "cost_model": result.best.cost_model,
        "seed": seed,
        "study": result.study_name,
        "trials": result.trials,
        "baseline_ms": result.baseline.total_ms,
        "plan_ms": result.best.total_ms,
        "predicted_speedup": result.speedup,
        "speedup_spread": result.speedup_spread,
        "decisions": result.plan.to_list(),
        **(extra or {}),
    }


def top_kernels(cost: PlanCost, n: int) -> Sequence:
    return sorted(cost.kernels, key=lambda k: -k.ms)[:n]

