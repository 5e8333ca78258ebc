"""Parquet shards of the dataset: written atomically, read back as one table.

Adding a source or a machine adds files; nothing already written is rewritten. Every file
carries all its columns (source and hardware too), so one file read alone is whole, and pandas,
DuckDB or Spark read a table as `datasets/data/<table>/**/*.parquet`. A shard is written under
a temporary name, then renamed, so an interrupted writer leaves either a whole shard or none.
"""
from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from costmodel.data.schema import DATA_DIR, HARDWARE_TABLES, KEYS, TABLES, subdiagram_row
from costmodel.errors import unknown_choice
from costmodel.ir.diagram import Subdiagram


def safe_name(name: str) -> str:
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
            folder = self.root / table / safe_name(self.source)
            if table in HARDWARE_TABLES:
                folder = folder / safe_name(hw or "unknown")
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
        base = base / safe_name(source)
    ids: set[str] = set()
    for f in sorted(base.rglob("*.parquet")) if base.exists() else []:
        if not f.name.startswith("."):
            ids.update(pq.read_table(f, columns=["measurement_id"]).column(0).to_pylist())
    return ids


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
