"""LayerNorm over the trailing ``len(normalized_shape)`` dims, accumulated in fp32.

The result has the input's dtype whatever the parameters' dtype (fp32 parameters with half
activations is the usual AMP setup). Autograd goes through these eager ops. RMSNorm is in rms_norm.py.
"""

import torch


def _normalized_dims(x, normalized_shape):
    return tuple(range(x.dim() - len(normalized_shape), x.dim()))


def _accumulation_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = _normalized_dims(x, normalized_shape)
    xf = x.to(_accumulation_dtype(x))
    mean = xf.mean(dim=dims, keepdim=True)
    var = (xf - mean).square().mean(dim=dims, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)

