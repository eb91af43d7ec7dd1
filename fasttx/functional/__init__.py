"""Functional ops; each takes a keyword-only ``backend="auto"`` (see fasttx.backends)."""

from .attention import scaled_dot_product_attention
from .layer_norm import layer_norm
from .rms_norm import rms_norm
from .softmax import softmax

__all__ = ["layer_norm", "rms_norm", "scaled_dot_product_attention", "softmax"]
