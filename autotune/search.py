"""Optuna search over a `Space`, scored by a cost model.

Each trial picks, per matmul class, how many epilogue ops to fuse and a tile config; the
objective is the predicted time of the whole plan in milliseconds. Kernel prices are cached by
(kernel content hash, config), so a kernel shared by every layer is priced once and a trial only
sends the cost model the kernels it has not seen.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from tqdm import tqdm

from autotune.space import Space
from costmodel.cost import CostModel, PlanCost
from costmodel.plan import KernelConfig, Plan

LIBRARY = "library"


def tile_label(c: KernelConfig) -> str:
    return f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} k{c.split_k}"


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    baseline: PlanCost
    best: PlanCost
    trials: int
    history: tuple[float, ...]  # predicted ms of each trial, in order

    @property
    def speedup(self) -> float:
        return self.baseline.total_ms / self.best.total_ms


class Evaluator:
    """Prices plans of one space with one cost model, caching each distinct kernel's price."""

    def __init__(self, space: Space, cost_model: CostModel) -> None:
        self.space = space
        self.cost_model = cost_model
        self._ms: dict[tuple[str, KernelConfig | None], float] = {}

    def total_ms(self, plan: Plan) -> float:
        kernels = plan.kernels(self.space.diagram)
        keys = [(k.subdiagram.hash, k.config) for k in kernels]
        missing = {key: k for key, k in zip(keys, kernels) if key not in self._ms}
        if missing:
            todo = list(missing.values())
            ms = self.cost_model.predict([k.subdiagram for k in todo], self.space.target,
                                         [k.config for k in todo])
            self._ms.update(zip(missing, map(float, ms)))
        return sum(self._ms[key] for key in keys)


def _choices(space: Space, params: dict) -> dict[str, tuple[int, KernelConfig | None]]:
    out = {}
    for i, cls in enumerate(space.classes):
        tiles = {tile_label(c): c for c in space.tiles.get(cls.dtype, ())}
        out[cls.key] = (params.get(f"c{i}.fuse", 0), tiles.get(params.get(f"c{i}.tile", LIBRARY)))
    return out


def search(space: Space, cost_model: CostModel, *, trials: int = 200, seed: int = 0,
           progress: bool = True) -> SearchResult:
    """Run `trials` Optuna trials (TPE, seeded) and return the best plan found."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evaluator = Evaluator(space, cost_model)

    def objective(trial: optuna.Trial) -> float:
        for i, cls in enumerate(space.classes):
            trial.suggest_int(f"c{i}.fuse", 0, len(cls.sites[0][1]))
            tiles = space.tiles.get(cls.dtype, ())
            if tiles:
                trial.suggest_categorical(f"c{i}.tile", [LIBRARY, *map(tile_label, tiles)])
        return evaluator.total_ms(space.plan(_choices(space, trial.params)))

    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    # Two starts every search should see: eager as it is, and every epilogue fused.
    for depth in ("none", "all"):
        params = {}
        for i, cls in enumerate(space.classes):
            params[f"c{i}.fuse"] = 0 if depth == "none" else len(cls.sites[0][1])
            if space.tiles.get(cls.dtype):
                params[f"c{i}.tile"] = LIBRARY
        study.enqueue_trial(params)
    bar = tqdm(total=trials, desc="autotune", unit="trial", file=sys.stderr, disable=not progress,
               mininterval=0.5)

    def tick(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(1)
        bar.set_postfix(best_ms=f"{study.best_value:.3f}")

    try:
        study.optimize(objective, n_trials=trials, callbacks=[tick])
    finally:
        bar.close()
    best_plan = space.plan(_choices(space, study.best_params))
    space.check(best_plan)
    baseline = cost_model.predict_plan(space.diagram, space.target, Plan())
    best = cost_model.predict_plan(space.diagram, space.target, best_plan)
    history = tuple(t.value for t in study.trials if t.value is not None)
    return SearchResult(best_plan, baseline, best, len(study.trials), history)


def changes(plan: Plan) -> dict[str, list[str]]:
    """What the plan changed, per vertex: fused with which ops, which tile."""
    out: dict[str, list[str]] = {}
    for d in plan.decisions:
        if hasattr(d, "vertices"):
            out.setdefault(d.vertices[0], []).append("fused " + "+".join(d.vertices[1:]))
        else:
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
        "trials": result.trials,
        "baseline_ms": result.baseline.total_ms,
        "plan_ms": result.best.total_ms,
        "predicted_speedup": result.speedup,
        "decisions": result.plan.to_list(),
        **(extra or {}),
    }


def top_kernels(cost: PlanCost, n: int) -> Sequence:
    return sorted(cost.kernels, key=lambda k: -k.ms)[:n]
