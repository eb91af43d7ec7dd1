"""fasttx.nn Transformer layers and stacks: torch.nn's, with fasttx attention and LayerNorm inside.

Each subclasses its torch.nn namesake, so constructor arguments, submodule names (self_attn,
multihead_attn, linear1, linear2, norm1..3, dropout1..3), initialisation and state_dict are
torch's own. The constructor builds torch's submodules and converts them in place into fasttx
modules (fasttx.nn._backend.convert), so the same seed gives the same parameters as torch.

Forward differs from torch's only where torch would bypass the swapped submodules, or break
torch.compile(fullgraph=True):
- TransformerEncoderLayer: torch's eval-mode fast path calls a fused native kernel instead of
  ``self_attn``; ours runs the submodules (through the fused fasttx kernels). On CUDA that native
  kernel computes a "gelu" activation as its tanh approximation (torch._addmm_activation); ours
  computes the exact GELU the module defines, in every mode. Ours runs that kernel only where it
  computes what ours would and is faster: small inputs in inference on CPU
  (_backend.torch_inference_kernel_applies); and torch's forward on nested-tensor input, which only
  that kernel takes.
- TransformerEncoder: where torch's turns a padded batch into nested tensors (eval mode, no grad, a
  left-aligned key-padding mask: _torch_packs, its conditions), ours packs the real tokens into
  (T, E) rows and runs the layers on them (_packed_forward): the same output, padded positions 0,
  without nested tensors, whose attention is not fasttx's. On small CPU inputs it runs the padded
  batch through the layers instead (their fused kernel) and writes 0 at the padded positions.
  Elsewhere it passes the key-padding mask to the kernels, which read it through broadcast strides.
- TransformerEncoder / TransformerDecoder: torch detects a causal mask (is_causal=None) by
  comparing it with one it builds, a data-dependent branch; ours skips that under torch.compile.
Masks keep their dtype: bool masks go to the kernels as bool, not converted to float first.
"""

from typing import Optional

import torch
from torch import Tensor
from torch.fx import Proxy

from ._backend import (BackendMixin, forward_hooks_below, fused_kernel_masks, registered, torch_forward,
                       torch_inference_kernel_applies)
from .attention import fused_kernel_takes


