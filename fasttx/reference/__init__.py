"""Eager PyTorch implementations: the correctness oracle and the CPU fallback ("torch" backend)."""

from .layer_norm import layer_norm, rms_norm

__all__ = ["layer_norm", "rms_norm"]
