"""fasttx.nn.MultiheadAttention: torch.nn.MultiheadAttention on fasttx's fused attention.

It subclasses torch's module, so the constructor, parameters (packed ``in_proj_weight`` or
``q/k/v_proj_weight`` when kdim / vdim differ, ``in_proj_bias``, ``bias_k`` / ``bias_v``,
``out_proj``), their initialisation and the state_dict are torch's own; forward keeps torch's
signature, shapes, mask conventions (True = masked out, float = added) and return values.

How forward maps onto the kernels:
- Self-attention (``query is key is value``) makes one packed projection; the heads of q, k and v
  are strided views of its output, read in place by the kernel (batch_first either way).
- ``need_weights=False`` runs ``fasttx.scaled_dot_product_attention``: nothing of size L x S is
  stored. ``need_weights=True`` has to return the L x S weights, so it computes them with
  ``fasttx.softmax`` (scale, mask and softmax in one pass) and multiplies them by V: this costs
  the (N, H, L, S) weights in memory, as torch's module does. Where that softmax would run on
  torch (fp32 / fp64, no autocast), the masks are added to the scores inside baddbmm and torch's
  softmax runs alone, as in torch's module; rows that keep no key are reopened and zeroed
  (functional.native.reopened_float_mask).
- Masks turn into fasttx's convention once (bool: True = takes part; float: added), or into
  torch's additive form where the weights path adds them, and combine by broadcasting: a
  key-padding mask alone stays (N, 1, 1, S); with a 2-D attn_mask the merged mask is (N, 1, L, S);
  only a 3-D (N * H, L, S) attn_mask is per head.
- ``is_causal`` is torch's hint: with no key-padding mask and ``need_weights=False`` the given
  causal attn_mask is replaced by the kernel's causal masking, which skips masked key blocks.

Deliberate difference: a query row whose keys are all masked out gives output 0 (and zero
weights), never NaN.

In inference on CPU, where torch's fused kernel computes the same, it runs that kernel
(_torch_inference_kernel) for small inputs: there its one C++ call beats the ~15 of fasttx's
forward.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import Proxy

from .. import backends, functional
from ..functional import native
from ..functional._checks import check_mask_kind
from ._backend import (TORCH_INFERENCE_KERNEL_MAX_ELEMENTS, BackendMixin, fused_kernel_masks, registered,
                       torch_forward, torch_inference_kernel_applies)


def _mask_to_fasttx(mask):
    """torch's convention (bool True = masked out, float added) -> fasttx's (bool True = takes part)."""
    return None if mask is None else (~mask if mask.dtype == torch.bool else mask)


def _as_bias(mask, dtype, masked_out=False):
    """A mask as an additive float mask in ``dtype`` (kept 0, masked out -inf): a bool one marks what is
    kept (fasttx's convention) or, ``masked_out``, what is masked out (torch's). Float masks are additive
    already; None stays None."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    # (torch.where of the mask and two scalars took ~2.4x as long on CPU for a key-padding mask)
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask if masked_out else ~mask, float("-inf"))


def _combine(first, second, dtype):
    """Both masks at once: bool masks intersect; otherwise their additive forms add up (torch adds
    its canonical float masks)."""
    if first is None or second is None:
        return first if second is None else second
    if first.dtype == second.dtype == torch.bool:
        return first & second
    return _as_bias(first, dtype) + _as_bias(second, dtype)


def _every_row_kept_by(attn_mask, key_padding_mask):
    """Whether the one mask given, bool (torch's convention), leaves every query row a key, as read on the
    host (native.some_row_all, where native.readable_here: CPU, eager): then the weights path's check of
    its additive form (a reduction, and a read of it) is skipped: +1-3% of a small call's speed in
    inference with a key-padding mask, +8% with a per-head (N * H, L, S) one (benchmarks/notes/
    attention.md, "The mask inside baddbmm", "Bool masks read as bytes"). False where not read."""
    given = attn_mask if key_padding_mask is None else key_padding_mask if attn_mask is None else None
    return (given is not None and given.dtype == torch.bool and native.readable_here(given)
            and native.some_row_all(given, True) is False)


