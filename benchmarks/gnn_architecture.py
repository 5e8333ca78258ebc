"""Choose the GNN's message passing by measurement: kernel MAPE on held-out GPUs.

    python benchmarks/gnn_architecture.py [--data datasets/releases/0.1] [--epochs 6] [--hold t4,a100-pcie-40gb]

For each held-out GPU and each architecture (GINE with edge features, GraphSAGE, and no message
passing at all: the pooled node encodings go straight to the head), train one member with the
same seed and epochs on every other machine's kernels and score the held-out GPU's kernels.
Prints one table; the GBDT and roofline baselines are in the same run for scale.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from costmodel.models.evaluate import mape
from costmodel.models.gbdt import GBDTCostModel, roofline_ln
from costmodel.models.gnn import GNNConfig
from costmodel.models.train import train, training_graphs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="datasets/releases/0.1")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--hold", default="t4,a100-pcie-40gb")
    args = p.parse_args()
    graphs = training_graphs(args.data, "datasets/cache", progress=False)
    variants = {"gine x3": dict(conv="gine", layers=3), "sage x3": dict(conv="sage", layers=3),
                "no message passing": dict(conv="gine", layers=0)}
    print(f"data {args.data}; one member, {args.epochs} epochs, seed 0; kernel MAPE on the held-out GPU")
    print(f"| held out | kernels | {' | '.join(variants)} | gbdt | roofline | train s (each) |")
    print("|---|---:|" + "---:|" * (len(variants) + 3))
    for gpu in args.hold.split(","):
        test = [g for g in graphs if g.hardware == gpu]
        rest = [g for g in graphs if g.hardware != gpu]
        true = np.exp([float(g.y[0]) for g in test])
        cells, seconds = [], []
        for overrides in variants.values():
            cfg = dataclasses.replace(GNNConfig(epochs=args.epochs, members=1), **overrides)
            start = time.perf_counter()
            model = train(rest, cfg, progress=False)
            seconds.append(time.perf_counter() - start)
            cells.append(mape(np.exp(model.predict_ln(test)[0]), true))
        gb = mape(np.exp(GBDTCostModel.fit(rest).predict_ln(test)[0]), true)
        rl = mape(np.exp(roofline_ln(test)), true)
        print(f"| {gpu} | {len(test)} | " + " | ".join(f"{100 * c:.1f}%" for c in cells)
              + f" | {100 * gb:.1f}% | {100 * rl:.1f}% | {' / '.join(f'{s:.0f}' for s in seconds)} |",
              flush=True)


if __name__ == "__main__":
    main()
