"""fasttx.rms_norm: the semantics of F.rms_norm, with LayerNorm's argument checks, parameter
dtypes and (rows, hidden) view (fasttx/functional/layer_norm.py, whose docstring says how)."""

import math

import torch

from .. import _ops, backends
from . import native
from .layer_norm import _as_rows, _check_args, _kernel_params, _like_input


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend="auto"):
    """RMSNorm over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.rms_norm``.

    ``eps=None`` means the epsilon of the dtype the norm is computed in, as torch's op does (its
    docs say ``torch.finfo(input.dtype).eps``; its CPU and CUDA code and its decomposition take
    fp32's for fp16 / bf16 / fp32 input, fp64's for fp64): 1.19e-7, or 2.2e-16 for float64.
    """
    if native.runs_as_is("rms_norm", backend, input, (weight,)):
        try:
            return native.torch_rms_norm(input, normalized_shape, weight, eps)
        except (RuntimeError, TypeError, ValueError):
            pass  # the checks below name the argument (and raise torch's error again if they pass)
    normalized_shape = _check_args("rms_norm", input, normalized_shape, {"weight": weight})
    chosen = backends.resolve("rms_norm", backend, input)
    hidden = math.prod(normalized_shape)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    if chosen == "torch" or hidden == 0:
        return native.rms_norm(input, normalized_shape, weight, eps)
    weight, _ = _kernel_params(input, weight)
    out, _rstd = _ops.op("rms_norm", "fwd", chosen)(_as_rows(input, hidden), weight, float(eps))
    return _like_input(out, input)
