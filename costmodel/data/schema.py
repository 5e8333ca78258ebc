"""The measured-runtime dataset's schema: its tables and keys, where it lives, provenance, and
how a row of each table is made (every writer of rows builds them here).

Layout (schema in `datasets/README.md`): `datasets/data/<table>/<source>/<hardware>/<shard>.parquet`
for hardware-bound tables (measurements) and `datasets/data/<table>/<source>/<shard>.parquet` for
the rest (`costmodel.data.shards` reads and writes them).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from costmodel.hardware import load_profile
from costmodel.ir.diagram import Diagram, Subdiagram
from costmodel.ir.plan import KernelConfig

SCHEMA_VERSION = "1.0"
DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"
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
    return dumps(config if isinstance(config, dict) else config.to_dict())


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
