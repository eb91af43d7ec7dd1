"""fasttx.softmax: softmax(scale * input + mask) along ``dim`` in one pass, forward and backward.

The kernels normalise the last dim of a contiguous (A, B, L, C) tensor, with a 4-D mask
broadcastable to it: a key-padding mask (B, 1, 1, S) or an (L, S) mask is read through 0 strides
and never expanded in memory. Inputs with more leading dims are merged into (A, B); a mask whose
broadcast pattern does not merge that way (e.g. (X, 1, H, 1, S) over 5-D input) has its leading
dims materialised.

Softmax over a dim other than the last moves that dim last: one transposing copy of the input
(a read and a write of it), and the output is returned as a strided view in the input's layout.

Autocast: as torch's policy, softmax under CUDA autocast returns float32 unless ``dtype`` is given
or the input is float64 (the kernels read the half input and write fp32, instead of casting the
input first); CPU autocast leaves softmax in the input's dtype, as torch does.
"""

import torch

from .. import _ops, backends
from . import native
from ._checks import check_mask, check_tensor, merge_leading_dims


# Device types whose autocast runs softmax in fp32 (torch's "fp32_set_opt_dtype" policy).
_AUTOCAST_TO_FP32 = ("cuda",)


def _check_args(input, dim, scale, mask, is_causal, dtype):
    check_tensor("softmax", "input", input)
    if not isinstance(dim, int):
        raise TypeError(f"fasttx.softmax: dim must be an int, got {type(dim).__name__}")
    ndim = max(input.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(f"fasttx.softmax: dim must be in [{-ndim}, {ndim - 1}] for input of shape {list(input.shape)}, got {dim}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"fasttx.softmax: scale must be a float or None, got {type(scale).__name__}")
    if mask is not None:
        check_mask("softmax", "mask", mask, input, "the input's", input.shape, "input of shape")
    if is_causal and (input.dim() < 2 or dim % input.dim() != input.dim() - 1):
        raise ValueError(
            f"fasttx.softmax: is_causal masks the last two dims and needs softmax over the last one: "
            f"got dim={dim} for input of shape {list(input.shape)}"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"fasttx.softmax: dtype must be a floating-point torch.dtype or None, got {dtype}")


def _as_4d(x, mask):
    """(A, B, L, C) views of ``x`` (made contiguous) and of ``mask`` (same number of dims as
    ``x``, broadcastable to it, its broadcast dims kept), softmax being over C and causal
    masking over (L, C)."""
    if x.dim() == 1:
        x, mask = x[None], None if mask is None else mask[None]
    *outer, rows, cols = x.shape
    (a, b), mask = merge_leading_dims(mask, outer, 2)
    return x.reshape(a, b, rows, cols).contiguous(), mask


def softmax(input, dim=-1, *, scale=None, mask=None, is_causal=False, dtype=None, backend="auto"):
    """softmax(scale * input + mask) along ``dim``; see the module docstring.

    ``mask``: bool (True = keep) or float (added), broadcastable to ``input``. ``is_causal``:
    keep column j <= row i of the last two dims (top-left aligned, as torch's SDPA). A row with
    nothing kept gives 0 output and 0 gradient. Output dtype: ``dtype`` if given, float32 under
    CUDA autocast (for input other than float64), else the input's.
    """
    # torch.softmax computes the same when only ``dim`` is given, autocast included (its policy for softmax
    # is fasttx's): then the call is torch's alone, and so are its checks. Where torch refuses the
    # arguments, the checks below say what is wrong.
    if ((backend == "auto" or backend == "torch") and scale is None and mask is None and not is_causal
            and isinstance(input, torch.Tensor) and (dtype is None or dtype == input.dtype)
            and backends.resolve("softmax", backend, input) == "torch"):
        try:
            # (dtype=None costs ~0.13 us; a given dtype also tells autocast to leave the output's alone)
            return torch.softmax(input, dim) if dtype is None else torch.softmax(input, dim, dtype=dtype)
        except (RuntimeError, TypeError, ValueError, IndexError):
            pass  # the checks below name the argument (and raise torch's error again if they pass)
    _check_args(input, dim, scale, mask, is_causal, dtype)
    if (dtype is None and input.dtype != torch.float64 and input.device.type in _AUTOCAST_TO_FP32
            and torch.is_autocast_enabled(input.device.type)):  # (torch's policy leaves float64 input as it is)
        dtype = torch.float32
    chosen = backends.resolve("softmax", backend, input)
    if chosen == "torch" or input.numel() == 0:
        return native.softmax(input, dim, scale, mask, is_causal, dtype)
    scale = 1.0 if scale is None else float(scale)
    x = input.reshape(1) if input.dim() == 0 else input
    mask = None if mask is None else mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape))
    dim, last = dim % x.dim(), x.dim() - 1
    if dim != last:  # (a no-op movedim still costs ~1.5 us on the host)
        x = x.movedim(dim, last)
        mask = None if mask is None else mask.movedim(dim, last)
    if mask is not None and mask.is_floating_point() and mask.dtype not in backends.KERNEL_DTYPES:
        # A dtype no kernel reads (float64): converted once, unexpanded; autograd carries its gradient
        # back through the conversion, in the mask's own dtype.
        mask = mask.float()
    x4, mask4 = _as_4d(x, mask)
    y = _ops.op("softmax", "fwd", chosen)(x4, mask4, scale, is_causal, dtype or input.dtype)
    if dim == last:
        return y.view(input.shape)
    return y.reshape(x.shape).movedim(last, dim).reshape(input.shape)
