"""Eager PyTorch implementations, float64 included: the correctness oracle the tests compare every
backend with. Not what users run: the "torch" backend is fasttx.functional.native (torch's fused ops)."""

from .attention import scaled_dot_product_attention
from .layer_norm import layer_norm
from .rms_norm import rms_norm
from .softmax import softmax

__all__ = ["layer_norm", "rms_norm", "scaled_dot_product_attention", "softmax"]
