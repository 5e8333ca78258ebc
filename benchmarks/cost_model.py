"""Throughput and latency of the cost models; one command, one table.

    python benchmarks/cost_model.py [--repeats 3]

- batched prediction throughput: kernels per second through `CostModel.predict` (featurising
  included) for the roofline, the shipped GBDT (the default cost model) and the GNN (default
  config, 3 members; the weights are freshly initialised, which does not change the work per
  kernel), over 4,000 distinct eager kernels of zoo models at several sizes (a learned model
  prices a kernel repeated in a request once, so repeats would flatter it), and over the
  kernels of one bert-large 8x512 request, repeats counted as a user sees them;
- warm latency of a bert-large 8x512 predict request to `costmodel serve` on loopback (the
  diagram already captured by an earlier request), roofline, GBDT and GNN;
- GNN training speed: seconds per epoch (one member) on 20,000 kernels of release 0.1.
Medians over the repeats, all in this one run. Issue 4's target: at least 5,000 kernels/s.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from costmodel.models.registry import load_cost_model
from costmodel.models.roofline import Roofline
from costmodel.models.gnn import GNNConfig, GNNCostModel, KernelGNN, Normaliser
from costmodel.hardware import load_profile
from costmodel.ir.plan import eager_partition
from costmodel.serve import make_server
from costmodel.ir.zoo import capture_model

RELEASE = Path(__file__).resolve().parent.parent / "datasets" / "releases" / "0.1"


def untrained_gnn() -> GNNCostModel:
    cfg = GNNConfig()
    hw_dim = len(load_profile("a100").descriptor())
    torch.manual_seed(0)
    return GNNCostModel(cfg, [KernelGNN(cfg, hw_dim) for _ in range(cfg.members)],
                        Normaliser((0.0,) * hw_dim, (1.0,) * hw_dim))


def median_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def request_latency(model_spec, repeats: int) -> float:
    server = make_server("127.0.0.1", 0, cost_model=model_spec)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = json.dumps({"model": "bert-large", "batch": 8, "seq": 512, "target": "h100"}).encode()

    def once() -> None:
        conn = http.client.HTTPConnection(*server.server_address, timeout=300)
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
        conn.close()

    once()  # capture and cache the diagram
    try:
        return median_of(once, repeats)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    distinct: dict[str, object] = {}
    for batch in (1, 2, 4, 8, 16, 32):
        for m, t in (("bert-large", 512), ("gpt2", 512), ("opt-1.3b", 256), ("scgpt", 512),
                     ("bert-base", 128), ("gpt2-large", 256)):
            for s in eager_partition(capture_model(m, batch, t)):
                distinct.setdefault(s.hash, s)
    subs = list(distinct.values())[:4000]
    request = eager_partition(capture_model("bert-large", 8, 512))
    hw = load_profile("h100")
    gnn = untrained_gnn()
    rows = []
    for name, model in (("roofline", Roofline()), ("gbdt (shipped)", load_cost_model("gbdt")),
                        ("gnn (3 members)", gnn)):
        seconds = median_of(lambda: model.predict(subs, hw), args.repeats)
        rows.append((f"predict throughput, {name}, {len(subs):,} distinct kernels",
                     f"{len(subs) / seconds:,.0f} kernels/s"))
        seconds = median_of(lambda: model.predict(request, hw), args.repeats)
        rows.append((f"predict throughput, {name}, bert-large 8x512's {len(request)} kernels",
                     f"{len(request) / seconds:,.0f} kernels/s"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gnn.pt"
        gnn.save(path)
        for name, spec in (("roofline", "roofline"), ("gbdt (shipped)", "gbdt"),
                           ("gnn (3 members)", str(path))):
            rows.append((f"warm bert-large 8x512 request, {name}",
                         f"{1e3 * request_latency(spec, args.repeats):,.0f} ms"))
    if RELEASE.is_dir():
        from costmodel.models.train import train, training_graphs

        graphs = training_graphs(RELEASE, RELEASE.parent.parent / "cache", progress=False)[:20000]
        cfg = GNNConfig(epochs=1, members=1)
        seconds = median_of(lambda: train(graphs, cfg, progress=False), args.repeats)
        rows.append(("GNN training, 1 epoch, 1 member, 20,000 kernels", f"{seconds:.1f} s"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    print("| measure | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
