"""One declaration per op: everything the registration and the cross-cutting tests need to know.

Each op ``<name>`` is a pair of custom ops per backend, ``fasttx::<name>_{fwd,bwd}_<backend>``.
Its declaration gives their schemas, fakes and autograd formula, the Triton implementations, the
public wrapper they serve, and the inputs the cross-cutting tests run: forward samples for
``torch.library.opcheck``, and an example model (the op called through its public wrapper, as a
user's model calls it) for the ``torch.compile(fullgraph=True)``, autocast and DDP tests.
fasttx._ops registers the ops from DECLARATIONS; tests/test_torch_integration.py,
tests/test_cuda_extension.py and tests/test_distributed.py are parametrized over it, and fail for
a ``torch.ops.fasttx`` op that has no declaration. A new op is a new entry at the end of this file.

This is a separate module from fasttx._ops, which holds only the registration mechanics: what an
op *is* is read here, in one place per op, without the torch.library plumbing around it.

Tensor layouts the kernels take (fasttx.functional reshapes): norm ops 2-D contiguous (rows,
hidden); softmax ops a contiguous (A, B, L, C) input and a 4-D mask broadcastable to it; attention
ops (B, H, L, E) / (B, Hkv, S, E) / (B, Hkv, S, Ev) with a contiguous last dim, a mask
broadcastable to (B, H, L, S) and the dropout seed as an int64 scalar tensor. Missing weight /
bias gradients come back as empty (0,) tensors, since schemas cannot return None. Autocast: the
ops cast nothing (see fasttx.functional for each op's policy). Double backward is not supported.
"""

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Example:
    """A small model running the op through its public wrapper, shape-preserving: model(x) has x's
    shape, so every test can draw a target like x. Its sizes do not depend on the backend, so the
    same seed builds the same model for each backend."""

    model: Callable  # backend -> torch.nn.Module (fp32, CPU)
    input_shape: tuple  # of x; dim 0 is the batch, which the DDP test splits between processes
    dtype: Callable = lambda backend: torch.float32  # of model and x outside autocast, per backend


@dataclass(frozen=True)
class OpDeclaration:
    name: str  # the ops are fasttx::<name>_{fwd,bwd}_<backend>
    functional: str  # the public wrapper the ops serve, fasttx.<functional>
    fwd_schema: str  # "(arguments) -> returns": the Triton ops are defined with it, the C++ ones checked against it
    bwd_schema: str
    fwd_fake: Callable
    bwd_fake: Callable
    setup_context: Callable  # (ctx, inputs, output) of the forward op: what its backward keeps (fasttx._ops)
    backward: Callable  # bwd_op -> the forward op's backward formula
    triton_fwd: Callable  # implementations of the Triton ops; they import Triton only when called
    triton_bwd: Callable
    samples: Callable  # (requires_grad, backend, device) -> forward argument tuples for opcheck
    bwd_sample: Callable  # (forward arguments, forward outputs) -> backward arguments for opcheck
    example: Example
    bench: str  # the module of fasttx.benchmarks that times it (its OPS lists ``name``)
    backends: tuple = ("triton", "cuda")  # the kernel backends; "torch" is fasttx.functional.native


def _empty_grad(like):
    return like.new_empty((0,))


def _linear_then(module):
    """Linear(48, 48) then ``module``: under autocast the Linear hands it a low-precision input."""
    return torch.nn.Sequential(torch.nn.Linear(48, 48), module)


def _norm_samples(requires_grad, device):
    """(rows, hidden) input, weight, bias."""
    return (torch.randn(*shape, device=device, requires_grad=requires_grad) for shape in ((5, 33), (33,), (33,)))


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


def _layer_norm_fwd_triton(input, weight, bias, eps):
    from .triton_kernels.layer_norm import layer_norm_fwd

    return layer_norm_fwd(input, weight, bias, eps)


def _layer_norm_bwd_triton(grad_out, input, weight, mean, rstd, has_bias):
    from .triton_kernels.layer_norm import layer_norm_bwd

    return layer_norm_bwd(grad_out, input, weight, mean, rstd, has_bias)


