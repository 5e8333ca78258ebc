"""Versioned dataset releases: `costmodel dataset release | verify | summary`.

A release is an immutable snapshot of the working data (`datasets/data/`) under
`datasets/releases/<version>/`: one Parquet file per table, source and (for measurements)
hardware, deduplicated; `manifest.json` with the row count, size and sha256 of every file, the
schema version and each table's columns, and the sources with their licences; `DATASHEET.md`
saying how each part was measured. `verify` checks all of it.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from costmodel.data.schema import (DATA_DIR, HARDWARE_TABLES, KEYS, RELEASES_DIR, SCHEMA_VERSION,
                                   TABLES, now)
from costmodel.data.shards import read_table, safe_name, write_table
from costmodel.errors import UserError

# What each source is and how it was measured (the DATASHEET's collection section).
SOURCES = {
    "neusight": {
        "origin": "github.com/sitar-lab/NeuSight", "licence": "MIT",
        "how": "Kernel micro-benchmarks (bmm, linear, softmax, layer norm, elementwise, vector ops) "
               "and per-op plus end-to-end inference latencies of whole Hugging Face models, measured "
               "by the NeuSight authors (ASPLOS'25) on A100-PCIe-40GB, V100-PCIe-32GB, T4, P4 and "
               "P100 with PyTorch 2.1, CUDA 12.1, FP32, eager mode. Each fx-graph op was timed alone."},
    "deepbench": {
        "origin": "github.com/baidu-research/DeepBench", "licence": "Apache-2.0",
        "how": "GEMM and convolution timings from Baidu's DeepBench result spreadsheets (FP32 and "
               "FP16-mixed tabs), measured by their authors with the vendor libraries."},
    "tpugraphs": {
        "origin": "github.com/google-research-datasets/tpu_graphs", "licence": "Apache-2.0",
        "how": "XLA HLO modules with measured layout and tile configurations on TPU v3, from the two "
               "protocol buffers in the TpuGraphs project's test data."},
    "host": {
        "origin": "this project (costmodel measure --target cpu)", "licence": "Apache-2.0",
        "how": "Eager kernels and inductor-compiled fused groups of the zoo models, timed on the "
               "host CPU after warm-up; median and IQR over repeats; thread count recorded."},
    "cuda": {
        "origin": "this project (costmodel measure --target cuda)", "licence": "Apache-2.0",
        "how": "Kernel configurations timed on an NVIDIA GPU with CUDA events after warm-up, inputs "
               "rotated through a set larger than L2; GPU, driver and clocks from NVML."},
}
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _schema_doc(schema: pa.Schema) -> list[list[str]]:
    # Parquet names a list's item "element", Arrow "item": the same type either way.
    return [[f.name, re.sub(r"list<\w+: ", "list<", str(f.type))] for f in schema]


def release(version: str, *, root: str | Path = DATA_DIR, out: str | Path = RELEASES_DIR) -> Path:
    """Snapshot the working data as release `version`; returns its folder. Releases are immutable:
    an existing version is refused."""
    if not _VERSION.match(version):
        raise UserError(f"release version {version!r} must be letters, digits, '.', '-' or '_'")
    dest = Path(out) / version
    if dest.exists():
        raise UserError(f"release {version} already exists at {dest}; releases are immutable, "
                        "choose a new version")
    files, sources = [], {}
    for table, schema in TABLES.items():
        frame = read_table(table, root)
        if frame.empty:
            continue
        groups = ["source", "hardware"] if table in HARDWARE_TABLES else ["source"]
        for key, part in frame.groupby(groups, dropna=False, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            rel = Path(table, *(safe_name(str(k)) for k in key), "part-0000.parquet")
            arrow = pa.Table.from_pandas(part[schema.names], schema=schema, preserve_index=False)
            path = write_table(arrow, schema, dest / rel)
            files.append({"path": rel.as_posix(), "table": table, "rows": len(part),
                          "bytes": path.stat().st_size, "sha256": sha256(path)})
        if table == "measurements":
            for (src, commit, licence), n in frame.groupby(
                    ["source", "source_commit", "licence"], dropna=False).size().items():
                entry = sources.setdefault(src, {**SOURCES.get(src, {}), "commits": [], "rows": 0})
                entry["commits"].append(commit)
                entry["licence"] = licence
                entry["rows"] += int(n)
    if not files:
        raise UserError(f"no data under {root} to release; import or measure first")
    manifest = {
        "version": version, "schema_version": SCHEMA_VERSION, "created": now(),
        "tables": {t: {"rows": sum(f["rows"] for f in files if f["table"] == t),
                       "columns": _schema_doc(TABLES[t])} for t in TABLES},
        "files": files, "sources": sources,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (dest / "DATASHEET.md").write_text(datasheet(manifest, summary(dest)))
    return dest


def verify(directory: str | Path) -> list[str]:
    """Problems found in a release folder (empty when it is whole): every listed file present,
    inside the folder, listed once, with its checksum, row count and schema; no file the
    manifest does not list; the manifest's totals, columns, sources and licences agreeing with
    the files; and the datasheet as the release wrote it."""
    d = Path(directory)
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing; not a release folder"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, list):
            raise TypeError("'files' is not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        return [f"{manifest_path}: unreadable manifest ({e})"]
    problems = []
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, "
                        f"this feyntune reads {SCHEMA_VERSION!r}")
    root = d.resolve()
    listed: set[Path] = set()
    rows: Counter = Counter()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not {"path", "table", "rows", "sha256"} <= set(entry):
            problems.append(f"manifest entry {i}: needs path, table, rows and sha256; has "
                            f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
            continue
        path = (d / str(entry["path"])).resolve()
        if root not in path.parents:
            problems.append(f"{entry['path']}: outside the release folder")
            continue
        if path in listed:
            problems.append(f"{entry['path']}: listed twice in the manifest")
            continue
        listed.add(path)
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
            continue
        if sha256(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest (file changed or corrupt)")
            continue
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception as e:  # a corrupt footer raises several pyarrow error types
            problems.append(f"{entry['path']}: not readable as Parquet ({e})")
            continue
        expected = TABLES.get(entry["table"])
        if expected is None or _schema_doc(schema) != _schema_doc(expected):
            problems.append(f"{entry['path']}: columns differ from the {entry['table']} schema")
        if meta.num_rows != entry["rows"]:
            problems.append(f"{entry['path']}: {meta.num_rows} rows, manifest says {entry['rows']}")
        rows[entry["table"]] += meta.num_rows
    for path in sorted(p for p in d.rglob("*") if p.is_file()):
        if path.resolve() not in listed and path.name not in ("manifest.json", "DATASHEET.md"):
            problems.append(f"{path.relative_to(d)}: not in the manifest")
    if problems:  # totals only mean something over files that all read
        return problems
    tables = manifest.get("tables") if isinstance(manifest.get("tables"), dict) else {}
    for table, schema in TABLES.items():
        info = tables.get(table)
        if not isinstance(info, dict):
            problems.append(f"manifest: no entry for table {table!r}")
            continue
        if info.get("rows") != rows[table]:
            problems.append(f"manifest: table {table} says {info.get('rows')} rows, its files hold {rows[table]}")
        if info.get("columns") != _schema_doc(schema):
            problems.append(f"manifest: the columns listed for {table} are not its schema's")
    if problems:
        return problems
    problems += _check_sources(d, manifest)
    sheet = d / "DATASHEET.md"
    if not sheet.is_file():
        problems.append("DATASHEET.md: missing")
    elif sheet.read_text() != datasheet(manifest, summary(d)):
        problems.append("DATASHEET.md: differs from the datasheet of this manifest and data (edited)")
    return problems


def _check_sources(d: Path, manifest: dict) -> list[str]:
    """The manifest's sources against the measurements: rows and licences per source."""
    m = read_table("measurements", d, columns=["measurement_id", "source", "licence"])
    sources = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
    problems = []
    for src, part in m.groupby("source"):
        info = sources.get(src)
        if not isinstance(info, dict):
            problems.append(f"manifest: source {src!r} of {len(part)} rows is not listed")
            continue
        if info.get("rows") != len(part):
            problems.append(f"manifest: source {src} says {info.get('rows')} rows, the data holds {len(part)}")
        licences = set(part["licence"].dropna())
        if licences and info.get("licence") not in licences:
            problems.append(f"manifest: source {src} says licence {info.get('licence')!r}, its rows "
                            f"say {', '.join(sorted(licences))}")
    for src in set(sources) - set(m["source"]):
        problems.append(f"manifest: source {src!r} has no rows in the data")
    return problems


