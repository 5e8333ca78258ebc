"""Pricing a model or a plan, to the one JSON shape every caller gets: `costmodel predict
--json`, the HTTP service (`costmodel serve`) and Python all return `prediction(...)`'s dict.

    {"model", "target", "batch", "seq", "dtype", "attention", "plan", "cost_model",
     "diagram_hash", "total_ms", "kernels_ms", "overhead_ms", "composition", "warnings", "kernels",
     "subdiagrams": [{"name", "hash", "ops", "vertices", "module", "flops", "bytes_read",
                      "bytes_written", "predicted_ms", "spread", "config"}]}

Times are milliseconds; `spread` is the std of ln(ms) over a learned model's ensemble (0 where
it has none); `composition` {"a", "b_us", "fit"} is how the kernels add up: total_ms = a *
kernels_ms + b_us / 1000 * launches (`kernels`, or none when the plan replays a CUDA graph), and
"fit" says whose whole models gave a ("own": the target's; "median": the median of the measured
GPUs' own scales, for a target nobody measured; "pooled": every measured GPU's, where fewer GPUs
have a scale of their own;
"calibrated": a calibration file's, `costmodel calibrate`; "none": the roofline's plain sum);
`warnings` say when the target lies outside the hardware a learned model saw, or the plan was
made for another target.
"""
from __future__ import annotations

from collections.abc import Mapping

from costmodel.errors import UserError
from costmodel.hardware import HardwareProfile
from costmodel.ir.diagram import Diagram
from costmodel.ir.plan import Plan
from costmodel.models.base import CostModel, PlanCost


def check_plan_target(doc: Mapping, target: HardwareProfile, name: str = "the plan") -> None:
    """Raise UserError unless a plan document (plan.json) was tuned for this target (checked
    before the capture: it needs no diagram). `name` is how the message calls the plan."""
    tuned = doc.get("target")
    if tuned not in (None, target.name):
        raise UserError(f"{name} was tuned for {tuned}, not {target.name}; its tiles and fusions "
                        f"are that target's: use --target {tuned}, or tune for {target.name}")


def check_plan_diagram(doc: Mapping, diagram: Diagram, name: str = "the plan") -> None:
    """Raise UserError unless a plan document was made for this diagram (model, batch, seq,
    dtype, attention)."""
    made_for = doc.get("diagram_hash")
    if made_for not in (None, diagram.hash):
        raise UserError(f"{name} was tuned for another graph (diagram {made_for[:12]}, not "
                        f"{diagram.name}'s {diagram.hash[:12]}): use the model, batch, seq, dtype and "
                        f"attention it was tuned for ({doc.get('model')} {doc.get('batch')}x"
                        f"{doc.get('seq')} {doc.get('dtype')} {doc.get('attention', 'sdpa')}), or, "
                        f"if the model or its config changed, tune again")


def price(cost_model: CostModel, diagram: Diagram, target: HardwareProfile,
          plan: Plan | None = None) -> PlanCost:
    """`cost_model.predict_plan`, with a plan that does not apply said as a UserError."""
    try:
        return cost_model.predict_plan(diagram, target, plan or Plan())
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"the plan does not apply to {diagram.name}: {e}") from None


def prediction(priced: PlanCost, diagram: Diagram, *, plan: str = "eager") -> dict:
    """The JSON contract (module docstring) of a priced diagram. `plan` names the plan priced
    ("eager", a plan.json path, or "posted")."""
    a, b, fit = priced.composition
    return {
        "model": diagram.name,
        "target": priced.target,
        "batch": diagram.info("batch"),
        "seq": diagram.info("seq"),
        "dtype": diagram.info("dtype"),
        "attention": diagram.info("attention", "sdpa"),
        "plan": plan,
        "cost_model": priced.cost_model,
        "diagram_hash": diagram.hash,
        "total_ms": priced.total_ms,
        "kernels_ms": priced.kernels_ms,
        "overhead_ms": priced.overhead_ms,
        "composition": {"a": a, "b_us": b * 1e3, "fit": fit},
        "warnings": list(priced.warnings),
        "kernels": len(priced.kernels),
        "subdiagrams": [
            {**k.subdiagram.to_dict(), "predicted_ms": k.ms, "spread": k.spread,
             "config": None if k.config is None else k.config.to_dict()}
            for k in priced.kernels
        ],
    }


def predict(cost_model: CostModel, model: str, target: str | HardwareProfile, *, batch: int = 1,
            seq: int = 128, dtype: str = "fp32", attention: str = "sdpa", plan: Plan | None = None,
            plan_doc: Mapping | None = None, plan_name: str = "eager",
            diagram: Diagram | None = None) -> dict:
    """Capture `model` (or take `diagram`, already captured) and price `plan` on `target`, as
    the JSON contract. A `plan_doc` (plan.json) is checked to fit the diagram and the target."""
    from costmodel.hardware import load_profile
    from costmodel.ir.zoo import capture_model

    hw = load_profile(target) if isinstance(target, str) else target
    hw.peak(dtype)  # a dtype the target has not, or a plan for another, is said before the capture
    if plan_doc is not None:
        check_plan_target(plan_doc, hw)
    d = diagram or capture_model(model, batch, seq, dtype, attention=attention)
    if plan_doc is not None:
        check_plan_diagram(plan_doc, d)
    return prediction(price(cost_model, d, hw, plan), d, plan=plan_name)
