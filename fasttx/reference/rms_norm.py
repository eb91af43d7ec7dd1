"""RMSNorm over the trailing ``len(normalized_shape)`` dims, accumulated in fp32, as
fasttx/reference/layer_norm.py (same dtype rules): ``x * rsqrt(mean(x^2) + eps) * weight``."""

import torch

from .layer_norm import _accumulation_dtype, _normalized_dims


def rms_norm(x, normalized_shape, weight=None, eps=None):
    if eps is None:  # torch's default: the epsilon of the dtype it computes in, not of x's
        eps = torch.finfo(_accumulation_dtype(x)).eps
    dims = _normalized_dims(x, normalized_shape)
    xf = x.to(_accumulation_dtype(x))
    y = xf * torch.rsqrt(xf.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)
