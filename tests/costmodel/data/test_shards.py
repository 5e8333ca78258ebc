"""Shards, rows and reads of the dataset tables (synthetic runtimes: these test plumbing only)."""
import pyarrow.parquet as pq
import pytest

from costmodel.data.schema import TABLES, Provenance, diagram_rows, measurement_row, subdiagram_row
from costmodel.data.shards import ShardWriter, existing_ids, read_table, table_files
from costmodel.ir.plan import KernelConfig, eager_partition

PROV = Provenance("host", "2026-11-26", "Apache-2.0")


def write_some(root, capture, n=5, error_at=None):
    d = capture("bert-base", 1, 32)
    with ShardWriter(root, source="host") as w:
        w.add_rows(diagram_rows(d, "host"))
        for i, sub in enumerate(eager_partition(d)[:n]):
            w.add("subdiagrams", subdiagram_row(sub, "host", d.hash))
            failed = i == error_at
            w.add("measurements", measurement_row(
                PROV, hardware="cpu-test", runtime_ms=None if failed else 0.1 * (i + 1),
                subdiagram_hash=sub.hash, diagram_hash=d.hash, kernel_config=KernelConfig(64, 64, 32),
                error="compile error: boom" if failed else None, key=("test", i), repeats=10))
    return d, w


def test_rows_round_trip_with_their_schema(tmp_path, capture):
    d, w = write_some(tmp_path, capture, error_at=2)
    m = read_table("measurements", tmp_path)
    assert len(m) == 5 and m["error"].notna().sum() == 1  # a failed run is a row, not a gap
    assert m.loc[m["error"].notna(), "runtime_ms"].isna().all()
    assert set(m["hardware"]) == {"cpu-test"} and set(m["source"]) == {"host"}
    assert read_table("diagrams", tmp_path)["diagram_hash"].tolist() == [d.hash]
    assert len(read_table("vertices", tmp_path)) == len(d.vertices)
    for path in w.written:
        assert pq.read_schema(path).names == TABLES[path.relative_to(tmp_path).parts[0]].names
    # Partitioned by source and hardware; every file is whole on its own.
    assert table_files("measurements", tmp_path)[0].relative_to(tmp_path).parts[:3] == \
        ("measurements", "host", "cpu-test")


def test_adding_data_adds_files_and_ids_are_stable(tmp_path, capture):
    _, first = write_some(tmp_path, capture)
    before = {p: p.stat().st_mtime_ns for p in first.written}
    _, second = write_some(tmp_path, capture)
    assert not set(first.written) & set(second.written)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing rewritten
    assert len(read_table("measurements", tmp_path)) == 5  # same ids: kept once
    assert len(read_table("measurements", tmp_path, dedupe=False)) == 10
    assert len(existing_ids(tmp_path, "host")) == 5


def test_interrupted_writer_keeps_what_it_flushed(tmp_path, capture):
    d = capture("bert-base", 1, 32)
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path, source="host") as w:
            for i, sub in enumerate(eager_partition(d)[:3]):
                w.add("measurements", measurement_row(PROV, hardware="cpu-test", runtime_ms=1.0,
                                                      subdiagram_hash=sub.hash, key=i))
            raise KeyboardInterrupt
    assert len(read_table("measurements", tmp_path)) == 3
    assert not list(tmp_path.rglob(".*.tmp"))


def test_bad_rows_are_refused(tmp_path):
    w = ShardWriter(tmp_path, source="host")
    with pytest.raises(ValueError, match="source"):
        w.add("measurements", {"source": "cuda"})
    with pytest.raises(ValueError, match="not measurement columns"):
        measurement_row(PROV, hardware="x", runtime_ms=1.0, colour="red")
    assert read_table("measurements", tmp_path).empty