def summary(directory: str | Path = DATA_DIR) -> dict:
    """Row counts per table, and measurements by hardware and by source (ok and failed)."""
    out: dict = {"tables": {}}
    for table in TABLES:
        out["tables"][table] = len(read_table(table, directory, columns=list(KEYS[table])))
    m = read_table("measurements", directory,
                   columns=["measurement_id", "hardware", "source", "scope", "error"])
    out["measurements"] = {
        "by_hardware": dict(sorted(Counter(m["hardware"]).items())),
        "by_source": dict(sorted(Counter(m["source"]).items())),
        "by_source_and_hardware": {f"{s}/{h}": n for (s, h), n in
                                   sorted(Counter(zip(m["source"], m["hardware"])).items())},
        "by_scope": dict(sorted(Counter(m["scope"]).items())),
        "failed": int(m["error"].notna().sum()),
    }
    return out


def datasheet(manifest: dict, counts: dict) -> str:
    """DATASHEET.md for a release: what is in it, where it comes from, how it was measured."""
    lines = [f"# feyntune measured-runtime dataset, release {manifest['version']}", "",
             f"Schema version {manifest['schema_version']}; created {manifest['created']}. "
             "Columns of each table are listed in manifest.json and explained in datasets/README.md.",
             "", "## Contents", "", "| table | rows |", "|---|---:|"]
    lines += [f"| {t} | {info['rows']} |" for t, info in manifest["tables"].items()]
    lines += ["", "Measurements by source and hardware (failed runs are rows with an `error`: "
              f"{counts['measurements']['failed']} here):", "", "| source / hardware | rows |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in counts["measurements"]["by_source_and_hardware"].items()]
    lines += ["", "## Sources, licences and how each part was measured", ""]
    for src, info in manifest["sources"].items():
        commits = ", ".join(sorted({str(c) for c in info.get("commits", [])}))
        lines += [f"### {src}", "", f"- origin: {info.get('origin', 'unknown')}",
                  f"- licence: {info.get('licence')}", f"- commit or date: {commits}",
                  f"- rows: {info['rows']}", "", info.get("how", "(no description)"), ""]
    lines += ["## Loading", "", "```python", "import pandas as pd",
              f"m = pd.read_parquet('datasets/releases/{manifest['version']}/measurements')", "```", "",
              "```sql", f"SELECT hardware, count(*) FROM read_parquet("
              f"'datasets/releases/{manifest['version']}/measurements/**/*.parquet') GROUP BY 1;",
              "```", "",
              "Labels are measured runtimes only: analytical figures (FLOPs, bytes, roofline) are "
              "features, never labels.", ""]
    return "\n".join(lines)
