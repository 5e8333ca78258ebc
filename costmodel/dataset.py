"""The measured-runtime dataset: tables, Parquet shards, and how rows are made.

Layout (schema in `datasets/README.md`): `datasets/data/<table>/<source>/<hardware>/<shard>.parquet`
for hardware-bound tables (measurements) and `datasets/data/<table>/<source>/<shard>.parquet` for
the rest. Adding a source or a machine adds files; nothing already written is rewritten. Every
file carries all its columns (source and hardware too), so one file read alone is whole, and
pandas, DuckDB or Spark read a table as `datasets/data/<table>/**/*.parquet`.

Shards are written atomically (a temporary file, then a rename), so an interrupted writer leaves
either a whole shard or none.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from costmodel.diagram import Diagram, Subdiagram
from costmodel.errors import unknown_choice
from costmodel.hardware import load_profile
from costmodel.plan import KernelConfig

SCHEMA_VERSION = "1.0"
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
DATA_DIR = DATASETS_DIR / "data"
RELEASES_DIR = DATASETS_DIR / "releases"

_json = pa.string()  # JSON text: nested values that differ per row
TABLES: dict[str, pa.Schema] = {
    "hardware": pa.schema([
        ("hardware", pa.string()), ("kind", pa.string()), ("display_name", pa.string()),
        ("descriptor_json", _json), ("profile_json", _json), ("source", pa.string()),
    ]),
    "diagrams": pa.schema([
        ("diagram_hash", pa.string()), ("model", pa.string()), ("source", pa.string()),
        ("batch", pa.int64()), ("seq", pa.int64()), ("dtype", pa.string()),
        ("config_json", _json), ("n_vertices", pa.int64()), ("flops", pa.int64()),
    ]),
    "vertices": pa.schema([
        ("diagram_hash", pa.string()), ("source", pa.string()), ("vertex", pa.string()),
        ("kind", pa.string()), ("op", pa.string()), ("dtype", pa.string()),
        ("flops", pa.int64()), ("bytes_read", pa.int64()), ("bytes_written", pa.int64()),
        ("inputs", pa.list_(pa.string())), ("outputs", pa.list_(pa.string())),
        ("input_shapes_json", _json), ("output_shapes_json", _json), ("module", pa.string()),
        ("mask_kind", pa.string()), ("mask_density", pa.float64()), ("attrs_json", _json),
    ]),
    "propagators": pa.schema([
        ("diagram_hash", pa.string()), ("source", pa.string()), ("propagator", pa.string()),
        ("shape", pa.list_(pa.int64())), ("dtype", pa.string()), ("role", pa.string()),
        ("producer", pa.string()), ("bytes", pa.int64()),
    ]),
    "subdiagrams": pa.schema([
        ("subdiagram_hash", pa.string()), ("diagram_hash", pa.string()), ("source", pa.string()),
        ("vertices", pa.list_(pa.string())), ("kinds", pa.list_(pa.string())),
        ("flops", pa.int64()), ("bytes_read", pa.int64()), ("bytes_written", pa.int64()),
        ("subdiagram_json", _json),
    ]),
    "measurements": pa.schema([
        ("measurement_id", pa.string()),
        ("scope", pa.string()),  # "kernel" (a subdiagram), "model" (a whole diagram), "config"
        ("subdiagram_hash", pa.string()), ("diagram_hash", pa.string()),
        ("hardware", pa.string()), ("kernel_config_json", _json), ("kernel_name", pa.string()),
        ("runtime_ms", pa.float64()),  # median; null when the run failed
        ("runtime_iqr_ms", pa.float64()), ("runtime_min_ms", pa.float64()),
        ("runtime_max_ms", pa.float64()), ("repeats", pa.int64()),
        ("framework", pa.string()), ("framework_version", pa.string()),
        ("driver_version", pa.string()), ("cuda_version", pa.string()),
        ("clocks_json", _json), ("threads", pa.int64()), ("timestamp", pa.string()),
        ("source", pa.string()), ("source_commit", pa.string()), ("licence", pa.string()),
        ("error", pa.string()), ("extra_json", _json),
    ]),
}
HARDWARE_TABLES = ("measurements",)
KEYS = {"hardware": ("hardware", "source"), "diagrams": ("diagram_hash", "source"),
        "vertices": ("diagram_hash", "vertex", "source"),
        "propagators": ("diagram_hash", "propagator", "source"),
        "subdiagrams": ("subdiagram_hash", "diagram_hash", "source"),
        "measurements": ("measurement_id",)}


@dataclass(frozen=True)
class Provenance:
    """Where rows come from: the project or machine, its commit or date, and its licence."""

    source: str  # "neusight", "deepbench", "tpugraphs", "host", "cuda"
    source_commit: str  # a commit hash, or a date for our own measurements
    licence: str  # SPDX identifier, e.g. "MIT", "Apache-2.0"
    origin: str = ""  # e.g. "github.com/sitar-lab/NeuSight", or a machine description


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def config_json(config: KernelConfig | dict | None) -> str | None:
    """The canonical JSON of a kernel config (None stays None: the library's own choice)."""
    if config is None:
        return None
    return dumps(config if isinstance(config, dict) else vars(config))


def measurement_id(*parts: Any) -> str:
    """A stable id from what identifies a measurement (what ran, where, how, which row)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=16).hexdigest()


def diagram_rows(diagram: Diagram, source: str, config: dict | None = None) -> dict[str, list[dict]]:
    """Rows of the diagrams, vertices and propagators tables for one diagram."""
    h = diagram.hash
    meta = dict(diagram.meta)
    return {
        "diagrams": [{"diagram_hash": h, "model": diagram.name, "source": source,
                      "batch": meta.get("batch"), "seq": meta.get("seq"), "dtype": meta.get("dtype"),
                      "config_json": dumps({**{k: v for k, v in meta.items()
                                               if isinstance(v, (int, float, str, bool, list, tuple))},
                                            **(config or {})}),
                      "n_vertices": len(diagram.vertices), "flops": diagram.flops}],
        "vertices": [{"diagram_hash": h, "source": source, "vertex": v.name, "kind": v.kind,
                      "op": v.op, "dtype": v.dtype, "flops": v.flops, "bytes_read": v.bytes_read,
                      "bytes_written": v.bytes_written, "inputs": list(v.inputs),
                      "outputs": list(v.outputs), "input_shapes_json": dumps(v.input_shapes),
                      "output_shapes_json": dumps(v.output_shapes), "module": v.module,
                      "mask_kind": v.mask_kind, "mask_density": v.mask_density,
                      "attrs_json": dumps([[k, a] for k, a in v.attrs]) if v.attrs else None}
                     for v in diagram.vertices],
        "propagators": [{"diagram_hash": h, "source": source, "propagator": p.name,
                         "shape": list(p.shape), "dtype": p.dtype, "role": p.role,
                         "producer": p.producer, "bytes": p.bytes} for p in diagram.propagators],
    }


def subdiagram_row(sub: Subdiagram, source: str, diagram_hash: str | None = None) -> dict:
    return {"subdiagram_hash": sub.hash, "diagram_hash": diagram_hash, "source": source,
            "vertices": [v.name for v in sub.vertices], "kinds": list(sub.kinds),
            "flops": sub.flops, "bytes_read": sub.bytes_read, "bytes_written": sub.bytes_written,
            "subdiagram_json": dumps(sub.to_record())}


def measurement_row(prov: Provenance, *, hardware: str, runtime_ms: float | None,
                    scope: str = "kernel", subdiagram_hash: str | None = None,
                    diagram_hash: str | None = None, kernel_config: Any = None,
                    error: str | None = None, key: Any = None, **fields: Any) -> dict:
    """One measurements row. `key` is what makes the row unique within its source (a file and
    line, or the software and machine it ran on); the id hashes it with what ran and where."""
    unknown = set(fields) - set(TABLES["measurements"].names)
    if unknown:
        raise ValueError(f"not measurement columns: {sorted(unknown)}")
    cfg = config_json(kernel_config)
    row = {name: None for name in TABLES["measurements"].names}
    row.update(fields)
    row.update(
        measurement_id=measurement_id(prov.source, hardware, scope, subdiagram_hash, diagram_hash,
                                      cfg, key),
        scope=scope, subdiagram_hash=subdiagram_hash, diagram_hash=diagram_hash,
        hardware=hardware, kernel_config_json=cfg, runtime_ms=runtime_ms, error=error,
        source=prov.source, source_commit=prov.source_commit, licence=prov.licence,
        timestamp=fields.get("timestamp") or now(),
    )
    return row


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "unknown"


class ShardWriter:
    """Buffers rows per table and writes each buffer as one new Parquet shard, atomically.

    Rows of a table must all have the same `source`; measurements are split by `hardware`.
    `flush` writes what is buffered; use it as a context manager to flush on exit (an exception
    still flushes the rows gathered so far: nothing measured is lost).
    """

    def __init__(self, root: str | Path = DATA_DIR, *, source: str, shard: str | None = None) -> None:
        self.root = Path(root)
        self.source = source
        self.shard = shard or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self._rows: dict[tuple[str, str | None], list[dict]] = {}
        self._count = 0
        self.written: list[Path] = []

    def add(self, table: str, row: dict) -> None:
        if table not in TABLES:
            raise unknown_choice("table", table, TABLES)
        if row.get("source", self.source) != self.source:
            raise ValueError(f"row of source {row.get('source')!r} given to a {self.source!r} writer")
        hw = row.get("hardware") if table in HARDWARE_TABLES else None
        self._rows.setdefault((table, hw), []).append(row)

    def add_rows(self, rows: dict[str, list[dict]]) -> None:
        for table, items in rows.items():
            for row in items:
                self.add(table, row)

    def flush(self) -> list[Path]:
        """Write every buffered table as a new shard; returns the paths written."""
        out = []
        for (table, hw), rows in self._rows.items():
            if not rows:
                continue
            folder = self.root / table / _safe(self.source)
            if table in HARDWARE_TABLES:
                folder = folder / _safe(hw or "unknown")
            self._count += 1
            out.append(write_table(rows, TABLES[table], folder / f"{self.shard}-{self._count:04d}.parquet"))
        self._rows.clear()
        self.written.extend(out)
        return out

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def write_table(rows: list[dict] | pa.Table, schema: pa.Schema, path: Path) -> Path:
    """Write rows (dicts, or an Arrow table) as one Parquet file, atomically: a temporary name,
    then a rename."""
    table = rows.cast(schema) if isinstance(rows, pa.Table) else \
        pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def table_files(table: str, root: str | Path = DATA_DIR) -> list[Path]:
    if table not in TABLES:
        raise unknown_choice("table", table, TABLES)
    return sorted(p for p in (Path(root) / table).rglob("*.parquet") if not p.name.startswith("."))


def read_table(table: str, root: str | Path = DATA_DIR, *, columns: list[str] | None = None,
               dedupe: bool = True):
    """One table as a pandas DataFrame (empty with the right columns when there are no shards).
    Rows repeated across shards (same key) are kept once."""
    files = table_files(table, root)
    schema = TABLES[table]
    if not files:
        return schema.empty_table().to_pandas()[columns or schema.names]
    frame = pa.concat_tables(pq.read_table(f, schema=schema, columns=columns) for f in files).to_pandas()
    if dedupe and (columns is None or set(KEYS[table]) <= set(columns)):
        frame = frame.drop_duplicates(subset=list(KEYS[table]), keep="first", ignore_index=True)
    return frame


def iter_rows(table: str, root: str | Path = DATA_DIR) -> Iterator[dict]:
    for f in table_files(table, root):
        yield from pq.read_table(f, schema=TABLES[table]).to_pylist()


def existing_ids(root: str | Path = DATA_DIR, source: str | None = None) -> set[str]:
    """Measurement ids already written (of one source, or all)."""
    base = Path(root) / "measurements"
    if source:
        base = base / _safe(source)
    ids: set[str] = set()
    for f in sorted(base.rglob("*.parquet")) if base.exists() else []:
        if not f.name.startswith("."):
            ids.update(pq.read_table(f, columns=["measurement_id"]).column(0).to_pylist())
    return ids


def hardware_row(name: str, source: str, *, profiled: bool, kind: str = "gpu",
                 display_name: str | None = None) -> dict:
    """A hardware table row: the profile's descriptors when `name` is a profile, else only the
    name and kind (the dataset keeps machines no profile describes)."""
    if not profiled:
        return {"hardware": name, "kind": kind, "display_name": display_name or name,
                "descriptor_json": None, "profile_json": None, "source": source}
    profile = load_profile(name)
    return {"hardware": name, "kind": profile.kind, "display_name": profile.display_name,
            "descriptor_json": dumps(profile.descriptor()),
            "profile_json": dumps(profile.to_dict()), "source": source}


class RowSink:
    """The rows of one import: one ShardWriter, rows counted per table, each subdiagram row
    written once, and a flush every `flush_every` measurements so memory stays bounded."""

    def __init__(self, writer: ShardWriter, *, flush_every: int = 50_000) -> None:
        self.writer = writer
        self.counts: Counter[str] = Counter()
        self._subdiagrams: set[tuple[str, str | None]] = set()
        self._flush_every = flush_every
        self._pending = 0

    def add(self, table: str, row: dict) -> None:
        self.writer.add(table, row)
        self.counts[table] += 1
        if table == "measurements":
            self._pending += 1
            if self._pending >= self._flush_every:
                self.writer.flush()
                self._pending = 0

    def subdiagram(self, sub: Subdiagram, source: str, diagram_hash: str | None = None) -> str:
        key = (sub.hash, diagram_hash)
        if key not in self._subdiagrams:
            self._subdiagrams.add(key)
            self.add("subdiagrams", subdiagram_row(sub, source, diagram_hash))
        return sub.hash
