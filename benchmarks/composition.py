"""How kernel times add up to whole-model times, held-out model families: one table.

    python benchmarks/composition.py [--method gbdt] [--seed 0] [--release datasets/releases/0.1]

Leave one model family out (`costmodel eval --protocol leave-one-model-out`): the method is
trained without the family's kernels, then each of the family's whole models is priced as its
kernels' sum composed five ways, each fitted on the other families' whole models:
- own: `Composition.fit` with each model's GPU named (what training and the report use): a * sum
  + b * launches, b fitted over every GPU's models, a on the workload's own GPU's models where it
  has `base.MIN_OWN` of them, else over every GPU's;
- a, b per GPU: both fitted on the own GPU's models (tried as the default and dropped: b comes
  out 0 and small models are priced out of order across GPUs);
- global: a and b over every GPU's models, for every GPU;
- scale per GPU: a * sum alone, a fitted per GPU;
and with none (a = 1, b = 0). Whole-model MAPE per family, and the mean.

    python benchmarks/composition.py --protocol leave-one-gpu-out [--method gbdt|measured] [--seed 0]

Leave one GPU out: the method is trained without the GPU's kernels, and the GPU, which has no
scale of its own, is composed as a GPU nobody measured is, in the ways of `UNSEEN_WAYS`, each
fitted on the other GPUs' whole models. `--method measured` prices each kernel at its measured
time (what `evaluate.composition_floor` composes): how each way treats perfect kernels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # before the learned models' imports run torch (`numerics`)
    from costmodel.models import numerics

    if not numerics.pin():
        print(numerics.unpinned(), file=sys.stderr)

from costmodel.data.schema import DATASETS_DIR  # noqa: E402
from costmodel.models.base import MIN_OWN, Composition, _fit_ab, _fit_scale  # noqa: E402
from costmodel.models.evaluate import fit_methods, measured_ln, model_family_folds  # noqa: E402
from costmodel.models.examples import model_workloads, workload_sums  # noqa: E402
from costmodel.models.gnn import GNNConfig  # noqa: E402
from costmodel.models.train import training_graphs  # noqa: E402

WAYS = ("own", "a, b per GPU", "global", "scale per GPU", "none")
# How a GPU without a scale of its own is composed (b is the pooled fit's in all but "none"):
# "GPU median": the training GPUs' own scales' median, each GPU counted once (`Composition.unseen`,
# the default since 2026-12-08); "pooled": a fitted over every training workload (the default
# before); "GPU mean": the own scales' log mean; "a = 1".
UNSEEN_WAYS = ("GPU median", "pooled", "GPU mean", "a = 1", "none")


def errors(totals: np.ndarray, launches: np.ndarray, measured: np.ndarray, hardware: list[str],
           test: tuple[np.ndarray, np.ndarray, np.ndarray], test_hardware: list[str]) -> dict[str, np.ndarray]:
    """Signed relative error of each test workload under each way of composing (`WAYS`)."""
    t, n, m = test
    own = Composition.fit(totals, launches, measured, hardware)
    overall = Composition.fit(totals, launches, measured)
    out = {way: np.zeros(len(m)) for way in WAYS}
    for i, h in enumerate(test_hardware):
        same = np.array([g == h for g in hardware])
        a, b = (_fit_ab(totals[same], launches[same], measured[same]) if same.sum() >= MIN_OWN
                else (overall.a, overall.b))
        scale = _fit_scale(totals[same], launches[same], measured[same], 0.0) if same.any() else 1.0
        predicted = {"own": own(t[i:i + 1], n[i:i + 1], [h])[0], "a, b per GPU": a * t[i] + b * n[i],
                     "global": overall(t[i:i + 1], n[i:i + 1])[0], "scale per GPU": scale * t[i],
                     "none": t[i]}
        for way in WAYS:
            out[way][i] = predicted[way] / m[i] - 1
    return out


def unseen_errors(totals: np.ndarray, launches: np.ndarray, measured: np.ndarray, hardware: list[str],
                  test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[dict[str, np.ndarray], Composition]:
    """Signed relative error of each test workload (on a GPU the fit never saw) under each of
    `UNSEEN_WAYS`, and the composition fitted."""
    t, n, m = test
    comp = Composition.fit(totals, launches, measured, hardware)
    scales = np.array(list(comp.own.values()))
    a = {"GPU median": comp.unseen[0], "pooled": comp.a,
         "GPU mean": float(np.exp(np.log(scales).mean())), "a = 1": 1.0}
    out = {way: (a[way] * t + comp.b * n) / m - 1 for way in a}
    out["none"] = t / m - 1
    return out, comp


def leave_one_gpu_out(graphs, workloads, method: str, cfg: GNNConfig) -> None:
    """The table of `UNSEEN_WAYS` per held-out GPU: MAPE and mean signed error."""
    print("| held out | models | " + " | ".join(UNSEEN_WAYS) + " | pooled a, b (us) | own scales |")
    print("|---|---:|" + "---:|" * len(UNSEEN_WAYS) + "---:|---|")
    means = {way: [] for way in UNSEEN_WAYS}
    for gpu in sorted({w.hardware for w in workloads}):
        train_w = [w for w in workloads if w.hardware != gpu]
        test_w = [w for w in workloads if w.hardware == gpu]
        fn = measured_ln if method == "measured" else fit_methods(
            [g for g in graphs if g.hardware != gpu], cfg, [method])[method]
        err, comp = unseen_errors(*workload_sums(fn, train_w), [w.hardware for w in train_w],
                                  workload_sums(fn, test_w))
        cells = []
        for way in UNSEEN_WAYS:
            means[way].append(float(np.mean(np.abs(err[way]))))
            cells.append(f"{100 * means[way][-1]:.1f}% ({100 * np.mean(err[way]):+.1f})")
        own = ", ".join(f"{name} {a:.3f}" for name, a in comp.own.items())
        print(f"| {gpu} | {len(test_w)} | " + " | ".join(cells)
              + f" | {comp.a:.3f}, {1e3 * comp.b:.0f} | {own} |", flush=True)
    print("| mean | | " + " | ".join(f"{100 * np.mean(means[w]):.1f}%" for w in UNSEEN_WAYS) + " | | |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="leave-one-model-out",
                        choices=("leave-one-model-out", "leave-one-gpu-out"))
    parser.add_argument("--method", default="gbdt", choices=("gnn", "gbdt", "roofline", "measured"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--release", default="datasets/releases/0.1")
    args = parser.parse_args(argv)
    release = Path(args.release)
    graphs = training_graphs(release, DATASETS_DIR / "cache", progress=False)
    workloads = model_workloads(release)
    cfg = GNNConfig(epochs=6, members=1, seed=args.seed)
    if args.protocol == "leave-one-gpu-out":
        print(f"whole-model MAPE (mean signed error), {args.method} seed {args.seed}, leave one GPU out, {release}")
        leave_one_gpu_out(graphs, workloads, args.method, cfg)
        return 0
    if args.method == "measured":
        parser.error("--method measured is for --protocol leave-one-gpu-out")
    print(f"whole-model MAPE, {args.method} seed {args.seed}, leave one model family out, {release}")
    print("| held out | models | " + " | ".join(WAYS) + " |")
    print("|---|---:|" + "---:|" * len(WAYS))
    means = {way: [] for way in WAYS}
    for family, (train_set, _, train_w, test_w) in model_family_folds(graphs, workloads):
        fn = fit_methods(train_set, cfg, [args.method])[args.method]
        err = errors(*workload_sums(fn, train_w), [w.hardware for w in train_w],
                     workload_sums(fn, test_w), [w.hardware for w in test_w])
        cells = []
        for way in WAYS:
            means[way].append(float(np.mean(np.abs(err[way]))))
            cells.append(f"{100 * means[way][-1]:.1f}%")
        print(f"| {family} | {len(test_w)} | " + " | ".join(cells) + " |", flush=True)
    print("| mean | | " + " | ".join(f"{100 * np.mean(means[w]):.1f}%" for w in WAYS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
