"""fasttx.rms_norm: the semantics of F.rms_norm, with LayerNorm's argument checks, parameter
dtypes and (rows, hidden) view (fasttx/functional/layer_norm.py, whose docstring says how)."""

import math

import torch
import torch.nn.functional as F

from .. import _ops, backends
from . import native
from .layer_norm import _as_rows, _check_args, _kernel_params, _like_input, _torch_op_as_is


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend="auto"):
    """RMSNorm over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.rms_norm``.

    ``eps=None`` means ``torch.finfo(input.dtype).eps``, as in torch.
    """
    if _torch_op_as_is("rms_norm", backend, input, (weight,)):
        try:
            # (eps given: torch's CPU op takes eps=None as fp32's epsilon whatever the input's dtype)
            return F.rms_norm(input, normalized_shape, weight, torch.finfo(input.dtype).eps if eps is None else eps)
        except (RuntimeError, TypeError, ValueError):
            pass  # the checks below name the argument (and raise torch's error again if they pass)
    normalized_shape = _check_args("rms_norm", input, normalized_shape, {"weight": weight})
    chosen = backends.resolve("rms_norm", backend, input)
    hidden = math.prod(normalized_shape)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    if chosen == "torch" or hidden == 0:
        return native.rms_norm(input, normalized_shape, weight, eps)
    weight, _ = _kernel_params(input, weight)
    out, _rstd = _ops.op("rms_norm", "fwd", chosen)(_as_rows(input, hidden), weight, float(eps))
    return _like_input(out, input)