def _layer_norm_samples(requires_grad, backend, device):
    x, w, b = _norm_samples(requires_grad, device)
    return [(x, w, b, 1e-5), (x, None, None, 1e-5), (x, None, b, 1e-3)]


def _layer_norm_example(backend):
    from .nn import LayerNorm

    return _linear_then(LayerNorm(48, backend=backend))


LAYER_NORM = OpDeclaration(
    name="layer_norm",
    functional="layer_norm",
    fwd_schema="(Tensor input, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)",
    bwd_schema="(Tensor grad_out, Tensor input, Tensor? weight, Tensor mean, Tensor rstd, bool has_bias)"
               " -> (Tensor, Tensor, Tensor)",
    fwd_fake=_layer_norm_fwd_fake,
    bwd_fake=_layer_norm_bwd_fake,
    setup_context=_layer_norm_setup_context,
    backward=_layer_norm_autograd,
    triton_fwd=_layer_norm_fwd_triton,
    triton_bwd=_layer_norm_bwd_triton,
    samples=_layer_norm_samples,
    bwd_sample=lambda args, outputs: (torch.randn_like(args[0]), args[0], args[1], outputs[1], outputs[2],
                                      args[2] is not None),
    example=Example(_layer_norm_example, (8, 5, 48)),
    bench="norms",
)


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


def _rms_norm_fwd_triton(input, weight, eps):
    from .triton_kernels.rms_norm import rms_norm_fwd

    return rms_norm_fwd(input, weight, eps)


def _rms_norm_bwd_triton(grad_out, input, weight, rstd):
    from .triton_kernels.rms_norm import rms_norm_bwd

    return rms_norm_bwd(grad_out, input, weight, rstd)


def _rms_norm_samples(requires_grad, backend, device):
    x, w, _ = _norm_samples(requires_grad, device)
    return [(x, w, 1e-5), (x, None, 1e-6)]


def _rms_norm_example(backend):
    from .nn import RMSNorm

    return _linear_then(RMSNorm(48, backend=backend))


RMS_NORM = OpDeclaration(
    name="rms_norm",
    functional="rms_norm",
    fwd_schema="(Tensor input, Tensor? weight, float eps) -> (Tensor, Tensor)",
    bwd_schema="(Tensor grad_out, Tensor input, Tensor? weight, Tensor rstd) -> (Tensor, Tensor)",
    fwd_fake=_rms_norm_fwd_fake,
    bwd_fake=_rms_norm_bwd_fake,
    setup_context=_rms_norm_setup_context,
    backward=_rms_norm_autograd,
    triton_fwd=_rms_norm_fwd_triton,
    triton_bwd=_rms_norm_bwd_triton,
    samples=_rms_norm_samples,
    bwd_sample=lambda args, outputs: (torch.randn_like(args[0]), args[0], args[1], outputs[1]),
    example=Example(_rms_norm_example, (8, 5, 48)),
    bench="norms",
)


# ---- softmax -------------------------------------------------------------------------------


def _softmax_fwd_fake(input, mask, scale, is_causal, out_dtype):
    return input.new_empty(input.shape, dtype=out_dtype)


def _softmax_bwd_fake(out, grad_out, scale, is_causal, in_dtype):
    return out.new_empty(out.shape, dtype=in_dtype)


def _softmax_setup_context(ctx, inputs, output):
    input, mask, scale, is_causal, _out_dtype = inputs
    ctx.save_for_backward(output)
    ctx.scale, ctx.is_causal, ctx.in_dtype = scale, is_causal, input.dtype
    ctx.mask_dtype = None if mask is None or mask.dtype == torch.bool else mask.dtype
    ctx.mask_shape = None if mask is None else mask.shape


def _softmax_autograd(bwd_op):
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # is_causal: the backward reads y and dy only up to each row's causal limit (y is 0 past it).
        dx = bwd_op(out, grad_out, ctx.scale, ctx.is_causal, ctx.in_dtype) if ctx.needs_input_grad[0] else None
        # A float mask is added after the scale: its gradient is the logits' gradient, unscaled,
        # summed over the dims the mask broadcasts along.
        dmask = None
        if ctx.mask_dtype is not None and ctx.needs_input_grad[1]:
            dmask = bwd_op(out, grad_out, 1.0, ctx.is_causal, ctx.mask_dtype).sum_to_size(ctx.mask_shape)
        return dx, dmask, None, None, None

    return backward


