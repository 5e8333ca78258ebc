"""Cost models by name: "roofline", the shipped "gnn", "gbdt" and "hybrid" checkpoints, or a
saved file.

The shipped checkpoints live in `CHECKPOINTS`; its `DEFAULT` file names the one each learned
kind loads, a line "KIND FILE" per kind (`costmodel train --make-default` writes it; an older
pointer holding a bare file name names the GNN's).
"""
from __future__ import annotations

import json
from pathlib import Path

from costmodel.errors import UserError, unknown_choice
from costmodel.models.base import CostModel

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_POINTER = "DEFAULT"
LEARNED = ("gnn", "gbdt", "hybrid")  # kinds with a shipped checkpoint
COST_MODELS = ("gnn", "gbdt", "hybrid", "roofline")  # the names `load_cost_model` takes, besides a file
# What `predict`, `serve`, `autotune` and the Python API price with unless told otherwise: the
# model that predicts unseen GPUs best by leave one GPU out (README, "Unseen hardware"). Today the
# GBDT: the GNN loses to it on most folds, and a model that loses to its baseline is no default.
DEFAULT_COST_MODEL = "gbdt"


def _class(kind: str) -> type[CostModel]:
    """One kind's class (`COST_MODELS`), imported alone: the learned ones bring torch_geometric,
    seconds of import that a roofline does not need."""
    if kind == "roofline":
        from costmodel.models.roofline import Roofline

        return Roofline
    if kind == "gbdt":
        from costmodel.models.gbdt import GBDTCostModel

        return GBDTCostModel
    if kind == "hybrid":
        from costmodel.models.hybrid import HybridCostModel

        return HybridCostModel
    if kind == "gnn":
        from costmodel.models.gnn import GNNCostModel

        return GNNCostModel
    raise ValueError(f"unknown cost model kind {kind!r}; valid: {', '.join(COST_MODELS)}")


def defaults(folder: Path = CHECKPOINTS) -> dict[str, str]:
    """Kind -> checkpoint file name, as the folder's DEFAULT pointer lists them."""
    pointer = folder / DEFAULT_POINTER
    out: dict[str, str] = {}
    if pointer.is_file():
        for line in pointer.read_text().splitlines():
            parts = line.split()
            if len(parts) == 1:
                out.setdefault("gnn", parts[0])
            elif len(parts) == 2 and parts[0] in LEARNED:
                out[parts[0]] = parts[1]
    return out


def set_default(kind: str, path: Path) -> None:
    """Make `path` (a checkpoint in its folder) the one `kind` loads."""
    names = {**defaults(path.parent), kind: path.name}
    (path.parent / DEFAULT_POINTER).write_text("".join(f"{k} {names[k]}\n" for k in LEARNED if k in names))


def default_checkpoint(kind: str = "gnn") -> Path:
    """The shipped checkpoint of a learned `kind` ("gnn" or "gbdt")."""
    name = defaults().get(kind)
    path = CHECKPOINTS / name if name else None
    if path is None or not path.is_file():
        raise UserError(f"no shipped {kind} checkpoint in costmodel/models/checkpoints; train one "
                        f"with `costmodel train --model {kind} --make-default`, or use "
                        "--cost-model roofline")
    return path


def load_cost_model(spec: str | CostModel = DEFAULT_COST_MODEL, *, calibration: str | Path | None = None) -> CostModel:
    """A cost model from a name (`COST_MODELS`: a learned kind loads its shipped checkpoint), a
    saved file (a roofline's JSON, a learned model's checkpoint), or an instance; with a
    `calibration` file (`costmodel calibrate`), calibrated on its target (`calibration.Calibrated`)."""
    model = _load(spec)
    if calibration is None:
        return model
    from costmodel.models.calibration import Calibrated, Calibration

    return Calibrated(model, Calibration.load(calibration))


def _load(spec: str | CostModel) -> CostModel:
    if isinstance(spec, CostModel):
        return spec
    if spec == "roofline":
        return _class("roofline")()
    if spec in LEARNED:
        return _identified(_class(spec).load(default_checkpoint(spec)), default_checkpoint(spec))
    path = Path(spec)
    if not path.is_file():
        raise unknown_choice("cost model", spec, [*COST_MODELS, "PATH (a saved model file)"])
    try:
        kind = json.loads(path.read_text()).get("cost_model")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        kind = None
    if kind == "roofline":
        return _class("roofline").load(path)
    import torch

    try:
        doc = torch.load(path, weights_only=True, map_location="cpu")
        kind = doc.get("cost_model", "gnn") if isinstance(doc, dict) else None
    except Exception as e:  # torch.load raises many types for a file that is not a checkpoint
        raise UserError(f"cost model file {spec!r} is not a saved feyntune cost model "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if kind not in LEARNED:
        raise UserError(f"cost model file {spec!r} is not a saved feyntune cost model")
    try:
        return _identified(_class(kind).load(path), path)
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"cost model file {spec!r} is a damaged {kind} checkpoint "
                        f"({type(e).__name__}: {e})") from None


def _identified(model: CostModel, path: Path) -> CostModel:
    """`model` with its identity: its kind and a hash of the checkpoint's bytes."""
    import hashlib

    model.identity = f"{model.name}-{hashlib.sha256(path.read_bytes()).hexdigest()[:10]}"
    return model
