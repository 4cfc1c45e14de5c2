"""The run path of ``vitslim compress`` (and ``demo``, ``sweep``), one step after the other:

1. :mod:`~vitslim.pipeline.preflight`: seconds of checks before minutes of work;
2. :mod:`~vitslim.pipeline.variants`: the recipe's model stages applied cumulatively, with the
   :class:`~vitslim.pipeline.context.StageContext` (calibration images) they need;
3. :mod:`~vitslim.pipeline.measure`: per variant, PyTorch scores, the ONNX export
   (:mod:`vitslim.export.variant`) checked in ONNX Runtime, every measured runtime's artifact
   prepared and checked (:mod:`vitslim.runtimes`);
4. :mod:`~vitslim.pipeline.judge`: the ``validate`` stage's verdict on every file;
5. :mod:`vitslim.runtimes.timing`: all variants in all runtimes timed interleaved;
6. :mod:`~vitslim.pipeline.run`: the report (the ``export`` stage's engine, the families' notes)
   and the manifest, written into a folder that appears only when the run finished.
"""

from vitslim.pipeline.context import StageContext
from vitslim.pipeline.options import EVAL_BATCH_SIZE, Evaluation, Timing, split_options
from vitslim.pipeline.run import compress, fp32_report, run_recipe
from vitslim.pipeline.variants import ALONE, FP32, Variant, build_variants

__all__ = [
    "ALONE",
    "EVAL_BATCH_SIZE",
    "Evaluation",
    "FP32",
    "StageContext",
    "Timing",
    "Variant",
    "build_variants",
    "compress",
    "fp32_report",
    "run_recipe",
    "split_options",
]