def _append_allowed_key(mask):
    """One more key column that every query may attend (the bias_kv / zero-attention key)."""
    if mask is None:
        return None
    column = (torch.ones if mask.dtype == torch.bool else torch.zeros)(
        (*mask.shape[:-1], 1), dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, column], -1)


def fused_kernel_takes(mha, x):
    """Whether torch's fused inference kernel (torch._native_multi_head_attention, in torch.nn's
    MultiheadAttention and TransformerEncoderLayer forwards) reads ``mha`` as fasttx's forward does
    for the batch-first input ``x`` (N, L, E): the conditions of torch's own fast path on the module,
    and those its encoder layer's fast path omits (bias_k / bias_v, add_zero_attn). Not batch_first:
    torch's forwards take their fast path for batch_first modules only, but its kernel reads a
    seq-first input transposed as well (callers pass it so and transpose the output back)."""
    if not (isinstance(x, torch.Tensor) and mha._qkv_same_embed_dim and mha.num_heads % 2 == 0
            and mha.bias_k is None and not mha.add_zero_attn):
        return False
    bias = registered(mha, "in_proj_bias")
    return bias is not None and x.dtype is registered(mha, "in_proj_weight").dtype is bias.dtype


class ArgumentError(ValueError, AssertionError, RuntimeError):
    """A bad argument to fasttx.nn.MultiheadAttention or its forward: a ValueError, also catchable as the
    AssertionError or RuntimeError torch.nn.MultiheadAttention raises for the same call."""


class ArgumentTypeError(TypeError, AssertionError, RuntimeError):
    """An argument of the wrong type or dtype: a TypeError, also catchable as what torch raises."""


