"""Eager PyTorch implementations: the correctness oracle and the CPU fallback ("torch" backend)."""

from .attention import scaled_dot_product_attention
from .layer_norm import layer_norm, rms_norm
from .softmax import softmax

__all__ = ["layer_norm", "rms_norm", "scaled_dot_product_attention", "softmax"]
