"""Eager PyTorch implementations: the correctness oracle and the CPU fallback ("torch" backend)."""

from .layer_norm import layer_norm, rms_norm
from .softmax import softmax

__all__ = ["layer_norm", "rms_norm", "softmax"]