def _is_causal_mask(mask, is_causal, seq_len):
    """torch's rule for the ``is_causal=None`` default: detect whether ``mask`` is the square causal
    mask. Under torch.compile the check (data-dependent) is skipped: the mask is then applied as
    given, with the same result."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    if torch.compiler.is_compiling() or mask.shape != (seq_len, seq_len):
        return False
    causal = torch.nn.Transformer.generate_square_subsequent_mask(seq_len, device=mask.device, dtype=mask.dtype)
    return bool((mask == causal).all())


def _seq_len(x, batch_first):
    return x.shape[1 if batch_first and x.dim() == 3 else 0]


class TransformerEncoderLayer(BackendMixin, torch.nn.TransformerEncoderLayer):
    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.TransformerEncoderLayer)

    def _torch_inference_kernel(self, src, src_mask, src_key_padding_mask, is_causal):
        """torch's fused inference kernel's output for this call where it computes what ours would
        (_backend.torch_inference_kernel_applies; the attention's conditions: fused_kernel_takes), else
        None. Called as torch.nn's forward calls it, under the conditions of that forward's fast path
        that keep ours to the same result (no forward hook on a submodule, which the kernel would not
        run; no __torch_function__ override, which would see the kernel instead of the submodules'
        ops), but not through that forward: its checks repeat ours, and the layer's call is ~55 us
        shorter without them on a small CPU input (it walks the submodules for hooks through
        named_modules and reads ~65 attributes through torch.nn.Module.__getattr__;
        benchmarks/notes/attention.md). A bool key-padding mask goes to the kernel as it is, which
        reads it as torch's forward's float form (True: -inf, masked out). A seq-first layer (its
        self_attn not batch_first, torch.nn's default, where torch.nn's forward never takes its kernel)
        gives the kernel its input transposed, and returns its output contiguous in the input's layout,
        as torch.nn's forward does."""
        if self.training or not self.activation_relu_or_gelu or not isinstance(src, Tensor) or src.dim() != 3:
            return None
        attn, norm1, norm2 = registered(self, "self_attn"), registered(self, "norm1"), registered(self, "norm2")
        if not (isinstance(attn, torch.nn.MultiheadAttention) and isinstance(norm1, torch.nn.LayerNorm)
                and isinstance(norm2, torch.nn.LayerNorm) and norm1.eps == norm2.eps):
            return None
        x = src if attn.batch_first else src.transpose(0, 1)
        masks = fused_kernel_masks(src_mask, is_causal, src_key_padding_mask, x, attn.num_heads)
        if not (masks is not None and fused_kernel_takes(attn, x)
                and torch_inference_kernel_applies(self, x, src_key_padding_mask,
                                                   [("attention", attn), ("layer_norm", norm1), ("layer_norm", norm2)])):
            return None
        out_proj, linear1, linear2 = registered(attn, "out_proj"), registered(self, "linear1"), registered(self, "linear2")
        if type(linear1).forward is not torch.nn.Linear.forward or type(linear2).forward is not torch.nn.Linear.forward:
            return None  # (the kernel reads their weights, where ours runs the forward they have)
        attn_weights = (registered(attn, "in_proj_weight"), registered(attn, "in_proj_bias"),
                        registered(out_proj, "weight"), registered(out_proj, "bias"))
        other_weights = (registered(norm1, "weight"), registered(norm1, "bias"), registered(norm2, "weight"),
                         registered(norm2, "bias"), registered(linear1, "weight"), registered(linear1, "bias"),
                         registered(linear2, "weight"), registered(linear2, "bias"))
        if torch._C._has_torch_function((x, *attn_weights, *other_weights)) or forward_hooks_below(self):
            return None
        try:
            out = torch._transformer_encoder_layer_fwd(
                x, attn.embed_dim, attn.num_heads, *attn_weights, self.activation_relu_or_gelu == 2, self.norm_first,
                norm1.eps, *other_weights, *masks)
        except (RuntimeError, ValueError, TypeError):
            return None  # fasttx's path: its attention's checks name the argument
        return out if attn.batch_first else out.transpose(0, 1).contiguous()

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only (_backend.torch_forward)
            return self._torch_forward(src, src_mask, src_key_padding_mask, is_causal)
        if isinstance(src, Proxy):  # torch.fx symbolic tracing (BackendMixin._traced)
            return self._traced(src, src_mask, src_key_padding_mask, is_causal)
        return self._forward(src, src_mask, src_key_padding_mask, is_causal)

    def _forward(self, src, src_mask, src_key_padding_mask, is_causal):
        if getattr(src, "is_nested", False):  # only torch's kernel takes nested tensors
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        out = self._torch_inference_kernel(src, src_mask, src_key_padding_mask, is_causal)
        if out is not None:
            return out
        return self._blocks(src, lambda x: self.self_attn(x, x, x, attn_mask=src_mask, key_padding_mask=src_key_padding_mask,
                                                          need_weights=False, is_causal=is_causal)[0])

    def _packed_forward(self, tokens, index, keep):
        """The layer on a batch given by its real tokens (MultiheadAttention._packed_self_attention's
        arguments): (T, E) -> (T, E)."""
        return self._blocks(tokens, lambda x: self.self_attn._packed_self_attention(x, index, keep))

    def _blocks(self, x, attend):
        """The layer's two residual blocks, around ``attend`` (self-attention) and the feed-forward."""
        if self.norm_first:
            x = x + self.dropout1(attend(self.norm1(x)))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self.dropout1(attend(x)))
        return self.norm2(x + self._feed_forward(x))

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(BackendMixin, torch.nn.TransformerDecoderLayer):
    """torch's forward as is: it has no fast path, and calls self_attn / multihead_attn / norms,
    which are fasttx modules here."""

    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.TransformerDecoderLayer)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        if torch.jit.is_scripting():
            return self._torch_forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                       memory_key_padding_mask, tgt_is_causal, memory_is_causal)
        if isinstance(tgt, Proxy):
            return self._traced(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                                tgt_is_causal, memory_is_causal)
        return self._torch_forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                                   tgt_is_causal, memory_is_causal)