def _softmax_fwd_triton(input, mask, scale, is_causal, out_dtype):
    from .triton_kernels.softmax import softmax_fwd

    # The kernel reads the mask through the 0 strides of this view: nothing is materialised.
    return softmax_fwd(input, None if mask is None else mask.expand(input.shape), scale, is_causal, out_dtype)


def _softmax_bwd_triton(out, grad_out, scale, is_causal, in_dtype):
    from .triton_kernels.softmax import softmax_bwd

    return softmax_bwd(out, grad_out, scale, is_causal, in_dtype)


def _softmax_samples(requires_grad, backend, device):
    x = torch.randn(2, 3, 4, 33, device=device, requires_grad=requires_grad)
    key_padding = (torch.rand(2, 1, 1, 33, device=device) > 0.3).expand(2, 3, 4, 33)
    bias = torch.randn(4, 33, device=device, requires_grad=requires_grad).expand(2, 3, 4, 33)
    return [(x, None, 1.0, False, torch.float32), (x, key_padding, 0.5, True, torch.float32),
            (x, bias, 2.0, False, torch.float16)]


class _MaskedSoftmax(torch.nn.Module):
    """softmax(0.5 h, mask) * h, h = Linear(x), the mask built inside the model (in the graph)."""

    def __init__(self, backend):
        super().__init__()
        self.proj, self.backend = torch.nn.Linear(48, 48), backend

    def forward(self, x):
        from .functional import softmax

        h = self.proj(x)
        keep = torch.arange(h.shape[-1], device=h.device) % 5 != 0
        return softmax(h, -1, scale=0.5, mask=keep, backend=self.backend) * h


SOFTMAX = OpDeclaration(
    name="softmax",
    functional="softmax",
    fwd_schema="(Tensor input, Tensor? mask, float scale, bool is_causal, ScalarType out_dtype) -> Tensor",
    bwd_schema="(Tensor out, Tensor grad_out, float scale, bool is_causal, ScalarType in_dtype) -> Tensor",
    fwd_fake=_softmax_fwd_fake,
    bwd_fake=_softmax_bwd_fake,
    setup_context=_softmax_setup_context,
    backward=_softmax_autograd,
    triton_fwd=_softmax_fwd_triton,
    triton_bwd=_softmax_bwd_triton,
    samples=_softmax_samples,
    bwd_sample=lambda args, out: (out, torch.randn_like(args[0]), args[2], args[3], args[0].dtype),
    example=Example(_MaskedSoftmax, (8, 5, 48)),
    bench="softmax",
)


# ---- attention -----------------------------------------------------------------------------


# deterministic=True in the signatures as in the schemas: the dispatcher calls the implementations and
# fakes without an argument whose value is the schema's default.
def _attention_fwd_fake(q, k, v, mask, scale, is_causal, dropout_p, seed, deterministic=True):
    batch, heads, queries, _ = q.shape
    return (q.new_empty((batch, heads, queries, v.shape[-1])),
            q.new_empty((batch, heads, queries), dtype=torch.float32))


def _attention_bwd_fake(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed,
                        deterministic=True):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, mask, scale, is_causal, dropout_p, seed, deterministic = inputs
    out, lse = output
    # O(B * H * L) beyond the inputs and the output: nothing of size L * S is kept.
    ctx.save_for_backward(q, k, v, out, lse, mask, seed)
    ctx.scale, ctx.is_causal, ctx.dropout_p, ctx.deterministic = scale, is_causal, dropout_p, deterministic


def _attention_autograd(bwd_op):
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, mask, seed = ctx.saved_tensors
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        dq, dk, dv = bwd_op(grad_out, q, k, v, out, lse, mask, ctx.scale, ctx.is_causal, ctx.dropout_p, seed,
                            ctx.deterministic)
        return dq, dk, dv, None, None, None, None, None, None

    return backward


def _attention_fwd_triton(q, k, v, mask, scale, is_causal, dropout_p, seed, deterministic=True):
    from .triton_kernels.attention import attention_fwd

    return attention_fwd(q, k, v, mask, scale, is_causal, dropout_p, seed)  # deterministic: the backward's


