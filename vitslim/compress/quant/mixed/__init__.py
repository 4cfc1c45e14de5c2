"""Mixed-precision quantization: per-layer sensitivity and bit allocation under a budget.

>>> mp = MixedPrecisionConfig.from_dict({"budget": {"avg_weight_bits": 4.5}})
>>> plan = plan_mixed_precision(model, base_cfg, mp, calib_loader)        # doctest: +SKIP
>>> quantize_(model, plan.to_quant_config(base_cfg), calib_loader)         # doctest: +SKIP

Sensitivity (``sensitivity.py``): the model-output KL/MSE against FP32 with one layer quantized,
or a diagonal-Fisher estimate, cached as JSON. Allocation (``allocate.py``): MPTQ-ViT-style
greedy descent under an exact budget (average weight bits, bytes or bit-operations). Search
(``search.py``): a budget, or the cheapest plan within an accuracy drop (``max_drop``).
"""

from .allocate import FLOAT_BITS, Costs, GreedyPath, Ladder, greedy_path, ladders_for, pareto_sweep
from .config import BUDGET_METRICS, SENSITIVITY_METHODS, Budget, MixedPrecisionConfig
from .plan import BitPlan, LayerBits, mixed_precision_summary
from .plot import plot_pareto
from .search import build_path, images_and_labels, measure_drop, plan_from_state, plan_mixed_precision
from .sensitivity import LayerInfo, SensitivityTable, measure_sensitivity, planned_layers

__all__ = [
    "BUDGET_METRICS",
    "SENSITIVITY_METHODS",
    "FLOAT_BITS",
    "Budget",
    "MixedPrecisionConfig",
    "BitPlan",
    "LayerBits",
    "mixed_precision_summary",
    "LayerInfo",
    "SensitivityTable",
    "Ladder",
    "Costs",
    "GreedyPath",
    "measure_sensitivity",
    "planned_layers",
    "ladders_for",
    "greedy_path",
    "pareto_sweep",
    "build_path",
    "plan_from_state",
    "measure_drop",
    "images_and_labels",
    "plan_mixed_precision",
    "plot_pareto",
]
