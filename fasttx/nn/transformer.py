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
  computes the exact GELU the module defines, in every mode. Ours runs torch's forward, and so its
  kernel, only where that computes what ours would and is faster: small inputs in inference on CPU
  (_backend.torch_inference_kernel_applies), and nested-tensor input, which only that kernel takes.
- TransformerEncoder: torch's turns padded batches into nested tensors in eval mode; ours passes
  the key-padding mask to the kernels, which read it through broadcast strides.
- TransformerEncoder / TransformerDecoder: torch detects a causal mask (is_causal=None) by
  comparing it with one it builds, a data-dependent branch; ours skips that under torch.compile.
Masks keep their dtype: bool masks go to the kernels as bool, not converted to float first.
"""

import torch

from ._backend import BackendMixin, torch_inference_kernel_applies
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

    def _torch_inference_kernel_applies(self, src, src_mask, src_key_padding_mask, is_causal):
        """torch's own forward runs its fused inference kernel on this call and computes what ours
        would (_backend.torch_inference_kernel_applies; the attention's conditions: fused_kernel_takes)."""
        attn, norms = self.self_attn, (self.norm1, self.norm2)
        return (not self.training and src_mask is None and not is_causal and self.activation_relu_or_gelu
                and isinstance(attn, torch.nn.MultiheadAttention) and all(isinstance(n, torch.nn.LayerNorm) for n in norms)
                and self.norm1.eps == self.norm2.eps and fused_kernel_takes(attn, src)
                and torch_inference_kernel_applies(self, src, src_key_padding_mask,
                                                   [("attention", attn), ("layer_norm", self.norm1),
                                                    ("layer_norm", self.norm2)]))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if getattr(src, "is_nested", False):  # only torch's kernel takes nested tensors
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        if self._torch_inference_kernel_applies(src, src_mask, src_key_padding_mask, is_causal):
            try:
                return super().forward(src, src_mask, src_key_padding_mask, is_causal)
            except (RuntimeError, ValueError, TypeError, AssertionError):
                pass  # fasttx's path below: its attention's checks name the argument
        x = src
        if self.norm_first:
            x = x + self._attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def _attention(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(BackendMixin, torch.nn.TransformerDecoderLayer):
    """torch's forward as is: it has no fast path, and calls self_attn / multihead_attn / norms,
    which are fasttx modules here."""

    _fasttx_op = "attention"


class TransformerEncoder(BackendMixin, torch.nn.TransformerEncoder):
    """``encoder_layer`` may be a torch.nn or a fasttx TransformerEncoderLayer: its copies become
    fasttx layers."""

    _fasttx_op = "attention"

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        batch_first = self.layers[0].self_attn.batch_first
        is_causal = _is_causal_mask(mask, is_causal, _seq_len(src, batch_first))
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return output if self.norm is None else self.norm(output)


class TransformerDecoder(BackendMixin, torch.nn.TransformerDecoder):
    """``decoder_layer`` may be a torch.nn or a fasttx TransformerDecoderLayer: its copies become
    fasttx layers."""

    _fasttx_op = "attention"

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
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