class MultiheadAttention(BackendMixin, torch.nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` (same arguments, parameters and state_dict; see the
    module docstring), plus ``backend``: "auto", "torch", "triton" or "cuda"."""

    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.MultiheadAttention)

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, backend="auto"):
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ArgumentError(f"fasttx.nn.MultiheadAttention: embed_dim must be a positive multiple of num_heads, "
                                f"got embed_dim={embed_dim}, num_heads={num_heads}")
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device, dtype, backend=backend)

    # ---- argument checks ---------------------------------------------------------------------

    def _check(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        name = "fasttx.nn.MultiheadAttention"
        if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)):
            arg, t = next((arg, t) for arg, t in (("query", query), ("key", key), ("value", value))
                          if not isinstance(t, torch.Tensor))
            raise ArgumentTypeError(f"{name}: {arg} must be a Tensor, got {type(t).__name__}")
        dims = query.dim()
        if dims != 3 and dims != 2:
            raise ArgumentError(f"{name}: query must be 3-D (batched) or 2-D (unbatched), "
                                f"got shape {list(query.shape)}")
        batched = dims == 3
        if key.dim() != dims or value.dim() != dims:
            raise ArgumentError(f"{name}: key and value must be {dims}-D like query, got shapes "
                                f"{list(key.shape)} and {list(value.shape)}")
        for arg, t, size in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != size:
                raise ArgumentError(f"{name}: {arg} must have {size} features in its last dim, "
                                    f"got shape {list(t.shape)}")
            if t is query or t is key and arg == "value":  # (nothing to compare; reading a device costs ~0.3 us)
                continue
            if t.dtype != query.dtype:
                raise ArgumentTypeError(f"{name}: {arg} must have query's dtype {query.dtype}, got {t.dtype}")
            if t.device != query.device:
                raise RuntimeError(f"{name}: {arg} must be on query's device {query.device}, got {t.device}")
        seq_dim = 1 if batched and self.batch_first else 0
        if key is not value and key.shape[:-1] != value.shape[:-1]:
            raise ArgumentError(f"{name}: key and value must have the same batch and sequence sizes, "
                                f"got shapes {list(key.shape)} and {list(value.shape)}")
        if batched and query.shape[1 - seq_dim] != key.shape[1 - seq_dim]:
            raise ArgumentError(f"{name}: query and key must have the same batch size, got shapes "
                                f"{list(query.shape)} and {list(key.shape)} (batch_first={self.batch_first})")
        if key_padding_mask is None and attn_mask is None and not is_causal:  # (nothing more to check)
            return batched
        batch = query.shape[1 - seq_dim] if batched else 1
        queries, keys = query.shape[seq_dim], key.shape[seq_dim]
        masks = (("key_padding_mask", key_padding_mask, [(batch, keys) if batched else (keys,)], "(N, S)"),
                 ("attn_mask", attn_mask, [(queries, keys), (batch * self.num_heads, queries, keys)],
                  "(L, S) or (N * num_heads, L, S)"))
        for arg, mask, shapes, described in masks:
            if mask is None:
                continue
            try:  # dtype and device
                check_mask_kind("nn.MultiheadAttention", arg, mask, query, "query's")
            except TypeError as e:
                raise ArgumentTypeError(str(e)) from None
            if mask.dtype != torch.bool and mask.dtype != query.dtype:  # (torch's products refuse it too)
                raise ArgumentTypeError(f"{name}: a floating-point {arg} must have query's dtype {query.dtype}, "
                                        f"got {mask.dtype}")
            if tuple(mask.shape) not in shapes:
                expected = " or ".join(str(list(s)) for s in shapes)
                raise ArgumentError(f"{name}: {arg} must have shape {expected} {described}, got {list(mask.shape)}")
        if is_causal and attn_mask is None:
            raise ArgumentError(f"{name}: is_causal=True is a hint that attn_mask is the causal mask and needs "
                                f"that attn_mask (as in torch); see torch.nn.Transformer.generate_square_subsequent_mask")
        return batched

    # ---- forward -----------------------------------------------------------------------------

    def _split_heads(self, x):
        """(N, T, H * D) or, batch_first=False, (T, N, H * D) -> a (N, H, T, D) view."""
        x = x.unflatten(-1, (self.num_heads, -1))
        return x.transpose(1, 2) if self.batch_first else x.permute(1, 2, 0, 3)

    def _packed_in_proj(self):
        """in_proj_weight and in_proj_bias, the bias in the weight's dtype (torch accepts another and adds it so)."""
        weight, bias = registered(self, "in_proj_weight"), registered(self, "in_proj_bias")
        return weight, bias if bias is None or bias.dtype == weight.dtype else bias.to(weight.dtype)

    def _projections(self, query, key, value, shared_kv, self_attention):
        """The q, k, v projections in the input layout as (projection, parts): one matmul for the inputs
        they share, its output the concatenation of ``parts`` of them (self-attention: q, k, v; key is
        value: k, v after q's own)."""
        if self._qkv_same_embed_dim:
            weight, bias = self._packed_in_proj()
            if self_attention:
                return [(F.linear(query, weight, bias), 3)]
            if shared_kv:
                sizes = [self.embed_dim, 2 * self.embed_dim]
                (w_q, w_kv), (b_q, b_kv) = weight.split(sizes), bias.split(sizes) if bias is not None else (None, None)
                return [(F.linear(query, w_q, b_q), 1), (F.linear(key, w_kv, b_kv), 2)]
            weights = weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        return [(F.linear(x, w, b), 1) for x, w, b in zip((query, key, value), weights, biases)]

    def _project(self, query, key, value, shared_kv, self_attention):
        """The q, k, v projections in the input layout (views of the shared projections)."""
        return [part for projection, parts in self._projections(query, key, value, shared_kv, self_attention)
                for part in (projection.chunk(parts, -1) if parts > 1 else (projection,))]

    def _copied_heads(self, projection, parts, batch):
        """The ``parts`` (N * H, T, D) heads of a projection (T, N, parts * E) or (N, T, parts * E), as
        bmm reads them, from one copy of it (each head view of a chunk copied on its own took one copy a
        part, and 6 more autograd nodes for self-attention)."""
        heads = projection.unflatten(-1, (parts, self.num_heads, self.head_dim))
        heads = heads.permute((2, 0, 3, 1, 4) if self.batch_first else (2, 1, 3, 0, 4))
        heads = heads.reshape(parts, batch * self.num_heads, heads.shape[3], self.head_dim)
        # (One part is squeezed, not unbound: unbind's backward stacks a copy of the gradient, where a
        # seq-first q's heads are a view of its projection and its gradient needs none.)
        return heads.unbind(0) if parts > 1 else (heads.squeeze(0),)

    def _packed_self_attention(self, tokens, index, keep):
        """Self-attention (no attn_mask, no weights) of a batch_first batch given by its real tokens only:
        ``tokens`` (T, E) sit at the flat positions ``index`` (T,) of the batch's (N, S) positions, and
        ``keep`` (N, S) is True exactly there. The projections run on the T tokens; the attention on the
        (N, S) batch, zeros where no token is, with ``keep`` as its key mask. Returns (T, E).

        What torch's TransformerEncoder computes on nested tensors (fasttx.nn.TransformerEncoder's packed
        path); needs batch_first, one packed in-projection and no bias_k / add_zero_attn."""
        batch, seq = keep.shape

        def padded(t):
            return t.new_zeros(batch * seq, t.shape[-1]).index_copy_(0, index, t).view(batch, seq, -1)

        q, k, v = (self._split_heads(padded(t)) for t in self._project(tokens, tokens, tokens, True, True))
        dropout_p = self.dropout if self.training else 0.0
        out = functional.scaled_dot_product_attention(q, k, v, keep.view(batch, 1, 1, seq), dropout_p,
                                                      backend=self.backend)
        out = out.transpose(1, 2).reshape(batch * seq, -1).index_select(0, index)
        return self._out_projection(out)

    def _out_projection(self, out):
        """out_proj of the attention's output, its parameters read as registered (_backend.registered: without
        torch.nn.Module's attribute lookup)."""
        out_proj = registered(self, "out_proj")
        return F.linear(out, registered(out_proj, "weight"), registered(out_proj, "bias"))

    def _adds_mask(self, query):
        """Whether the weights path adds its masks, in torch's additive form, to the fp32 / fp64 scores
        (baddbmm) and runs torch's softmax, where fasttx's softmax would run on torch anyway: not under
        autocast, whose dtypes functional.softmax follows. In half precision the scores keep fasttx's
        masked softmax, which scales and masks in fp32 and ignores a masked-out score that overflowed to
        inf (an added -inf makes it NaN, as in torch.nn's module)."""
        return ((query.dtype is torch.float32 or query.dtype is torch.float64)
                and not torch._C._is_any_autocast_enabled() and backends.resolve("softmax", self.backend, query) == "torch")

    def _torch_inference_kernel(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                average_attn_weights, is_causal):
        """torch's fused inference kernel's (output, weights) for this call where it computes what ours
        would (_backend.torch_inference_kernel_applies), weights included (need_weights, averaged over
        the heads or not), else None. With the weights at any input size: both forwards then hold the
        L x S weights, and torch's kernel was the faster at every size measured
        (benchmarks/notes/attention.md, "The weights path"). Called as torch.nn's forward calls it, not
        through that forward, whose checks repeat ours; not where a __torch_function__ override would
        see it in place of the ops of torch.nn's other path (torch's forward takes that path then). A
        bool key-padding mask goes to the kernel as it is, which reads it as torch's forward's float
        form (True: -inf, masked out). Seq-first input (batch_first=False, torch.nn's default, where
        torch.nn's forward never takes its kernel) goes to the kernel transposed, and its output comes
        back contiguous in the input's layout, as torch.nn's forward returns it."""
        if (self.training or query is not key or key is not value or not isinstance(query, torch.Tensor)
                or query.dim() != 3):
            return None
        x = query if self.batch_first else query.transpose(0, 1)
        masks = fused_kernel_masks(attn_mask, is_causal, key_padding_mask, x, self.num_heads)
        if not (masks is not None and fused_kernel_takes(self, x)
                and torch_inference_kernel_applies(self, x, key_padding_mask, [("attention", self)],
                                                   None if need_weights else TORCH_INFERENCE_KERNEL_MAX_ELEMENTS)):
            return None
        out_proj = registered(self, "out_proj")
        weights = (registered(self, "in_proj_weight"), registered(self, "in_proj_bias"), registered(out_proj, "weight"),
                   registered(out_proj, "bias"))
        if torch._C._has_torch_function((x, *weights)):
            return None
        try:
            out, attn_weights = torch._native_multi_head_attention(
                x, x, x, self.embed_dim, self.num_heads, *weights, masks[0], need_weights, average_attn_weights,
                masks[1])
        except (RuntimeError, ValueError, TypeError):
            return None  # fasttx's path: its checks name the argument
        return (out if self.batch_first else out.transpose(0, 1).contiguous()), attn_weights

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only (_backend.torch_forward)
            return self._torch_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                       average_attn_weights, is_causal)
        if isinstance(query, Proxy):  # torch.fx symbolic tracing (BackendMixin._traced)
            return self._traced(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                                is_causal)
        return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                             is_causal)

    def _forward(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
        fused = self._torch_inference_kernel(query, key, value, key_padding_mask, need_weights, attn_mask,
                                             average_attn_weights, is_causal)
        if fused is not None:
            return fused
        batched = self._check(query, key, value, key_padding_mask, attn_mask, is_causal)
        shared_kv, self_attention = key is value, query is key and key is value
        batch_dim, seq_dim = (0, 1) if self.batch_first else (1, 0)
        if not batched:  # one sequence: a batch of 1
            query, key, value = (t.unsqueeze(batch_dim) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        batch, queries = query.shape[batch_dim], query.shape[seq_dim]

        # torch's is_causal hint: the kernel's causal masking replaces the given causal attn_mask.
        use_causal = is_causal and key_padding_mask is None and not need_weights
        add_mask = need_weights and (attn_mask is not None or key_padding_mask is not None) and self._adds_mask(query)
        every_row_kept = add_mask and _every_row_kept_by(attn_mask, key_padding_mask)
        if add_mask:  # (one op a bool mask, where fasttx's convention and then the additive form took two)
            attn_mask = _as_bias(attn_mask, query.dtype, masked_out=True)
            key_padding_mask = _as_bias(key_padding_mask, query.dtype, masked_out=True)
        else:
            attn_mask = None if use_causal else _mask_to_fasttx(attn_mask)
            key_padding_mask = _mask_to_fasttx(key_padding_mask)
        if need_weights and self.bias_k is None and not self.add_zero_attn:
            # The weights path's bmm read (N * H, T, D) heads: one copy of each projection
            # (benchmarks/notes/attention.md, "The weights path").
            q, k, v = [heads for projection, parts in self._projections(query, key, value, shared_kv, self_attention)
                       for heads in self._copied_heads(projection, parts, batch)]
        else:
            q, k, v = self._project(query, key, value, shared_kv, self_attention)
            if self.bias_k is not None:  # one learnt key / value appended to every sequence
                k = torch.cat([k, self.bias_k.expand_as(k.narrow(seq_dim, 0, 1))], seq_dim)
                v = torch.cat([v, self.bias_v.expand_as(v.narrow(seq_dim, 0, 1))], seq_dim)
                attn_mask, key_padding_mask = _append_allowed_key(attn_mask), _append_allowed_key(key_padding_mask)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if self.add_zero_attn:  # and one zero key / value, after the projection
                k, v = (torch.cat([t, t.new_zeros(*t.shape[:2], 1, t.shape[3])], 2) for t in (k, v))
                attn_mask, key_padding_mask = _append_allowed_key(attn_mask), _append_allowed_key(key_padding_mask)
        keys = k.shape[-2]  # (heads (N, H, T, D), or (N * H, T, D) where packed for the weights path)
        if attn_mask is not None and attn_mask.dim() == 3 and not (add_mask and key_padding_mask is None):
            # (N * H, L, S) -> (N, H, L, S), to combine with a key-padding mask or for the kernels; the weights
            # path adds one alone to its (N * H, L, S) scores as it is (views are ops, ~1-1.5 us each)
            attn_mask = attn_mask.view(-1, self.num_heads, queries, keys)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.view(batch, 1, 1, keys)
        mask = _combine(attn_mask, key_padding_mask, q.dtype)
        dropout_p = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            # The two products as bmm of (N * H, ., .) matrices: the heads come so from _copied_heads, and only
            # those with bias_k / add_zero_attn are reshaped here (one copy each); torch.matmul of the 4-D views
            # added ops and copied K^T element by element (benchmarks/notes/attention.md, "The weights path").
            heads, scale = batch * self.num_heads, math.sqrt(1.0 / self.head_dim)
            if q.dim() == 4:
                q, k, v = [t.reshape(heads, t.shape[2], self.head_dim) for t in (q, k, v)]
            # Scores and weights stay (N * H, L, S) unless a mask broadcasts over N and H: each view is an
            # autograd node (~1.5 us on CPU, where torch.nn's forward at 17 x 2 tokens takes ~130).
            if add_mask:
                # As torch.nn's forward: the additive mask added by baddbmm, then torch's softmax alone, where
                # fasttx's masked softmax on the scores took ~2.5x as long on CPU (the mask selected, not
                # added); the scale as baddbmm's alpha, an op less than scaling q
                # (benchmarks/notes/attention.md, "The mask inside baddbmm").
                bias, kept = native.reopened_float_mask(mask, -1, q.dtype, every_row_kept)
                if bias.dim() == 4:  # (N or 1, H or 1, L or 1, S) -> (N * H, L or 1, S)
                    bias = bias.expand(batch, self.num_heads, -1, -1).reshape(heads, bias.shape[2], keys)
                weights = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), -1)
                if kept is not None:  # (some row keeps no key: its weights 0)
                    # (4-D rows through the (N, H, L, S) view; (L or 1, 1) and (N * H, L, 1) ones broadcast as they are)
                    weights = ((weights.view(batch, self.num_heads, queries, keys) * kept).view(heads, queries, keys)
                               if kept.dim() == 4 else weights * kept)
            else:
                # q scaled before Q K^T, as torch's module scales it: then without a mask the softmax is
                # torch's alone (functional.softmax, native.runs_as_is), where a scale given to it cost the
                # (N, H, L, S) scores more passes on CPU (0.85x torch.nn's speed at d_model 256, 8 x 64 tokens).
                scores = torch.bmm(q * scale, k.transpose(1, 2))
                scores = scores if mask is None else scores.view(batch, self.num_heads, queries, keys)
                weights = functional.softmax(scores, -1, mask=mask, backend=self.backend)
                weights = weights if mask is None else weights.view(heads, queries, keys)
            if dropout_p > 0:
                weights = F.dropout(weights, dropout_p)
            out = torch.bmm(weights, v)
            weights = weights.view(batch, self.num_heads, queries, keys)
            # (N * H, L, D) -> the input layout with heads merged (seq-first: (L, N * H, D) is a transpose).
            out = (out.view(batch, self.num_heads, queries, self.head_dim).transpose(1, 2) if self.batch_first
                   else out.transpose(0, 1)).reshape(*query.shape[:2], self.embed_dim)
        else:
            out = functional.scaled_dot_product_attention(q, k, v, mask, dropout_p, use_causal, backend=self.backend)
            # (N, H, L, D) -> the input layout with heads merged, for the output projection.
            out = (out.transpose(1, 2) if self.batch_first else out.permute(2, 0, 1, 3)).flatten(-2)
        out = self._out_projection(out)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if not batched:
            out = out.squeeze(batch_dim)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights
