"""The "torch" backend: torch's own fused ops (native LayerNorm / RMSNorm, softmax, SDPA with its
flash CPU kernel), plus only what fasttx promises beyond them. It runs on any device; on CPU it is
what "auto" runs, so it must never be slower or larger than the torch.nn module it replaces.

What fasttx adds:
- a query row whose keys are all masked out gives output 0 and zero gradients, never NaN. On CPU
  torch's SDPA does so itself (its "safe softmax", torch >= 2.5, pytorch PR 133882; checked on every
  CPU path in tests/ops/test_attention.py): the mask goes to it as it is. Elsewhere the rows are found
  from the mask as given, never expanded: ``empty`` is the mask reduced over its last dim,
  (..., L or 1, 1). Those rows' masks are reopened (so torch's kernels see no empty row and stay
  finite) and their output set to 0, which also zeroes every gradient through them. With no mask
  nothing is added: the attention memory stays O(L), as torch's.
- autocast casts nothing in the norms (as the kernel backends): the output keeps the input's dtype.
  Attention's arguments arrive already cast as torch's autocast casts them (functional.attention).

fasttx.reference is not this: it is the readable, float64-capable oracle the tests compare with.
"""

import ctypes
import functools

import torch
import torch.nn.functional as F

from .. import backends


def _without_autocast(norm):
    """``norm`` run with autocast off: torch's autocast would run layer_norm / rms_norm in fp32;
    fasttx's norms keep their input's dtype under autocast, whatever the backend. (Without autocast
    on, no context is entered: a call of a small norm costs ~10 us of host time, a context ~1.)"""
    @functools.wraps(norm)
    def run(input, *args):
        if torch.is_autocast_enabled(input.device.type):
            with torch.autocast(input.device.type, enabled=False):
                return norm(input, *args)
        return norm(input, *args)

    return run


def _native_layer_norm_reads(input, weight, bias):
    """Whether torch's own layer_norm takes these dtypes: parameters in the input's dtype, or, on
    CPU only, an fp32 weight (and bias) with half input. Its CUDA kernel wants the input's dtype."""
    dtypes = {p.dtype for p in (weight, bias) if p is not None}
    return dtypes <= {input.dtype} or (input.device.type == "cpu" and weight is not None
                                       and dtypes == {torch.float32})


# F.layer_norm and F.rms_norm without their Python around the op (~0.4 and ~0.2 us of a small norm's
# host time; F.layer_norm reads torch.backends.cudnn.enabled, a property, for an argument the op
# ignores). The F function still runs where a __torch_function__ override (a tensor subclass, a
# TorchFunctionMode) is to see it.

def torch_layer_norm(input, normalized_shape, weight, bias, eps):
    if torch._C._has_torch_function_variadic(input, weight, bias):
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    return torch.layer_norm(input, normalized_shape, weight, bias, eps)


def torch_rms_norm(input, normalized_shape, weight, eps):
    if torch._C._has_torch_function_variadic(input, weight):
        return F.rms_norm(input, normalized_shape, weight, eps)
    return torch.rms_norm(input, normalized_shape, weight, eps)


@_without_autocast
def layer_norm(input, normalized_shape, weight, bias, eps):
    if _native_layer_norm_reads(input, weight, bias):
        return torch_layer_norm(input, normalized_shape, weight, bias, eps)
    if weight is None:
        # Half input, fp32 bias: torch's CPU backward fails on it, CUDA refuses it; normalising
        # then adding keeps the bias in fp32 without copying the input.
        return (F.layer_norm(input, normalized_shape, None, None, eps) + bias).to(input.dtype)
    # Half input, fp32 parameters on CUDA (the AMP layout), or mixed parameters: normalise in fp32
    # as torch.nn.LayerNorm does under autocast, reading the parameters unrounded like the kernel
    # backends, and round the output once to the input's dtype.
    return F.layer_norm(input.float(), normalized_shape, weight.float(),
                        None if bias is None else bias.float(), eps).to(input.dtype)


@_without_autocast
def rms_norm(input, normalized_shape, weight, eps):
    return torch_rms_norm(input, normalized_shape, weight, eps).to(input.dtype)


def _reopen_empty_rows(mask, dim=-1):
    """(mask with every row that keeps nothing made to keep everything, empty: the rows that keep
    nothing, reduced over ``dim``). Bool masks keep True; float masks keep what is not -inf: a row
    whose max is -inf (its max, where a bool reduction of ``mask != -inf`` took ~6x as long on CPU)."""
    if mask.dtype == torch.bool:
        empty = ~mask.any(dim, keepdim=True)
        return mask | empty, empty
    empty = mask.detach().amax(dim, keepdim=True) == float("-inf")
    return mask.masked_fill(empty, 0.0), empty


