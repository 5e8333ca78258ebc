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
from costmodel.ir.diagram import Diagram, Propagator, Subdiagram, Vertex


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
    """Profiles for the hardware named in the data: the shipped profile of that name where there
    is one (`hardware_profiles/`, kept with a source for every figure), else as stored with the
    data (a host CPU); hardware with neither is left out. A stored profile is a copy taken when the
    rows were imported: a figure added or corrected since must reach training as it reaches
    prediction, or a model learns from descriptors no target is priced with."""
    known = set(list_profiles())
    out = {}
    for row in read_table("hardware", directory).itertuples():
        if row.hardware not in known and isinstance(row.profile_json, str):
            out.setdefault(row.hardware, HardwareProfile.from_dict(json.loads(row.profile_json)))
    for name in read_table("measurements", directory, columns=["hardware"])["hardware"].unique():
        if name not in out and name in known and name != "cpu":
            out[name] = load_profile(name)
    return out




def diagrams(directory: str | Path, hashes: set[str] | None = None) -> dict[str, Diagram]:
    """The diagrams stored in a folder's vertices and propagators tables (those of `hashes`,
    or all), rebuilt as Diagrams. The tables keep each vertex's bytes read in total, not per
    input: each input is taken as read whole, up to that total."""
    v = read_table("vertices", directory)
    p = read_table("propagators", directory)
    if hashes is not None:
        v, p = v[v["diagram_hash"].isin(hashes)], p[p["diagram_hash"].isin(hashes)]
    meta = read_table("diagrams", directory)
    out = {}
    for h, props in p.groupby("diagram_hash"):
        propagators = tuple(Propagator(r.propagator, tuple(int(x) for x in r.shape), r.dtype, r.role,
                                       r.producer if isinstance(r.producer, str) else None)
                            for r in props.itertuples())
        size = {q.name: q.bytes for q in propagators}
        vertices = []
        for r in v[v["diagram_hash"] == h].itertuples():
            left, read = int(r.bytes_read), []
            for name in r.inputs:
                read.append(min(size.get(name, 0), left))
                left -= read[-1]
            attrs = tuple((k, tuple(x) if isinstance(x, list) else x)
                          for k, x in json.loads(r.attrs_json)) if isinstance(r.attrs_json, str) else ()
            vertices.append(Vertex(
                name=r.vertex, kind=r.kind, op=r.op, inputs=tuple(r.inputs), outputs=tuple(r.outputs),
                input_shapes=tuple(tuple(s) for s in json.loads(r.input_shapes_json)),
                output_shapes=tuple(tuple(s) for s in json.loads(r.output_shapes_json)), dtype=r.dtype,
                flops=int(r.flops), read_bytes=tuple(read), bytes_written=int(r.bytes_written),
                module=r.module if isinstance(r.module, str) else "",
                mask_kind=r.mask_kind if isinstance(r.mask_kind, str) else None,
                mask_density=None if r.mask_density != r.mask_density else r.mask_density,
                attrs=attrs))
        row = meta[meta["diagram_hash"] == h]
        name = str(row["model"].iloc[0]) if len(row) else h
        produced = {o for x in vertices for o in x.outputs}
        outputs = tuple(q.name for q in propagators if q.name in produced
                        and not any(q.name in x.inputs for x in vertices))
        inputs = tuple(q.name for q in propagators if q.producer is None and q.role == "input")
        out[h] = Diagram(name, tuple(vertices), propagators, inputs, outputs)
    return out
