"""costmodel: what does a model cost on an accelerator.

capture (`zoo.capture_model`) -> `diagram.Diagram` -> kernels (`plan.Plan.kernels`)
-> `cost.CostModel.predict` (milliseconds) on a `hardware.HardwareProfile`.
"""
