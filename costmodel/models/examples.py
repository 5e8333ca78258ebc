"""Examples for learning, read from a dataset folder:
- kernel examples: every successful kernel-scope measurement as a PyG graph
  (`features.to_data`) on the hardware it ran on, with its kernel config and the label
  `y = ln(runtime_ms)`;
- whole-model examples (`Workload`): eager whole-model measurements with the kernels of their
  graph, from which a learned model fits how kernel times compose (`Composition`).

`KernelDataset` caches them processed, named by the data's fingerprint and the feature code's
hash (`features.code_hash`), so a stale cache is never read: new data or new features mean a
new file.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from costmodel.data.loader import back_to_back, fingerprint, hardware_profiles
from costmodel.data.schema import DATA_DIR
from costmodel.data.shards import read_table
from costmodel.ir.diagram import Subdiagram
from costmodel.ir.plan import KernelConfig
from costmodel.models import features
from costmodel.models.features import to_data


class KernelDataset(InMemoryDataset):
    """(kernel graph, hardware, config, runtime) examples. `root` holds the processed cache."""

    def __init__(self, root: str | Path, *, data: str | Path = DATA_DIR, progress: bool = True,
                 transform=None) -> None:
        self.data_dir = Path(data)
        self.profiles = hardware_profiles(self.data_dir)
        described = json.dumps({k: p.to_dict() for k, p in sorted(self.profiles.items())},
                               sort_keys=True, default=str)
        # The data, the feature code and the hardware it is read with: a profile added or
        # corrected (a machine that had none) makes a new cache.
        self.fp = (f"{fingerprint(self.data_dir)[:16]}-{features.code_hash()}-"
                   f"{hashlib.sha256(described.encode()).hexdigest()[:8]}")
        self.progress = progress
        self.skipped: dict[str, int] = {}
        super().__init__(str(root), transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> list[str]:
        return [f"kernels-{self.fp}.pt"]

    def download(self) -> None:
        pass

    def process(self) -> None:
        m = read_table("measurements", self.data_dir)
        ok = m[(m["scope"] == "kernel") & m["runtime_ms"].notna() & m["error"].isna()
               & (m["runtime_ms"] > 0) & m["subdiagram_hash"].notna()]
        subs = read_table("subdiagrams", self.data_dir, columns=["subdiagram_hash", "subdiagram_json"])
        records = dict(zip(subs["subdiagram_hash"], subs["subdiagram_json"]))
        profiles = self.profiles
        built: dict[str, Subdiagram] = {}
        graphs = []
        for row in tqdm(ok.itertuples(), total=len(ok), desc="kernel graphs", disable=not self.progress):
            hw = profiles.get(row.hardware)
            if hw is None:
                self.skipped["no hardware profile"] = self.skipped.get("no hardware profile", 0) + 1
                continue
            if row.subdiagram_hash not in records:
                self.skipped["no subdiagram"] = self.skipped.get("no subdiagram", 0) + 1
                continue
            sub = built.get(row.subdiagram_hash)
            if sub is None:
                sub = built[row.subdiagram_hash] = Subdiagram.from_record(json.loads(records[row.subdiagram_hash]))
            if back_to_back(row.kernel_config_json, sub):
                self.skipped["ops timed back to back"] = self.skipped.get("ops timed back to back", 0) + 1
                continue
            try:
                data = features.to_data(sub, hw, KernelConfig.from_record(row.kernel_config_json))
            except Exception as e:  # a kernel the feature code cannot price is skipped, and counted
                key = f"features: {type(e).__name__}"
                self.skipped[key] = self.skipped.get(key, 0) + 1
                continue
            data.y = torch.tensor([math.log(row.runtime_ms)], dtype=torch.float32)
            data.hardware = row.hardware
            data.source = row.source
            data.measurement_id = row.measurement_id
            data.diagram_hash = row.diagram_hash if isinstance(row.diagram_hash, str) else ""
            graphs.append(data)
        graphs += self._programs(m, profiles)
        self.save(graphs, self.processed_paths[0])

    def _programs(self, m, profiles) -> list:
        """Whole programs measured under compiler configurations (TpuGraphs' "config" rows):
        the program's graph, with its configuration in `config` (`features.xla_vector`)."""
        rows = m[(m["scope"] == "config") & m["runtime_ms"].notna() & m["error"].isna()
                 & (m["runtime_ms"] > 0) & m["diagram_hash"].notna()]
        programs = programs_of(self.data_dir, set(rows["diagram_hash"]))
        out = []
        for row in rows.itertuples():
            hw, sub = profiles.get(row.hardware), programs.get(row.diagram_hash)
            if hw is None or sub is None:
                self.skipped["program without profile or graph"] = \
                    self.skipped.get("program without profile or graph", 0) + 1
                continue
            data = features.to_data(sub, hw, xla=json.loads(row.kernel_config_json))
            data.y = torch.tensor([math.log(row.runtime_ms)], dtype=torch.float32)
            data.hardware, data.source = row.hardware, row.source
            data.measurement_id, data.diagram_hash = row.measurement_id, row.diagram_hash
            out.append(data)
        return out


# Labels. A kernel row is what its source's harness timed, and a harness adds its own time to
# every kernel: NeuSight's harness adds 27 to 48 us on its five GPUs (a figure per host, the
# P100's the highest; `costmodel train --labels device` prints them). "device" labels take that
# floor off each row, so a model learns what the GPU spends, not what the harness adds around it.
LABELS = ("measured", "device")
TINY_S = 8e-6  # roofline seconds under which a kernel's measured time is mostly the harness's
TINY_MIN = 100  # kernels that few tell no floor: a source with fewer is taken to add none


def timing_floors(graphs: Sequence[Data]) -> dict[tuple[str, str], float]:
    """Seconds each (hardware, source) adds to every kernel it timed: the median of measured
    less roofline time over its kernels whose roofline is under TINY_S, at least 0 (0 where it
    timed fewer than TINY_MIN of them)."""
    tiny: dict[tuple[str, str], list[float]] = defaultdict(list)
    for g in graphs:
        roofline_s = 10.0 ** float(g.roofline[0, 3])
        if roofline_s < TINY_S:
            measured_s = math.exp(float(g.y[0])) * 1e-3
            tiny[(getattr(g, "hardware", ""), getattr(g, "source", ""))].append(measured_s - roofline_s)
    return {k: max(0.0, float(np.median(v))) if len(v) >= TINY_MIN else 0.0 for k, v in tiny.items()}


def labels(graphs: Sequence[Data], kind: str = "measured",
           floors: dict[tuple[str, str], float] | None = None) -> np.ndarray:
    """ln(ms) each graph is learned from: "measured", its row as timed; "device", that less its
    source's floor (`floors`, default `timing_floors` of these graphs), at least the target's
    launch overhead (the roofline's third term)."""
    measured = np.array([float(g.y[0]) for g in graphs])
    if kind == "measured":
        return measured
    if kind != "device":
        raise ValueError(f"unknown labels {kind!r}; valid: {', '.join(LABELS)}")
    floors = timing_floors(graphs) if floors is None else floors
    out = measured.copy()
    for i, g in enumerate(graphs):
        floor_s = floors.get((getattr(g, "hardware", ""), getattr(g, "source", "")), 0.0)
        if floor_s:
            launch_s = 10.0 ** float(g.roofline[0, 2])
            out[i] = math.log(max(math.exp(measured[i]) * 1e-3 - floor_s, launch_s) * 1e3)
    return out


def kernel_class(graph: Data) -> str:
    """The op kind of a one-vertex kernel example (its node features, `features.node_features`);
    "fused" for a kernel of several vertices."""
    vertex = graph.x[:, 0] > 0
    if int(vertex.sum()) != 1:
        return "fused"
    start = len(features.NODE_TYPES)
    return features.OP_KINDS[int(graph.x[vertex, start:start + len(features.OP_KINDS)].argmax())]


def programs_of(directory: str | Path, hashes: set[str]) -> dict[str, Subdiagram]:
    """Each stored diagram of `hashes` as one subdiagram: a whole program run as one unit."""
    from costmodel.data.loader import diagrams

    return {h: d.subdiagram([v.name for v in d.vertices]) for h, d in diagrams(directory, hashes).items()}


# Vertices of a repeated transformer block (NeuSight's graphs hold block 0 of `num_layer`).
LAYER = re.compile(r"\.(layer|layers|h|block|blocks)\.\d+(\.|$)")


@dataclass(frozen=True)
class Workload:
    """A whole model measured end to end (NeuSight's e2e latency) and the kernels of its graph:
    `graphs[i]` runs `repeats[i]` times (once, or once per transformer block)."""

    name: str
    hardware: str
    measured_ms: float
    graphs: tuple[Data, ...]
    repeats: tuple[int, ...]
    diagram_hash: str = ""

    @property
    def family(self) -> str:
        """The model family: NeuSight's workload name up to its first '-' (bert_large, gpt3_xl)."""
        return self.name.split("-")[0]


def model_workloads(data: str | Path) -> list[Workload]:
    """Eager whole-model measurements whose graph is in the data, each with the kernels of its
    graph: one per compute vertex (the per-vertex kernel rows measured on that GPU name them),
    repeated `num_layer` times for vertices of the transformer block. Fused runs are left out:
    their kernels are not the graph's."""
    m = read_table("measurements", data)
    m = m[m["diagram_hash"].notna()]
    extra = m["extra_json"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
    models = m[(m["scope"] == "model") & m["runtime_ms"].notna() & ~extra.map(lambda e: bool(e.get("fusion")))]
    nodes = m[(m["scope"] == "kernel") & extra.map(lambda e: "fx_node" in e)]
    node_of = extra[nodes.index].map(lambda e: e["fx_node"])
    v = read_table("vertices", data, columns=["diagram_hash", "vertex", "kind", "module", "source"])
    vertex = {(r.diagram_hash, r.vertex): (r.kind, r.module) for r in v.itertuples()}
    subs = read_table("subdiagrams", data, columns=["subdiagram_hash", "diagram_hash", "subdiagram_json"])
    records = dict(zip(subs["subdiagram_hash"], subs["subdiagram_json"]))
    profiles = hardware_profiles(data)
    kernels: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for row, node in zip(nodes.itertuples(), node_of):
        kind, module = vertex.get((row.diagram_hash, node), ("free", ""))
        if kind != "free" and row.subdiagram_hash in records:
            kernels[(row.diagram_hash, row.hardware)].append((row.subdiagram_hash, module, row.runtime_ms))
    built: dict[str, Subdiagram] = {}
    out = []
    for row in models.itertuples():
        info = json.loads(row.extra_json)
        hw = profiles.get(row.hardware)
        here = kernels.get((row.diagram_hash, row.hardware))
        if hw is None or not here:
            continue
        layers = int(info.get("num_layer") or 1)
        graphs = []
        for h, _, ms in here:
            if h not in built:
                built[h] = Subdiagram.from_record(json.loads(records[h]))
            graphs.append(to_data(built[h], hw))
            if isinstance(ms, float) and ms > 0:  # what the kernel measured alone, for diagnosis
                graphs[-1].y = torch.tensor([math.log(ms)], dtype=torch.float32)
        out.append(Workload(info.get("workload", row.diagram_hash), row.hardware, row.runtime_ms,
                            tuple(graphs), tuple(layers if LAYER.search(mod) else 1 for _, mod, _ in here),
                            row.diagram_hash))
    return out


def workload_sums(ln_fn: Callable[[Sequence[Data]], np.ndarray],
                   workloads: Sequence[Workload]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    totals, launches, measured = [], [], []
    for w in workloads:
        ms = np.exp(ln_fn(list(w.graphs)))
        totals.append(float(np.dot(ms, w.repeats)))
        launches.append(float(sum(w.repeats)))
        measured.append(w.measured_ms)
    return np.array(totals), np.array(launches), np.array(measured)
