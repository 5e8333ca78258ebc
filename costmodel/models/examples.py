"""Kernel examples for learning: every successful kernel-scope measurement of a dataset folder
as a PyG graph (`features.to_data`) on the hardware it ran on, with its kernel config and the
label `y = ln(runtime_ms)`.

`KernelDataset` caches them processed, named by the data's fingerprint and the feature code's
hash (`features.code_hash`), so a stale cache is never read: new data or new features mean a
new file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch_geometric.data import InMemoryDataset
from tqdm import tqdm

from costmodel.data.loader import back_to_back, fingerprint, hardware_profiles
from costmodel.data.schema import DATA_DIR
from costmodel.data.shards import read_table
from costmodel.ir.diagram import Subdiagram
from costmodel.ir.plan import KernelConfig
from costmodel.models import features


class KernelDataset(InMemoryDataset):
    """(kernel graph, hardware, config, runtime) examples. `root` holds the processed cache."""

    def __init__(self, root: str | Path, *, data: str | Path = DATA_DIR, progress: bool = True,
                 transform=None) -> None:
        self.data_dir = Path(data)
        self.fp = f"{fingerprint(self.data_dir)[:16]}-{features.code_hash()}"
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
        profiles = hardware_profiles(self.data_dir)
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
        self.save(graphs, self.processed_paths[0])
