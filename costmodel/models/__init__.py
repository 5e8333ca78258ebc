"""Cost models: what a kernel costs on a target, in milliseconds.

    base       CostModel (the contract), KernelCost, PlanCost, Composition
    roofline   the analytical baseline
    features   a kernel as a PyG graph; learned   what learned models share
    gnn, gbdt  the learned models; train, examples, evaluate: how they learn and are scored
    numerics   the CPU kernels and threads training runs on, pinned (`numerics.pin`)
    calibration  a target's timed GEMMs (`costmodel calibrate`) and the model they calibrate
    registry   load_cost_model("gbdt" (DEFAULT_COST_MODEL) | "gnn" | "hybrid" | "roofline" | PATH)
"""
from costmodel.models.base import Composition, CostModel, KernelCost, PlanCost
from costmodel.models.registry import COST_MODELS, DEFAULT_COST_MODEL, default_checkpoint, load_cost_model
from costmodel.models.roofline import Roofline

__all__ = ["COST_MODELS", "DEFAULT_COST_MODEL", "Composition", "CostModel", "KernelCost", "PlanCost",
           "Roofline", "default_checkpoint", "load_cost_model"]
