"""Attention, FlashAttention-2 style (Dao, 2023): O = dropout(softmax(scale * Q K^T + mask)) V.

Launchers without autograd, for (B, H, L, E) queries and (B, Hkv, S, E) / (B, Hkv, S, Ev) keys and values
with any strides but a contiguous last dim, grouped-query heads, bool / float masks broadcast to
(B, H, L, S) through 0 strides, top-left causal masking and Philox dropout:
    attention_fwd(q, k, v, mask, scale, is_causal, dropout_p, seed) -> (o, lse)
    attention_bwd(do, q, k, v, o, lse, mask, scale, is_causal, dropout_p, seed, deterministic=True) -> (dq, dk, dv)
    dropout_keep_mask(seed, B, H, L, S, dropout_p, device) -> the (B, H, L, S) keep mask both draw
``seed`` is an int64 tensor of one element, read by the kernels from device memory (None without
dropout). The forward, the conventions (fully masked rows: o = 0, lse = +inf) and the launch
configurations are in attention_fwd.py, the backward in attention_bwd.py, what both share (kernel
arguments, grid, autotuning) in attention_common.py.
"""

from .attention_bwd import attention_bwd
from .attention_fwd import attention_fwd, dropout_keep_mask

__all__ = ["attention_bwd", "attention_fwd", "dropout_keep_mask"]
