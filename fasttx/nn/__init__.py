"""Drop-in modules: same constructor, parameters, state_dict and forward as their torch.nn namesakes."""

import torch

from .activation import Softmax
from .attention import MultiheadAttention
from .normalization import LayerNorm, RMSNorm
from .transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                          TransformerEncoderLayer)

__all__ = ["LayerNorm", "MultiheadAttention", "RMSNorm", "Softmax", "Transformer", "TransformerDecoder",
           "TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer"]

# torch.nn module -> its fasttx drop-in (a subclass adding no state): what fasttx.patch and the
# composite modules convert in place.
DROP_INS = {getattr(torch.nn, name): globals()[name] for name in __all__}
