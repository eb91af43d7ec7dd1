"""RMSNorm over the last dimension of a contiguous (M, N) tensor: the launchers.

RMSNorm is LayerNorm with the mean fixed at 0 and no bias, so it runs LayerNorm's forward and
backward kernels (triton_kernels/layer_norm.py, where the math is) with ``IS_RMS=True``:

    rstd = 1 / sqrt(sum(x^2) / N + eps),  y = x * rstd * w
    dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * w,  dw = sum_rows(dy * xhat)
"""

from .layer_norm import _norm_bwd, _norm_fwd


def rms_norm_fwd(x, weight, eps: float):
    """RMSNorm over the last dim of ``x`` (M, N). Returns (y, rstd); rstd is fp32 (M,)."""
    y, _, rstd = _norm_fwd(x, weight, None, eps, is_rms=True)
    return y, rstd


def rms_norm_bwd(dy, x, weight, rstd):
    """Gradients of :func:`rms_norm_fwd`: (dx, dweight); dweight is empty (0,) when weight is None."""
    dx, dweight, _ = _norm_bwd(dy, x, weight, None, rstd, False, is_rms=True)
    return dx, dweight
