"""The diagram IR: captured models, the kernels a plan makes of them, and the rule book.

    diagram   Vertex, Propagator, Diagram, Subdiagram (frozen values with content hashes)
    plan      KernelConfig, Fuse, Tile, Plan: frozen decisions that turn a diagram into kernels
    rules     dtypes, fusion candidates, kernel legality, masks, tolerances: read everywhere
    capture   torch.export on meta tensors -> Diagram
    zoo       named models and Hugging Face configs, captured
"""
from costmodel.ir.diagram import MASK_KINDS, OP_KINDS, Diagram, Propagator, Subdiagram, Vertex
from costmodel.ir.plan import Fuse, Kernel, KernelConfig, Plan, Tile, eager_partition, load_plan_file
from costmodel.ir.zoo import ZOO_NAMES, capture_model, export_model

__all__ = ["MASK_KINDS", "OP_KINDS", "ZOO_NAMES", "Diagram", "Fuse", "Kernel", "KernelConfig", "Plan",
           "Propagator", "Subdiagram", "Tile", "Vertex", "capture_model", "eager_partition",
           "export_model", "load_plan_file"]
