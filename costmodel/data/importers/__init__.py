"""Importers of public measured-runtime data into the dataset (`costmodel dataset import`).

Each importer is a function `run(path, *, root) -> dict[str, int]` (rows written per table) in
its own module, loaded only when asked for.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

from costmodel.errors import UserError, unknown_choice
from costmodel.hardware import profile_for_device_name

IMPORTERS = {
    "neusight": "costmodel.data.importers.neusight",
    "deepbench": "costmodel.data.importers.deepbench",
    "tpugraphs": "costmodel.data.importers.tpugraphs",
}


def importer(source: str) -> Callable[..., dict[str, int]]:
    if source not in IMPORTERS:
        raise unknown_choice("source", source, IMPORTERS)
    return importlib.import_module(IMPORTERS[source]).run


def run_import(source: str, path: str | Path, *, root: str | Path) -> dict[str, int]:
    """Import `path` with the importer of `source`; rows written per table."""
    run = importer(source)
    if not Path(path).exists():
        raise UserError(f"{source} data not found at {str(path)!r}")
    return run(Path(path), root=Path(root))


def hardware_name(device: str) -> tuple[str, bool]:
    """(dataset hardware name, whether it is a profile) of a device name as torch prints it."""
    profile = profile_for_device_name(device)
    if profile:
        return profile, True
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-"), False
