"""Scaled dot-product attention in eager PyTorch, accumulated in fp32 (fp64 for fp64 input).

The semantics of torch.nn.functional.scaled_dot_product_attention, except that a query row
whose keys are all masked out gives output 0 and zero gradients instead of NaN (it goes through
fasttx's softmax reference). ``dropout_mask`` (bool, True = kept) replaces the random draw, so
that tests can reproduce a kernel's dropout.
"""

import math

import torch

from .softmax import softmax


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, dropout_mask=None):
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        group = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(group, dim=-3), value.repeat_interleave(group, dim=-3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query.to(acc) @ key.to(acc).transpose(-2, -1)
    probs = softmax(scores, -1, scale, attn_mask, is_causal)
    if dropout_mask is None and dropout_p > 0:
        dropout_mask = torch.rand_like(probs) >= dropout_p
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1 - dropout_p)
    return (probs @ value.to(acc)).to(query.dtype)