# Up to this many input elements on CPU, TransformerEncoder runs a padded batch that torch would run as
# nested tensors through its layers as it is (torch's fused kernel per layer), then sets the padded
# positions to 0; above, it packs the real tokens (_packed_forward). Measured on this 2-core CPU, 2 layers,
# one thread, against torch.nn: padded 2.68x / packed 0.98x at 2 x 8 x 32 (half padding), 1.23-1.48x /
# 1.08-1.17x at 16384 elements, 0.81x / 1.04x at 8 x 64 x 64 (benchmarks/notes/attention.md, "The encoder
# stack in inference").
PADDED_BATCH_MAX_ELEMENTS = 2**14


class TransformerEncoder(BackendMixin, torch.nn.TransformerEncoder):
    """``encoder_layer`` may be a torch.nn or a fasttx TransformerEncoderLayer: its copies become
    fasttx layers."""

    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.TransformerEncoder)

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._torch_forward(src, mask, src_key_padding_mask, is_causal)
        if isinstance(src, Proxy):
            return self._traced(src, mask, src_key_padding_mask, is_causal)
        return self._forward(src, mask, src_key_padding_mask, is_causal)

    def _forward(self, src, mask, src_key_padding_mask, is_causal):
        keep = self._torch_packs(src, mask, src_key_padding_mask)
        if keep is not None and (not src.is_cpu or src.numel() > PADDED_BATCH_MAX_ELEMENTS):
            output = self._packed_forward(src, keep)
        elif keep is not None:
            # Small, on CPU: the padded batch, as the layers take it (torch's fused kernel per layer, where
            # it applies, beats the packed path's ~15 ops there), with the padding as torch's nested path
            # reads the mask (a float one too) and its padded positions 0. The real positions never
            # read the padded ones (masked keys), so they come out as the packed path's.
            padding = keep.logical_not()
            output = src
            for layer in self.layers:
                output = layer(output, src_key_padding_mask=padding)
            output = output.masked_fill(padding.unsqueeze(-1), 0.0)
        else:
            batch_first = self.layers[0].self_attn.batch_first
            is_causal = _is_causal_mask(mask, is_causal, _seq_len(src, batch_first))
            output = src
            for layer in self.layers:
                output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return output if self.norm is None else self.norm(output)

    def _torch_packs(self, src, mask, src_key_padding_mask):
        """Where torch's forward would run this call on nested tensors (its "sparsity fast path": the
        same conditions), the tokens it keeps, (N, S) bool; else None. There its output is 0 at padded
        positions, and ours computes the same, on the real tokens only (_packed_forward)."""
        layer = self.layers[0]
        if not (src_key_padding_mask is not None and mask is None and not layer.training
                and getattr(self, "use_nested_tensor", False) and torch.backends.mha.get_fastpath_enabled()
                and isinstance(src, torch.Tensor) and src.dim() == 3 and not src.is_nested
                and not torch.is_autocast_enabled() and src.device.type in ("cpu", "cuda", "xpu")):
            return None
        check_alignment = getattr(self, "mask_check", True)
        if check_alignment and torch.compiler.is_compiling():
            return None
        # Ours packs only layers it knows (fasttx's, whose attention reads no bias_k / zero key: torch's
        # kernel would drop them); others keep the padded batch.
        for each in self.layers:
            attn = each.self_attn if isinstance(each, TransformerEncoderLayer) else None
            if not hasattr(attn, "_packed_self_attention") or attn.bias_k is not None or attn.add_zero_attn:
                return None
        # torch reads the first layer's parameters (here all of its submodules' parameters, a superset).
        params = [src, *(p for m in (layer.self_attn, layer.self_attn.out_proj, layer.norm1, layer.norm2,
                                     layer.linear1, layer.linear2) for p in m._parameters.values() if p is not None)]
        if torch.overrides.has_torch_function(params) or (torch.is_grad_enabled()
                                                         and any(t.requires_grad for t in params)):
            return None
        # torch's mask rules: bool, or float with nonzero = padding (anything else: the padded path, whose
        # checks raise); left-aligned unless mask_check is off.
        if not (src_key_padding_mask.dtype == torch.bool or src_key_padding_mask.is_floating_point()):
            return None
        keep = src_key_padding_mask.logical_not()
        return keep if not check_alignment or torch._nested_tensor_from_mask_left_aligned(src, keep) else None

    def _packed_forward(self, src, keep):
        """The layers on the tokens ``keep`` (N, S) marks, packed into (T, E) rows: the projections,
        feed-forward and norms skip the padding, as torch's nested tensors do, and the attention runs on
        the batch cut after its last token. Padded positions are 0."""
        batch, seq, width = src.shape
        where = keep.nonzero()  # (T, 2): batch, position
        seq_used = int(where[:, 1].max()) + 1 if len(where) else 1
        keep = keep[:, :seq_used]
        index, index_used = where[:, 0] * seq + where[:, 1], where[:, 0] * seq_used + where[:, 1]
        tokens = src.reshape(batch * seq, width).index_select(0, index)
        for layer in self.layers:
            tokens = layer._packed_forward(tokens, index_used, keep)
        return tokens.new_zeros(batch * seq, width).index_copy_(0, index, tokens).view(batch, seq, width)


