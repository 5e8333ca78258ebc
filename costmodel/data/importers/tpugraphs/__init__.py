"""Import TpuGraphs: XLA graphs with runtimes measured on TPU v3, per compiler configuration.

Source: google-research-datasets/tpu_graphs (Apache-2.0); Phothilimthana et al., "TpuGraphs: A
Performance Prediction Dataset on Large Tensor Computational Graphs", NeurIPS 2023 Datasets and
Benchmarks (arXiv:2308.13490). Two input forms, one module each:

- `proto`: serialized protocol buffers of tpu_graphs' `proto/tuning.proto` (`.pb`), op tuning
  (tile sizes per fused kernel) or a whole program's layouts;
- `npz`: the public release's `.npz` files, tile and layout collections;
- `xla`: what both share (opcodes to diagram kinds, element types, the rows of one graph).

This module finds the files, names their provenance and writes the rows.

Each HLO module or npz graph becomes one `Diagram`; each measured configuration one
"config"-scope measurement on "tpu-v3". Runtimes are nanoseconds in both forms
(`xla.ExecutionProfile.compute_time_ns`; the npz `config_runtime`), stored as milliseconds.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from costmodel.data.importers.tpugraphs.npz import npz_graphs
from costmodel.data.importers.tpugraphs.proto import proto_graphs
from costmodel.data.importers.tpugraphs.xla import HARDWARE, LICENCE, ORIGIN, SOURCE
from costmodel.data.schema import TABLES, Provenance, diagram_rows, dumps
from costmodel.data.shards import ShardWriter, existing_ids, read_table
from costmodel.errors import UserError
from costmodel.hardware import load_profile


def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in (".pb", ".npz"):
            raise UserError(f"{path}: expected a TpuGraphs .pb or .npz file")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".pb", ".npz") and p.is_file())
    if not files:
        raise UserError(f"no TpuGraphs .pb or .npz files under {path}")
    return files


def _file_key(file: Path) -> str:
    """How a file is named in measurement keys: its path below the release's `npz/` folder
    (collection/split/name), else its name; independent of where the data lives."""
    parts = file.parts
    if "npz" in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index("npz")
        return "/".join(parts[last + 1:])
    return file.name


def _provenance(file: Path, top: Path) -> Provenance:
    """The tpu_graphs commit from a SOURCE_COMMIT.txt beside the file (or in a folder above it,
    up to the imported folder `top`); the release version "v0" for npz files without one; else
    "unknown"."""
    for folder in (file.parent, *file.parent.parents):
        marker = folder / "SOURCE_COMMIT.txt"
        if marker.is_file():
            return Provenance(SOURCE, marker.read_text().split()[0], LICENCE, ORIGIN)
        if folder == top:
            break
    return Provenance(SOURCE, "v0" if file.suffix == ".npz" else "unknown", LICENCE, ORIGIN)


def hardware_row() -> dict:
    """The hardware-table row of TPU v3, from `hardware_profiles/tpu-v3.toml`."""
    profile = load_profile(HARDWARE)
    return {"hardware": HARDWARE, "kind": profile.kind, "display_name": profile.display_name,
            "descriptor_json": dumps(profile.descriptor()), "profile_json": dumps(profile.to_dict()),
            "source": SOURCE}


def run(path: Path, *, root: Path, progress: bool | None = None) -> dict[str, int]:
    """Import TpuGraphs `.pb` and `.npz` files (one file, or a folder searched recursively) into
    the dataset under `root`; returns the rows written per table. Rows already in `root` (the
    same measurement id, or the same diagram) are not written again, so a re-import adds
    nothing. `progress`: a progress bar on stderr (default: for more than 10 files or 50 MB)."""
    path, root = Path(path), Path(root)
    files = _files(path)
    top = path if path.is_dir() else path.parent
    show = progress if progress is not None else (
        len(files) > 10 or sum(f.stat().st_size for f in files) > 50 * 2**20)
    seen_ids = existing_ids(root, SOURCE)
    known = read_table("diagrams", root, columns=["diagram_hash", "source"])
    seen_diagrams = set(known.loc[known["source"] == SOURCE, "diagram_hash"])
    hardware = read_table("hardware", root, columns=["hardware", "source"])
    counts: Counter = Counter()
    writer = ShardWriter(root, source=SOURCE)
    if not ((hardware["hardware"] == HARDWARE) & (hardware["source"] == SOURCE)).any():
        writer.add("hardware", hardware_row())
        counts["hardware"] += 1
    pending = 0
    for file in tqdm(files, desc="tpugraphs", unit="file", disable=not show, file=sys.stderr):
        key, prov = _file_key(file), _provenance(file, top)
        graphs = proto_graphs(file, key, prov) if file.suffix == ".pb" else \
            npz_graphs(file, key, prov, show)
        for graph in graphs:
            if graph.diagram.hash not in seen_diagrams:
                seen_diagrams.add(graph.diagram.hash)
                for table, rows in diagram_rows(graph.diagram, SOURCE, graph.config).items():
                    for row in rows:
                        writer.add(table, row)
                    counts[table] += len(rows)
            for row in graph.measurements:
                if row["measurement_id"] not in seen_ids:
                    seen_ids.add(row["measurement_id"])
                    writer.add("measurements", row)
                    counts["measurements"] += 1
                    pending += 1
            if pending > 50_000:  # bound memory on the full release's large layout files
                writer.flush()
                pending = 0
        writer.flush()  # one file's rows at a time: an interrupted import keeps whole files
    return {table: counts.get(table, 0) for table in TABLES if table != "subdiagrams"}
