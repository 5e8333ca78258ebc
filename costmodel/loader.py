"""Load the dataset for training: pandas frames, and a PyG dataset of kernel examples.

`KernelDataset` turns every successful kernel-scope measurement into one example: the kernel's
graph (`costmodel.features.to_data`) on the hardware it ran on, with its kernel config, and the
label `y = ln(runtime_ms)`. Its processed cache is named by a fingerprint of the data it was
built from (a release's manifest, or the working shards' names, sizes and times) and of the
feature layout, so a stale cache is never read: new data or new features mean a new file.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import torch
from torch_geometric.data import InMemoryDataset
from tqdm import tqdm

from costmodel import features
from costmodel.dataset import DATA_DIR, TABLES, read_table, table_files
from costmodel.diagram import Subdiagram
from costmodel.hardware import HardwareProfile, list_profiles, load_profile
from costmodel.plan import KernelConfig


def _code_version() -> str:
    """The code that builds an example (this loader, the features and the roofline terms they
    carry): editing it changes what a cached graph would hold, so it changes the cache's name."""
    import inspect
    import sys

    from costmodel import cost

    source = inspect.getsource(features) + inspect.getsource(cost) + inspect.getsource(sys.modules[__name__])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


FEATURES_VERSION = f"1:{features.NODE_DIM}:{features.EDGE_DIM}:{features.CONFIG_DIM}:{_code_version()}"


def load_frames(directory: str | Path = DATA_DIR) -> dict[str, pd.DataFrame]:
    """Every table of a release folder or of the working data, as pandas frames."""
    return {table: read_table(table, directory) for table in TABLES}


def fingerprint(directory: str | Path = DATA_DIR) -> str:
    """Changes whenever the data or the feature layout changes."""
    d = Path(directory)
    h = hashlib.sha256(FEATURES_VERSION.encode())
    manifest = d / "manifest.json"
    if manifest.is_file():
        h.update(manifest.read_bytes())
    else:
        for table in TABLES:
            for f in table_files(table, d):
                st = f.stat()
                h.update(f"{f.relative_to(d)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def kernel_config(text: str | None) -> KernelConfig | None:
    """A tile config from its JSON (other keys, such as the compiler, ignored), or None for
    configs that are not tiles (the library's own kernel, fused flags)."""
    if not isinstance(text, str) or not text:  # pandas reads a null string as NaN
        return None
    fields = json.loads(text)
    try:
        return KernelConfig(**{k: v for k, v in fields.items() if k in KernelConfig.__dataclass_fields__})
    except TypeError:
        return None


def back_to_back(text: str | None, sub: Subdiagram) -> bool:
    """A row timing a group's ops run eagerly one after another (the baseline a fused kernel is
    measured against): several kernels, not one, so not a kernel example."""
    if not isinstance(text, str) or not text:
        return False
    return json.loads(text).get("fused") is False and sum(not v.is_free for v in sub.vertices) > 1


def hardware_profiles(directory: str | Path = DATA_DIR) -> dict[str, HardwareProfile]:
    """Profiles for the hardware named in the data: as stored with it (e.g. a host CPU), else the
    shipped profile of that name; hardware with neither is left out."""
    out = {}
    for row in read_table("hardware", directory).itertuples():
        if isinstance(row.profile_json, str):
            out.setdefault(row.hardware, HardwareProfile.from_dict(json.loads(row.profile_json)))
    known = set(list_profiles())
    for name in read_table("measurements", directory, columns=["hardware"])["hardware"].unique():
        if name not in out and name in known and name != "cpu":
            out[name] = load_profile(name)
    return out


class KernelDataset(InMemoryDataset):
    """(kernel graph, hardware, config, runtime) examples. `root` holds the processed cache."""

    def __init__(self, root: str | Path, *, data: str | Path = DATA_DIR, progress: bool = True,
                 transform=None) -> None:
        self.data_dir = Path(data)
        self.fp = fingerprint(self.data_dir)
        self.progress = progress
        self.skipped: dict[str, int] = {}
        super().__init__(str(root), transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> list[str]:
        return [f"kernels-{self.fp[:16]}.pt"]

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
                data = features.to_data(sub, hw, kernel_config(row.kernel_config_json))
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