def _attention_bwd_triton(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed,
                          deterministic=True):
    from .triton_kernels.attention import attention_bwd

    return attention_bwd(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed, deterministic)


def _attention_dtype(backend):
    """The CUDA kernels take fp16 / bf16 only; the other backends get fp32."""
    return torch.float16 if backend == "cuda" else torch.float32


def _attention_samples(requires_grad, backend, device):
    """The CUDA kernels take E == Ev in 32, 64, 96, 128, 256; the others get unequal head dims."""
    dtype = _attention_dtype(backend)
    e, ev = (32, 32) if backend == "cuda" else (16, 8)
    q = torch.randn(2, 2, 5, e, device=device, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(2, 1, 7, e, device=device, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(2, 1, 7, ev, device=device, dtype=dtype, requires_grad=requires_grad)
    key_padding = torch.rand(2, 1, 1, 7, device=device) > 0.3
    bias = torch.randn(1, 1, 5, 7, device=device, dtype=dtype)
    seed = torch.tensor(1234, dtype=torch.int64)
    # deterministic=False: the Triton backward's atomic dQ (the C++ one's needs its sm_90a kernels).
    return [(q, k, v, None, 0.25, False, 0.0, None, True), (q, k, v, key_padding, 0.25, False, 0.0, None, False),
            (q, k, v, bias, 0.5, False, 0.2, seed, False), (q, k, v, None, 0.25, True, 0.0, None, True)]


class _CrossAttention(torch.nn.Module):
    """The last 9 of 11 tokens attend to all 11 (L != S), 4 query heads to 2 key / value heads
    (GQA), head dim 32 (the CUDA kernels' smallest), a key padding mask built in the model; the
    first 2 tokens pass through, so the output has the input's shape."""

    heads, kv_heads, head_dim = 4, 2, 32

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.q = torch.nn.Linear(24, self.heads * self.head_dim)
        self.kv = torch.nn.Linear(24, 2 * self.kv_heads * self.head_dim)
        self.out = torch.nn.Linear(self.heads * self.head_dim, 24)

    def forward(self, x):
        from .functional import scaled_dot_product_attention

        batch, keys, _ = x.shape
        queries = keys - 2
        # (B, L, H*E) projections viewed as (B, H, L, E), as a module makes them: strided, last dim contiguous.
        q = self.q(x[:, 2:]).view(batch, queries, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(batch, keys, 2 * self.kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        key_padding = (torch.arange(keys, device=x.device) % 4 != 3).view(1, 1, 1, keys)
        out = scaled_dot_product_attention(q, k, v, attn_mask=key_padding, enable_gqa=True, backend=self.backend)
        out = self.out(out.transpose(1, 2).reshape(batch, queries, self.heads * self.head_dim))
        return torch.cat([x[:, :2], out], dim=1)


ATTENTION = OpDeclaration(
    name="attention",
    functional="scaled_dot_product_attention",
    # deterministic: whether the backward may use atomic adds (the Triton one's dQ; False lets it, see
    # fasttx.scaled_dot_product_attention); in the forward's schema so that the autograd formula has it.
    fwd_schema="(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, bool is_causal, float dropout_p,"
               " Tensor? seed, bool deterministic=True) -> (Tensor, Tensor)",
    bwd_schema="(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask,"
               " float scale, bool is_causal, float dropout_p, Tensor? seed, bool deterministic=True)"
               " -> (Tensor, Tensor, Tensor)",
    fwd_fake=_attention_fwd_fake,
    bwd_fake=_attention_bwd_fake,
    setup_context=_attention_setup_context,
    backward=_attention_autograd,
    triton_fwd=_attention_fwd_triton,
    triton_bwd=_attention_bwd_triton,
    samples=_attention_samples,
    bwd_sample=lambda args, outputs: (torch.randn_like(outputs[0]), *args[:3], *outputs, *args[3:]),
    example=Example(_CrossAttention, (8, 11, 24), dtype=_attention_dtype),
    bench="attention",
)


DECLARATIONS = {d.name: d for d in (LAYER_NORM, RMS_NORM, SOFTMAX, ATTENTION)}
