"""How far each machine's measured kernels are from the roofline, by op class: one table.

    python benchmarks/efficiency.py [--release datasets/releases/0.1] [--source neusight]

Per (machine, class of the kernel's biggest op): the time-weighted ratio measured / roofline,
exp(sum(ms * ln(measured / roofline)) / sum(ms)), so the kernels that make a model's time
count most, and the median ratio beside it. A cost model trained on some machines and asked
about another has to guess that machine's ratio: where the held-out machine's ratio lies
outside the others', no model that learns from them prices it well (the V100, README
"Unseen hardware"). Kernels of several ops count under "fused".
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.data.schema import DATASETS_DIR  # noqa: E402
from costmodel.models import features  # noqa: E402
from costmodel.models.train import training_graphs  # noqa: E402

CLASSES = 12  # rows: the classes with the most measured time


def kernel_class(x) -> str:
    """The op kind of a one-vertex kernel graph; "fused" for a graph of several vertices."""
    vertex = x[:, 0] > 0
    if int(vertex.sum()) != 1:
        return "fused"
    kinds = x[vertex, len(features.NODE_TYPES):len(features.NODE_TYPES) + len(features.OP_KINDS)]
    return features.OP_KINDS[int(kinds.argmax())]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="datasets/releases/0.1")
    parser.add_argument("--source", default="neusight", help="rows of this source only ('' for all)")
    args = parser.parse_args(argv)
    graphs = training_graphs(Path(args.release), DATASETS_DIR / "cache", progress=False)
    ratios: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)  # (ln ratio, ms)
    for g in graphs:
        if args.source and g.source != args.source:
            continue
        ln = float(g.y[0])
        ratios[(g.hardware, kernel_class(g.x))].append((ln - float(features.roofline_ln_ms(g)[0]), math.exp(ln)))
    machines = sorted({h for h, _ in ratios})
    time_of = defaultdict(float)
    for (_, kind), rows in ratios.items():
        time_of[kind] += sum(ms for _, ms in rows)
    print(f"measured / roofline, time-weighted (median), rows of {args.source or 'every source'} in {args.release}")
    print("| class | " + " | ".join(machines) + " |")
    print("|---|" + "---:|" * len(machines))
    for kind in sorted(time_of, key=time_of.get, reverse=True)[:CLASSES]:
        cells = []
        for h in machines:
            rows = ratios.get((h, kind))
            if not rows:
                cells.append("-")
                continue
            r, w = np.array(rows).T
            cells.append(f"{math.exp(float(np.sum(r * w) / np.sum(w))):.2f} ({math.exp(float(np.median(r))):.2f})")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
