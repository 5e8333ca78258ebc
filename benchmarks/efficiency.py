"""How far each machine's measured kernels are from the roofline, by op class or by duration: one table.

    python benchmarks/efficiency.py [--release datasets/releases/0.1] [--source neusight] [--by class|duration]

Per (machine, class of the kernel's biggest op): the time-weighted ratio measured / roofline,
exp(sum(ms * ln(measured / roofline)) / sum(ms)), so the kernels that make a model's time
count most, and the median ratio beside it. A cost model trained on some machines and asked
about another has to guess that machine's ratio: where the held-out machine's ratio lies
outside the others', no model that learns from them prices it well (the V100, README
"Unseen hardware"). Kernels of several ops count under "fused".

`--by duration`: the matmul kernels alone, binned by how long the roofline says they take at
peak (decades of seconds), each cell the median fraction of the peak they reach (roofline
compute time over measured time), per machine and source. One machine measured by two sources
shows what the machine does and what the harness and the card's state do: a GPU whose long
kernels fall below its short ones is holding a lower clock under sustained load.
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
from costmodel.models.examples import kernel_class  # noqa: E402
from costmodel.models.train import training_graphs  # noqa: E402

CLASSES = 12  # rows: the classes with the most measured time
DECADES = tuple(range(-6, 0))  # --by duration: 1 us (and under) to 0.1 s (and over) at peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="datasets/releases/0.1")
    parser.add_argument("--source", default="neusight", help="rows of this source only ('' for all)")
    parser.add_argument("--by", default="class", choices=("class", "duration"))
    args = parser.parse_args(argv)
    graphs = training_graphs(Path(args.release), DATASETS_DIR / "cache", progress=False)
    if args.by == "duration":
        return by_duration(graphs, args.source, args.release)
    ratios: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)  # (ln ratio, ms)
    for g in graphs:
        if args.source and g.source != args.source:
            continue
        ln = float(g.y[0])
        ratios[(g.hardware, kernel_class(g))].append((ln - float(features.roofline_ln_ms(g)[0]), math.exp(ln)))
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


def by_duration(graphs, source: str, release: str) -> int:
    """The `--by duration` table (module docstring)."""
    fractions: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for g in graphs:
        if (source and g.source != source) or kernel_class(g) != "matmul":
            continue
        compute_s = 10.0 ** float(g.roofline[0, 0])
        decade = min(max(math.floor(math.log10(compute_s)), DECADES[0]), DECADES[-1])
        fractions[(g.hardware, g.source)][decade].append(compute_s / (math.exp(float(g.y[0])) * 1e-3))
    print(f"matmul kernels: median fraction of the peak reached (kernels), by the roofline's compute "
          f"time at peak, rows of {source or 'every source'} in {release}")
    print("| machine (source) | " + " | ".join(f"1e{d} s" for d in DECADES) + " |")
    print("|---|" + "---:|" * len(DECADES))
    for (hardware, src), bins in sorted(fractions.items()):
        cells = [f"{np.median(bins[d]):.2f} ({len(bins[d])})" if bins.get(d) else "-" for d in DECADES]
        print(f"| {hardware} ({src}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
