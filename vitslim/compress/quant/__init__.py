"""Post-training quantizers for Vision Transformers.

String-keyed registry (``create_quantizer("adalog", bits=4)``, ``list_quantizers("log*")``)
of fake-quantizers sharing the :class:`Quantizer` interface: ``calibrate(x)``,
``forward(x)`` (fake-quant), ``quantize(x)`` (int codes), ``dequantize(codes)``,
``config()`` + ``state_dict()`` for saving.

Registered: ``uniform``, ``log2``, ``logsqrt2``, ``adalog``, ``tanq`` (TanQ-style),
``twin_uniform``, ``fp8`` (E4M3).

On a timm ViT: ``quantize_(model, QuantConfig.uniform(8, 8), calib_loader)`` reparameterises,
places a fake quantizer on every configured site (``find_sites``) and calibrates it;
``remove_quantization(model)`` undoes the patch, ``save_quantized`` / ``load_quantized``
store and restore the result.
"""

from .apply import quantize_
from .base import MAX_BITS, MIN_BITS, Quantizer, UnsignedQuantizer
from .calibration import calibrate_model
from .config import PRESETS, QuantConfig, SiteSpec
from .fp8 import Fp8Quantizer
from .logarithmic import GELU_SHIFT, AdaLogQuantizer, Log2Quantizer, LogSqrt2Quantizer
from .placement import (
    QuantPoint,
    apply_quantization,
    is_quantized,
    quant_points,
    quantization_disabled,
    quantization_info,
    remove_quantization,
    set_quantization_enabled,
)
from .registry import (
    create_quantizer,
    get_quantizer_class,
    is_quantizer,
    list_quantizers,
    quantizer_from_config,
    register_quantizer,
)
from .reparam import (
    fold_attention_output,
    fold_gelu_shift,
    fold_layernorm,
    layernorm_factors,
    reparam_record,
    reparameterize_attentions,
    reparameterize_layernorms,
    rotate_qk,
)
from .serialize import load_quantized, save_quantized
from .sites import SITE_KINDS, Site, find_sites
from .tangent import TanQuantizer
from .twin_uniform import TwinUniformQuantizer
from .uniform import UniformQuantizer

__all__ = [
    "Quantizer",
    "UnsignedQuantizer",
    "MIN_BITS",
    "MAX_BITS",
    "GELU_SHIFT",
    "register_quantizer",
    "create_quantizer",
    "list_quantizers",
    "get_quantizer_class",
    "is_quantizer",
    "quantizer_from_config",
    "UniformQuantizer",
    "Log2Quantizer",
    "LogSqrt2Quantizer",
    "AdaLogQuantizer",
    "TanQuantizer",
    "TwinUniformQuantizer",
    "Fp8Quantizer",
    "SITE_KINDS",
    "Site",
    "find_sites",
    "SiteSpec",
    "QuantConfig",
    "PRESETS",
    "QuantPoint",
    "apply_quantization",
    "remove_quantization",
    "is_quantized",
    "quant_points",
    "quantization_info",
    "set_quantization_enabled",
    "quantization_disabled",
    "calibrate_model",
    "quantize_",
    "fold_attention_output",
    "fold_gelu_shift",
    "fold_layernorm",
    "layernorm_factors",
    "reparameterize_attentions",
    "reparameterize_layernorms",
    "rotate_qk",
    "reparam_record",
    "save_quantized",
    "load_quantized",
]
