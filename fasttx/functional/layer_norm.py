"""fasttx.layer_norm: the semantics of F.layer_norm (fasttx.rms_norm, in rms_norm.py, shares the helpers).

The kernel backends see the input as a contiguous (rows, hidden) matrix, hidden being the product
of normalized_shape; the input is copied only when it cannot be viewed that way. The output has
the input's dtype; parameters are read in the input's dtype or fp32 (see _kernel_params).

Autocast casts nothing here: with half activations and fp32 parameters the kernels accumulate in
fp32 and the output stays half. torch's autocast instead runs layer_norm in fp32 and returns
fp32, moving twice the bytes for the same statistics.
"""

import math
import numbers

import torch

from .. import _ops, backends
from . import native
from ._checks import ShapeError, check_shape, check_tensor


def _normalized_shape(op, input, normalized_shape):
    # A module's call first: (hidden,) matching the input (~1 us less than the general checks).
    if type(normalized_shape) is tuple and len(normalized_shape) == 1 and type(normalized_shape[0]) is int \
            and input.dim() > 0 and input.shape[-1] == normalized_shape[0]:
        return normalized_shape
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    if len(normalized_shape) == 0 or any(not isinstance(d, numbers.Integral) for d in normalized_shape):
        raise ShapeError(f"fasttx.{op}: normalized_shape must be a non-empty sequence of ints, got {normalized_shape}")
    if input.dim() < len(normalized_shape) or tuple(input.shape[-len(normalized_shape):]) != normalized_shape:
        raise ShapeError(
            f"fasttx.{op}: normalized_shape {list(normalized_shape)} must equal the trailing dims of "
            f"input, got input of shape {list(input.shape)}"
        )
    return normalized_shape


def _check_args(op, input, normalized_shape, params):
    check_tensor(op, "input", input)
    normalized_shape = _normalized_shape(op, input, normalized_shape)
    for name, value in params.items():
        if value is not None:
            check_tensor(op, name, value, like=input)
            check_shape(op, name, value, normalized_shape)
    return normalized_shape


def _kernel_params(input, weight, bias=None):
    """Parameters flattened to (hidden,) in the one dtype the kernels read them in: the weight's
    when it is the input's or fp32 (else fp32), the input's when there is only a bias."""
    if weight is None:
        dtype = input.dtype
    else:
        dtype = weight.dtype if weight.dtype in (input.dtype, torch.float32) else torch.float32
    return [p if p is None or (p.dim() == 1 and p.dtype == dtype and p.is_contiguous())  # (as is: ~2 us a call)
            else p.reshape(-1).to(dtype).contiguous() for p in (weight, bias)]


def _as_rows(input, hidden):
    return input.reshape(-1, hidden).contiguous()


def _like_input(out, input):
    """The kernels' (rows, hidden) output in the input's shape."""
    return out if out.shape == input.shape else out.view(input.shape)


def _check_param_dtypes(input, params):
    """torch's rule for layer_norm: parameters in the input's dtype, or fp32 with half input."""
    allowed = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    for name, value in params.items():
        if value is not None and value.dtype not in allowed:
            raise RuntimeError(f"fasttx.layer_norm: {name} must have dtype "
                               f"{' or '.join(map(str, allowed))} for {input.dtype} input, got {value.dtype}")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """LayerNorm over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.layer_norm``."""
    if native.runs_as_is("layer_norm", backend, input, (weight, bias)):
        try:
            return native.torch_layer_norm(input, normalized_shape, weight, bias, eps)
        except (RuntimeError, TypeError, ValueError):
            pass  # the checks below name the argument (and raise torch's error again if they pass)
    normalized_shape = _check_args("layer_norm", input, normalized_shape, {"weight": weight, "bias": bias})
    _check_param_dtypes(input, {"weight": weight, "bias": bias})
    chosen = backends.resolve("layer_norm", backend, input)
    hidden = math.prod(normalized_shape)
    if chosen == "torch" or hidden == 0:
        return native.layer_norm(input, normalized_shape, weight, bias, eps)
    weight, bias = _kernel_params(input, weight, bias)
    out, _mean, _rstd = _ops.op("layer_norm", "fwd", chosen)(_as_rows(input, hidden), weight, bias, float(eps))
    return _like_input(out, input)

