"""2:4 semi-structured weight sparsity, post-training.

In every group of 4 consecutive weights along a Linear's input (reduction) dimension at most 2
are non-zero: the layout sparse tensor cores accelerate (cuSPARSELt, TensorRT's sparse weights).

>>> report = sparsify_(model, SparsityConfig("sparsegpt"), calib_images)   # in place
>>> all(check_24(model, ["blocks.*"]).values())
True

Methods (string-keyed registry, :func:`list_sparsity_methods`): ``magnitude``; ``wanda``
(``|W|·‖X_j‖₂``); ``sparsegpt`` (mask and OBS weight update from the calibration Hessian, block
by block on the already-sparsified model). Layers: fnmatch ``include``/``exclude`` patterns of
Linear names (default: every Linear in ``blocks.*``, not the head). Sparsify before quantizing:
symmetric weight quantizers keep the zeros. :func:`onnx_24_report` checks an exported file;
:func:`to_semi_structured_` runs the 2:4 weights with torch's sparse kernels on a CUDA GPU.
"""

from .apply import sparsify_
from .check import check_24, onnx_24_report
from .config import DEFAULT_INCLUDE, SparsityConfig
from .methods import SparsityMethod, get_sparsity_method, list_sparsity_methods, register_sparsity_method
from .pattern import GROUP, KEEP, holds_24, mask_24, zero_fraction
from .semi_structured import SEMI_STRUCTURED_DTYPES, to_semi_structured_
from .sparsegpt import sparsegpt_24

__all__ = [
    "sparsify_",
    "SparsityConfig",
    "DEFAULT_INCLUDE",
    "check_24",
    "onnx_24_report",
    "to_semi_structured_",
    "SEMI_STRUCTURED_DTYPES",
    "SparsityMethod",
    "register_sparsity_method",
    "get_sparsity_method",
    "list_sparsity_methods",
    "GROUP",
    "KEEP",
    "mask_24",
    "holds_24",
    "zero_fraction",
    "sparsegpt_24",
]