# Up to this many elements, a bool mask, or a float mask's rows' max, is read on the host as a Python
# list: ~10 ns an element, where a reduction and the read of its result cost ~3 us, and ~12 us inside
# a module's call (the call's own work evicts their code from the caches; benchmarks/notes/attention.md).
# Past it a list costs ~10 us and more, the order of the ops the read can skip.
READ_AS_LIST_MAX_ELEMENTS = 1024
# Up to this many elements, a larger bool mask is read on the host as bytes (some_row_all): a copy and
# a substring search, ~0.1 ns a byte on CPU, where torch's bool reduction over its rows took ~2.5 ns an
# element (and ~3 us at the least). Past it the copy's memory is left to the tensor ops.
READ_AS_BYTES_MAX = 1 << 24
_NEG_INF = float("-inf")


def readable_here(tensor):
    """Whether the values of ``tensor`` can be read on the host here and now: a CPU tensor in eager mode.
    Not under torch.compile, jit tracing, a dispatch mode (make_fx, fake tensors) or a functorch
    transform (vmap), where the values are not there to read or a branch on them would be baked into a
    graph."""
    return tensor.is_cpu and not (torch.compiler.is_compiling() or torch.jit.is_tracing()
                                  or torch._C._len_torch_dispatch_stack()
                                  or torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def some_row_all(mask, value, dim=-1):
    """Whether some row of the bool ``mask`` along ``dim`` is ``value`` throughout (True: a key-padding row
    that is all padding, in torch's convention; False: a row that keeps nothing, in fasttx's), read on
    the host: True or False; None where it is not read (not a plain CPU tensor, or past
    READ_AS_BYTES_MAX; then the caller asks the tensor ops, or assumes the worst). The caller makes
    sure no graph is being traced (readable_here, or its own checks).

    Small masks are read as lists (all() / any() stop at a row's first deciding element). Larger ones
    as bytes, one an element in row order, copied from the tensor's memory and searched for a row of
    ``value``: a match that starts inside a row runs over into the next, and the search goes on from
    that next row's start. (Inside a MultiheadAttention call on CPU, a list read of 128 elements cost
    ~2 us less than the bytes; of 8192, the bytes copied by Tensor.numpy().tobytes() ~3 us more than by
    ctypes.)"""
    if not mask.is_cpu or mask.dim() == 0 or type(mask) is not torch.Tensor:  # (a FakeTensor has no data)
        return None
    rows = mask if dim == -1 or dim == mask.dim() - 1 else mask.movedim(dim, -1)
    length = rows.shape[-1]
    if length == 0:  # (a row of no element is any value throughout: is there a row?)
        return 0 not in rows.shape[:-1]
    if rows.numel() <= READ_AS_LIST_MAX_ELEMENTS:
        rows = (rows if rows.dim() == 2 else rows.reshape(-1, length)).tolist()
        return any(map(all, rows)) if value else not all(map(any, rows))
    if rows.numel() > READ_AS_BYTES_MAX:
        return None
    rows = rows if rows.is_contiguous() else rows.contiguous()
    address = rows.data_ptr()
    if not address:  # (no storage to read)
        return None
    data = ctypes.string_at(address, rows.numel())  # (a bool is one byte, 0 or 1)
    row = (b"\x01" if value else b"\x00") * length
    at = data.find(row)
    while at > 0 and at % length:
        at = data.find(row, (at // length + 1) * length)
    return at >= 0


def _every_row_keeps_something(mask, dim):
    """Whether every row of the float ``mask`` along ``dim`` keeps something (is not -inf throughout),
    as read on the host (readable_here); else False. (Reading the mask itself as a list, where its
    rows' max is one op less, was no faster inside a module's call on CPU.)"""
    if not readable_here(mask):
        return False
    row_max = (mask.detach() if mask.requires_grad else mask).amax(dim)
    return row_max.numel() <= READ_AS_LIST_MAX_ELEMENTS and _NEG_INF not in row_max.reshape(-1).tolist()


def reopened_float_mask(mask, dim, dtype, every_row_kept=False):
    """(the float, additive ``mask`` with every row that keeps nothing (all -inf along ``dim``) reopened
    to 0; kept: the rows that keep something, 0 / 1 in ``dtype``, reduced over ``dim``, or None where
    every row keeps something). A softmax of logits + mask, times kept, is fasttx's masked softmax: 0 in
    the rows that keep nothing, finite everywhere. The mask keeps its (broadcast) shape.
    ``every_row_kept``: True where the caller has read that already (then nothing is checked here).

    Where every row keeps something, as read on CPU in eager mode, or there is no key, the reopening
    and the product with kept are skipped: each is an op with an autograd node, the product one over
    the scores. Always reopening and zeroing put small MultiheadAttention calls with weights at
    0.82-0.88x torch.nn's speed in CPU inference, reading the rows at 0.95-1.02x
    (benchmarks/notes/attention.md, "The mask inside baddbmm")."""
    if every_row_kept or mask.shape[dim] == 0 or _every_row_keeps_something(mask, dim):
        return mask, None
    mask, empty = _reopen_empty_rows(mask, dim)
    return mask, (~empty).to(dtype)


def scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    empty = None
    if attn_mask is not None and not query.is_cpu:
        attn_mask, empty = _reopen_empty_rows(attn_mask)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                         scale=None if scale is None else float(scale), enable_gqa=enable_gqa)
    return out if empty is None else out.masked_fill(empty, 0.0)


def softmax(input, dim, scale, mask, is_causal, dtype):
    out_dtype = dtype or input.dtype
    out = _softmax(input, dim, scale, mask, is_causal, out_dtype)
    return out if out.dtype == out_dtype else out.to(out_dtype)  # (a no-op .to costs ~1.5 us on CPU)


def _softmax(input, dim, scale, mask, is_causal, out_dtype):
    """native.softmax in the accumulation dtype (fp32 at least where a scale or mask is given)."""
    if scale is None and mask is None and not is_causal:  # torch.softmax (which accumulates in fp32)
        return torch.softmax(input, dim, dtype=torch.promote_types(input.dtype, out_dtype))
    # Scale and mask in fp32 at least, as the kernels do: a half logit rounded once more would cost
    # the result its last bits.
    precision = torch.promote_types(input.dtype, torch.float32)
    logits = input if input.dtype == precision else input.to(precision)
    if scale is not None:
        logits = logits * scale
    if is_causal:  # keep column j <= row i of the last two dims (top-left aligned): one more mask
        rows, cols = logits.shape[-2:]
        causal = torch.ones(rows, cols, dtype=torch.bool, device=logits.device).tril()
        mask = causal if mask is None else (
            mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf")))
    # The rows that keep nothing are found and reopened on the mask as given, small where it broadcasts
    # (a key-padding mask (N, 1, 1, S)), and their output is set to 0 by a product with the mask's 0 / 1
    # rows: on CPU a reduction of the scores, and a masked_fill over them, each cost ~4x that product
    # (benchmarks/notes/attention.md, "Masks on CPU"). Where a read of the rows on CPU in eager mode
    # finds none empty, the reopening and the product are skipped ("The mask inside baddbmm").
    accumulate = torch.promote_types(logits.dtype, out_dtype)
    if mask is None:
        return torch.softmax(logits, dim, dtype=accumulate)
    if mask.dim() != logits.dim():  # (the reduction over ``dim`` needs the input's dims)
        mask = mask.view((1,) * (logits.dim() - mask.dim()) + tuple(mask.shape))
    if mask.dtype == torch.bool:
        # Selected, not added, so that a masked-out inf or NaN logit is ignored, as by torch's masked_fill;
        # the masked-out logits of a row that keeps nothing are 0 (finite, reopened), -inf elsewhere.
        if readable_here(mask) and some_row_all(mask, False, dim) is False:  # (every row keeps something)
            logits, kept = torch.where(mask, logits, _NEG_INF), None
        else:
            kept = mask.any(dim, keepdim=True)  # the rows that keep something
            logits, kept = torch.where(mask, logits, torch.where(kept, _NEG_INF, 0.0)), kept.to(accumulate)
    else:
        mask, kept = reopened_float_mask(mask, dim, accumulate)
        logits = logits + mask
    out = torch.softmax(logits, dim, dtype=accumulate)
    return out if kept is None else out * kept


def runs_as_is(op, backend, input, params):
    """Whether torch's own norm (F.layer_norm, F.rms_norm) on these very arguments computes what fasttx's
    would: "torch", or "auto" resolving to it, input and ``params`` of one dtype (fasttx's rule for
    mixed ones is its own), no autocast (fasttx's norms keep their input's dtype under it; softmax,
    whose policy is torch's, asks backends.resolve alone).
    Then the call is torch's alone, and so are its checks: where torch refuses the arguments, the
    caller runs the general path, whose checks say what is wrong (or accept a normalized_shape torch
    takes only as a tuple). The general path's checks and backend choice cost a torch.nn-sized norm
    on CPU about as much host time again as torch's whole call; this costs about a third of it."""
    if (backend != "auto" and backend != "torch") or not isinstance(input, torch.Tensor):
        return False
    dtype = input.dtype
    try:  # (not isinstance(p, torch.Tensor): ~0.1 us a Parameter; torch refuses what is not a tensor)
        for p in params:
            if p is not None and p.dtype is not dtype:
                return False
    except AttributeError:
        return False
    # (Any device's autocast, as torch.nn.RNN asks: one call, where asking input.device's is three.)
    return not torch._C._is_any_autocast_enabled() and backends.resolve(op, backend, input) == "torch"
