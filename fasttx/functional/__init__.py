"""Functional ops; each takes a keyword-only ``backend="auto"`` (see fasttx.backends)."""

from .layer_norm import layer_norm, rms_norm
from .softmax import softmax

__all__ = ["layer_norm", "rms_norm", "softmax"]