class TransformerDecoder(BackendMixin, torch.nn.TransformerDecoder):
    """``decoder_layer`` may be a torch.nn or a fasttx TransformerDecoderLayer: its copies become
    fasttx layers."""

    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.TransformerDecoder)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        if torch.jit.is_scripting():
            return self._torch_forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                       memory_key_padding_mask, tgt_is_causal, memory_is_causal)
        if isinstance(tgt, Proxy):
            return self._traced(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                                tgt_is_causal, memory_is_causal)
        return self._forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                             tgt_is_causal, memory_is_causal)

    def _forward(self, tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                 tgt_is_causal, memory_is_causal):
        batch_first = self.layers[0].self_attn.batch_first
        tgt_is_causal = _is_causal_mask(tgt_mask, tgt_is_causal, _seq_len(tgt, batch_first))
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                           tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        return output if self.norm is None else self.norm(output)


class Transformer(BackendMixin, torch.nn.Transformer):
    """torch's forward as is; encoder and decoder (unless custom ones are given) are fasttx's."""

    _fasttx_op = "attention"
    _torch_forward = torch_forward(torch.nn.Transformer)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Optional[Tensor] = None, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                tgt_key_padding_mask: Optional[Tensor] = None, memory_key_padding_mask: Optional[Tensor] = None,
                src_is_causal: Optional[bool] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        if torch.jit.is_scripting():
            return self._torch_forward(src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask,
                                       tgt_key_padding_mask, memory_key_padding_mask, src_is_causal, tgt_is_causal,
                                       memory_is_causal)
        if isinstance(src, Proxy):
            return self._traced(src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask, tgt_key_padding_mask,
                                memory_key_padding_mask, src_is_causal, tgt_is_causal, memory_is_causal)
        return self._torch_forward(src, tgt, src_mask, tgt_mask, memory_mask, src_key_padding_mask,
                                   tgt_key_padding_mask, memory_key_padding_mask, src_is_causal, tgt_is_causal,
                                   memory_is_causal)

