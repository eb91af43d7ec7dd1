"""torch.library custom ops: fake (meta) implementations and autograd formulas.

Every kernel entry point is an op in the ``fasttx`` namespace, one per op and backend:
``fasttx::<op>_{fwd,bwd}_triton`` are defined here (their implementations import Triton lazily,
so importing fasttx never imports triton), ``fasttx::<op>_{fwd,bwd}_cuda`` are defined in C++
(csrc/bindings.cpp) and get their fake and autograd registered here once the extension loads.
Each op's fake and backward formula is written once and registered for every backend.

Norm ops take 2-D contiguous (rows, hidden) tensors, softmax ops a contiguous (A, B, L, C) input
and a 4-D mask broadcastable to it, attention ops (B, H, L, E) / (B, Hkv, S, E) / (B, Hkv, S, Ev)
tensors with a contiguous last dim, a mask broadcastable to (B, H, L, S) and the dropout seed as
an int64 scalar tensor; fasttx.functional reshapes. Missing weight / bias gradients
come back as empty (0,) tensors, since schemas cannot return None. Autocast: the ops cast nothing
(see fasttx.functional for each op's policy). Double backward is not supported.
"""

from typing import Optional

import torch
from torch import Tensor


def _empty_grad(like):
    return like.new_empty((0,))


# ---- LayerNorm -----------------------------------------------------------------------------


def _layer_norm_fwd_fake(input, weight, bias, eps):
    rows = input.shape[0]
    return (
        torch.empty_like(input),
        input.new_empty((rows,), dtype=torch.float32),
        input.new_empty((rows,), dtype=torch.float32),
    )


def _layer_norm_bwd_fake(grad_out, input, weight, mean, rstd, has_bias):
    param = weight if weight is not None else input
    hidden = input.shape[1]
    return (
        torch.empty_like(input),
        weight.new_empty((hidden,)) if weight is not None else _empty_grad(input),
        param.new_empty((hidden,)) if has_bias else _empty_grad(input),
    )


def _layer_norm_setup_context(ctx, inputs, output):
    input, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(input, weight, mean, rstd)
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _layer_norm_autograd(bwd_op):
    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        input, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = bwd_op(grad_out.contiguous(), input, weight, mean, rstd, ctx.has_bias)
        return dx, dw if ctx.has_weight else None, db if ctx.has_bias else None, None

    return backward


# ---- RMSNorm -------------------------------------------------------------------------------


def _rms_norm_fwd_fake(input, weight, eps):
    return torch.empty_like(input), input.new_empty((input.shape[0],), dtype=torch.float32)


def _rms_norm_bwd_fake(grad_out, input, weight, rstd):
    hidden = input.shape[1]
    dw = weight.new_empty((hidden,)) if weight is not None else _empty_grad(input)
    return torch.empty_like(input), dw


def _rms_norm_setup_context(ctx, inputs, output):
    input, weight, _eps = inputs
    ctx.save_for_backward(input, weight, output[1])
    ctx.has_weight = weight is not None


def _rms_norm_autograd(bwd_op):
    def backward(ctx, grad_out, _grad_rstd):
        input, weight, rstd = ctx.saved_tensors
        dx, dw = bwd_op(grad_out.contiguous(), input, weight, rstd)
        return dx, dw if ctx.has_weight else None, None

    return backward


# ---- softmax -------------------------------------------------------------------------------


def _softmax_fwd_fake(input, mask, scale, is_causal, out_dtype):
    return input.new_empty(input.shape, dtype=out_dtype)


def _softmax_bwd_fake(out, grad_out, scale, in_dtype):
    return out.new_empty(out.shape, dtype=in_dtype)


def _softmax_setup_context(ctx, inputs, output):
    input, mask, scale, _is_causal, _out_dtype = inputs
    ctx.save_for_backward(output)
    ctx.scale, ctx.in_dtype = scale, input.dtype
    ctx.mask_dtype = None if mask is None or mask.dtype == torch.bool else mask.dtype
    ctx.mask_shape = None if mask is None else mask.shape


def _softmax_autograd(bwd_op):
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dx = bwd_op(out, grad_out, ctx.scale, ctx.in_dtype) if ctx.needs_input_grad[0] else None
        # A float mask is added after the scale: its gradient is the logits' gradient, unscaled,
        # summed over the dims the mask broadcasts along.
        dmask = None
        if ctx.mask_dtype is not None and ctx.needs_input_grad[1]:
            dmask = bwd_op(out, grad_out, 1.0, ctx.mask_dtype).sum_to_size(ctx.mask_shape)
        return dx, dmask, None, None, None

    return backward


# ---- attention -----------------------------------------------------------------------------


def _attention_fwd_fake(q, k, v, mask, scale, is_causal, dropout_p, seed):
    batch, heads, queries, _ = q.shape
    return (q.new_empty((batch, heads, queries, v.shape[-1])),
            q.new_empty((batch, heads, queries), dtype=torch.float32))


def _attention_bwd_fake(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, mask, scale, is_causal, dropout_p, seed = inputs
    out, lse = output
    # O(B * H * L) beyond the inputs and the output: nothing of size L * S is kept.
    ctx.save_for_backward(q, k, v, out, lse, mask, seed)
    ctx.scale, ctx.is_causal, ctx.dropout_p = scale, is_causal, dropout_p


def _attention_autograd(bwd_op):
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, mask, seed = ctx.saved_tensors
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        dq, dk, dv = bwd_op(grad_out, q, k, v, out, lse, mask, ctx.scale, ctx.is_causal, ctx.dropout_p, seed)
        return dq, dk, dv, None, None, None, None, None

    return backward


# ---- registration --------------------------------------------------------------------------

# op -> (forward fake, backward fake, setup_context, backward formula factory)
_FORMULAS = {
    "layer_norm": (_layer_norm_fwd_fake, _layer_norm_bwd_fake, _layer_norm_setup_context, _layer_norm_autograd),
    "rms_norm": (_rms_norm_fwd_fake, _rms_norm_bwd_fake, _rms_norm_setup_context, _rms_norm_autograd),
    "softmax": (_softmax_fwd_fake, _softmax_bwd_fake, _softmax_setup_context, _softmax_autograd),
    "attention": (_attention_fwd_fake, _attention_bwd_fake, _attention_setup_context, _attention_autograd),
}


def _register(op, backend):
    fwd_fake, bwd_fake, setup_context, autograd = _FORMULAS[op]
    fwd_name, bwd_name = f"fasttx::{op}_fwd_{backend}", f"fasttx::{op}_bwd_{backend}"
    torch.library.register_fake(fwd_name)(fwd_fake)
    torch.library.register_fake(bwd_name)(bwd_fake)
    bwd_op = getattr(torch.ops.fasttx, f"{op}_bwd_{backend}").default
    torch.library.register_autograd(fwd_name, autograd(bwd_op), setup_context=setup_context)


def op(name, direction, backend):
    """The OpOverload ``fasttx::{name}_{direction}_{backend}``."""
    return getattr(torch.ops.fasttx, f"{name}_{direction}_{backend}").default


# ---- Triton ops ----------------------------------------------------------------------------


@torch.library.custom_op("fasttx::layer_norm_fwd_triton", mutates_args=())
def layer_norm_fwd_triton(
    input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_kernels.layer_norm import layer_norm_fwd

    return layer_norm_fwd(input, weight, bias, eps)


@torch.library.custom_op("fasttx::layer_norm_bwd_triton", mutates_args=())
def layer_norm_bwd_triton(
    grad_out: Tensor, input: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_kernels.layer_norm import layer_norm_bwd

    return layer_norm_bwd(grad_out, input, weight, mean, rstd, has_bias)


@torch.library.custom_op("fasttx::rms_norm_fwd_triton", mutates_args=())
def rms_norm_fwd_triton(input: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    from .triton_kernels.rms_norm import rms_norm_fwd

    return rms_norm_fwd(input, weight, eps)


@torch.library.custom_op("fasttx::rms_norm_bwd_triton", mutates_args=())
def rms_norm_bwd_triton(
    grad_out: Tensor, input: Tensor, weight: Optional[Tensor], rstd: Tensor
) -> tuple[Tensor, Tensor]:
    from .triton_kernels.rms_norm import rms_norm_bwd

    return rms_norm_bwd(grad_out, input, weight, rstd)


@torch.library.custom_op("fasttx::softmax_fwd_triton", mutates_args=())
def softmax_fwd_triton(
    input: Tensor, mask: Optional[Tensor], scale: float, is_causal: bool, out_dtype: torch.dtype
) -> Tensor:
    from .triton_kernels.softmax import softmax_fwd

    # The kernel reads the mask through the 0 strides of this view: nothing is materialised.
    return softmax_fwd(input, None if mask is None else mask.expand(input.shape), scale, is_causal, out_dtype)


@torch.library.custom_op("fasttx::softmax_bwd_triton", mutates_args=())
def softmax_bwd_triton(out: Tensor, grad_out: Tensor, scale: float, in_dtype: torch.dtype) -> Tensor:
    from .triton_kernels.softmax import softmax_bwd

    return softmax_bwd(out, grad_out, scale, in_dtype)


@torch.library.custom_op("fasttx::attention_fwd_triton", mutates_args=())
def attention_fwd_triton(
    q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float, is_causal: bool,
    dropout_p: float, seed: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    from .triton_kernels.attention import attention_fwd

    return attention_fwd(q, k, v, mask, scale, is_causal, dropout_p, seed)


@torch.library.custom_op("fasttx::attention_bwd_triton", mutates_args=())
def attention_bwd_triton(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Optional[Tensor],
    scale: float, is_causal: bool, dropout_p: float, seed: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_kernels.attention import attention_bwd

    return attention_bwd(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed)


for _op in _FORMULAS:
    _register(_op, "triton")


def has_op(name, backend):
    return hasattr(torch.ops.fasttx, f"{name}_fwd_{backend}")


def register_cuda_ops():
    """Fake and autograd for the C++ ops; called by fasttx._extension once fasttx._C is loaded."""
    for name in _FORMULAS:
        if has_op(name, "cuda"):
            _register(name, "cuda")
