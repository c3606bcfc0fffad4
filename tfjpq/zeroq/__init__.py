"""ZeroQ (Cai et al., CVPR 2020): data-free calibration and Pareto-frontier mixed precision.

The data-free path, from a trained Keras model with BatchNormalization::

    import tfjpq, tflm_export
    x_syn = tfjpq.zeroq.distill(model, num_samples=64, input_range=(0, 1))  # pixels / 255; no real data
    art = tflm_export.convert(model, representative_data=x_syn)    # W8A8 int8
    run = tflm_export.emulate(art, board="nano33ble", inputs=x_test)

Mixed precision from the distilled data::

    sens = tfjpq.zeroq.sensitivity(model, x_syn, bits=(2, 4, 8))
    plan = tfjpq.zeroq.pareto(model, sens, budget_bytes=20_000, cost="tflm")
    deploy = plan.apply(model)          # weights on the planned per-layer grids
    frontier = tfjpq.zeroq.pareto(model, sens)   # every budget at once
    frontier.plot("frontier.png")

See docs/zeroq.md.
"""

from tfjpq.zeroq.distill import bn_loss, distill  # noqa: F401
from tfjpq.zeroq.pareto import Frontier, Plan, pareto, tflm_cost, uniform_plan  # noqa: F401
from tfjpq.zeroq.sensitivity import Sensitivity, sensitivity  # noqa: F401

__all__ = ["distill", "bn_loss", "sensitivity", "Sensitivity", "pareto", "Plan", "Frontier", "uniform_plan",
           "tflm_cost"]
