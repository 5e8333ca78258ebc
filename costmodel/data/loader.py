"""Read the dataset back: every table as pandas frames, a fingerprint of what a folder holds,
the hardware profiles its rows name, and how to read a recorded kernel config. The learning
side (`costmodel.models.examples`) turns these into kernel graphs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from costmodel.data.schema import DATA_DIR, TABLES
from costmodel.data.shards import read_table, table_files
from costmodel.hardware import HardwareProfile, list_profiles, load_profile
from costmodel.ir.diagram import Subdiagram


def load_frames(directory: str | Path = DATA_DIR) -> dict[str, pd.DataFrame]:
    """Every table of a release folder or of the working data, as pandas frames."""
    return {table: read_table(table, directory) for table in TABLES}


def fingerprint(directory: str | Path = DATA_DIR) -> str:
    """Changes whenever the data changes: a release's manifest, or the working shards' names,
    sizes and times."""
    d = Path(directory)
    h = hashlib.sha256()
    manifest = d / "manifest.json"
    if manifest.is_file():
        h.update(manifest.read_bytes())
    else:
        for table in TABLES:
            for f in table_files(table, d):
                st = f.stat()
                h.update(f"{f.relative_to(d)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


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


