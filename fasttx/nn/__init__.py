"""Drop-in modules: same constructor, parameters, state_dict and forward as their torch.nn namesakes."""

from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
