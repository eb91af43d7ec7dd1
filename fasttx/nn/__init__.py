"""Drop-in modules: same constructor, parameters, state_dict and forward as their torch.nn namesakes."""

from .activation import Softmax
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "Softmax"]
