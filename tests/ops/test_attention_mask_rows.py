"""The Triton attention's row-broadcast mask path (MASK_ROWS_BROADCAST, attention_common.py "Masks"): a
mask whose query rows are all the same, key padding (B, 1, 1, S) above all, is read as one vector of keys
per key block. Which launches take it, and its forward and every gradient against the float64 reference
(test_attention.check), in the forward, the dK/dV and dQ kernels and the atomic-dQ backward."""

import pytest
import torch

from fasttx import reference
from fasttx.testing import assert_close
from fasttx.triton_kernels import attention_common

from ..conftest import DEVICE
from .test_attention import BACKENDS, attention_inputs, check, gradient_scales, run_with_grads

TRITON = [b for b in BACKENDS if b == "triton"]
B, H, L, S, E = 2, 4, 12, 45, 16  # S = 45: the last of the interpreter's 16-key blocks is partial


def key_padding(shape, kind, dtype, spread=1):
    """A mask of ``shape`` (its L dim 1), keys kept with probability 0.7 and, where the shape has more than
    one batch, every key of batch 0 padded (its rows fully masked). Float: random values, -inf where padded.
    ``spread``: the keys' stride in its storage (non-contiguous for 2)."""
    storage = (*shape[:-1], shape[-1] * spread)
    keep = torch.rand(storage, device=DEVICE) > 0.3
    if shape[0] > 1:
        keep[0] = False
    mask = keep if kind == "bool" else torch.randn(storage, device=DEVICE).masked_fill(~keep, float("-inf")).to(dtype)
    return mask[..., ::spread]


def launch_args(mask, queries=L):
    q = torch.empty(B, H, queries, E)
    return attention_common.kernel_args(q, q[:, :, :1].expand(B, H, S, E), q[:, :, :1].expand(B, H, S, E), mask, None,
                                        0.25, False, 0.0, tma=False)


@pytest.mark.parametrize("shape,rows_broadcast", [
    ((B, 1, 1, S), True), ((1, 1, 1, S), True), ((B, H, 1, S), True), ((1, H, 1, S), True),
    ((B, 1, L, S), False), ((1, 1, L, S), False), ((B, H, L, S), False)], ids=str)
def test_launch_takes_the_vector_path_for_row_broadcast_masks_only(shape, rows_broadcast):
    """The launcher's one decision (mask_rows_broadcast on the strides broadcast to (B, H, L, S)): a 0
    row stride takes the vector path, a full mask keeps the tile; without a mask nothing is read."""
    for dtype in (torch.bool, torch.float16):
        mask = torch.zeros(shape, dtype=dtype)
        assert launch_args(mask)["MASK_ROWS_BROADCAST"] is rows_broadcast, (shape, dtype)
    assert launch_args(None)["MASK_ROWS_BROADCAST"] is False


def test_one_query_row_is_a_row_broadcast():
    """With L = 1 every mask has one row, whatever its row stride: the vector path too."""
    assert launch_args(torch.zeros(B, H, 1, S, dtype=torch.bool), queries=1)["MASK_ROWS_BROADCAST"]
    assert attention_common.mask_rows_broadcast((S, S, S, 1), 1)
    assert not attention_common.mask_rows_broadcast((S, S, S, 1), 2)
    assert attention_common.mask_rows_broadcast((S, 0, 0, 1), 7)


def test_vector_buffers_admit_more_stages_on_tma_without_dropout_only():
    """The pruning models a row-broadcast mask's buffers as vectors on the TMA path without dropout: the
    forward's (128, 128, 8, 3) at head dim 128, bf16, keeps its 3 stages with an fp32 key-padding mask (2
    with a tile); with dropout or on the pointer path the tile's model applies all the same (what the
    vectors would admit there spills: attention_common.mask_vector_buffers)."""
    from fasttx.triton_kernels.attention_fwd import FWD_SPACE, fwd_shared_memory

    def kept(rows_broadcast, tma, dropout):
        vectors = attention_common.mask_vector_buffers(rows_broadcast, tma, dropout)
        return attention_common.space_configs(FWD_SPACE, fwd_shared_memory, 128, 128, 2, 4,
                                              attention_common.DEFAULT_SHARED_MEMORY, (), dropout, vectors)

    assert (128, 128, 8, 3) in kept(True, True, False) and (128, 128, 8, 3) not in kept(False, True, False)
    assert (128, 128, 8, 2) in kept(False, True, False)
    for tma, dropout in ((True, True), (False, False), (False, True)):
        assert kept(True, tma, dropout) == kept(False, tma, dropout), (tma, dropout)
    assert attention_common.mask_buffer_bytes(128, 128, 3, 4, True) * 128 == \
        attention_common.mask_buffer_bytes(128, 128, 3, 4, False)


@pytest.mark.parametrize("kind,dtype", [("bool", torch.float16), ("float", torch.float16), ("float", torch.float32)],
                         ids=str)
@pytest.mark.parametrize("shape", [(B, 1, 1, S), (1, 1, 1, S), (B, H, 1, S)], ids=str)
@pytest.mark.parametrize("backend", TRITON)
def test_key_padding_masks(backend, shape, kind, dtype):
    q, k, v = attention_inputs(B, H, H, L, S, E, dtype=dtype)
    mask = key_padding(shape, kind, dtype)
    assert launch_args(mask)["MASK_ROWS_BROADCAST"]
    out = check(q, k, v, backend, attn_mask=mask)
    assert torch.isfinite(out).all()
    if shape[0] > 1:  # batch 0: every key padded
        assert (out[0] == 0).all()


CASES = ["causal", "dropout", "gqa", "non-contiguous", "atomic dQ", "causal, dropout, gqa, atomic dQ", "one query"]


def launched(q, k, v, dy, mask, scale, is_causal, dropout_p, seed, deterministic):
    """(o, dq, dk, dv) of the Triton launchers: the public op takes no mask with is_causal (as torch)."""
    from fasttx.triton_kernels.attention import attention_bwd, attention_fwd

    o, lse = attention_fwd(q, k, v, mask, scale, is_causal, dropout_p, seed)
    return (o, *attention_bwd(dy, q, k, v, o, lse, mask, scale, is_causal, dropout_p, seed, deterministic))


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", TRITON)
def test_key_padding_with(backend, case, kind):
    """(B, 1, 1, S) key padding with causal masking, dropout (the keep mask the kernels draw), grouped-query
    heads (the dK/dV kernel's loop over the group's heads), mask storage with a key stride of 2, the
    atomic-dQ backward, all of them at once, and one query row: the launchers' output and gradients
    against float64 (fp32 inputs, the shared tolerance)."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    dtype, scale, p = torch.float32, E**-0.5, 0.2 if "dropout" in case else 0.0
    queries = 1 if case == "one query" else L
    kv_heads = 1 if "gqa" in case else H
    q, k, v = attention_inputs(B, H, kv_heads, queries, S, E, dtype=dtype)
    dy = torch.randn(B, H, queries, E, device=DEVICE)
    mask = key_padding((B, 1, 1, S), kind, dtype, spread=2 if case == "non-contiguous" else 1)
    assert mask.is_contiguous() == (case != "non-contiguous")
    kw = dict(attn_mask=mask, is_causal="causal" in case, enable_gqa=kv_heads != H, scale=scale)
    seed, keep = None, None
    if p:
        seed = torch.tensor(1234, dtype=torch.int64, device=DEVICE)
        keep = dropout_keep_mask(1234, B, H, queries, S, p, q.device)
    ours = launched(q, k, v, dy, mask, scale, kw["is_causal"], p, seed, "atomic dQ" not in case)
    ref = run_with_grads(lambda *t: reference.scaled_dot_product_attention(*t, **kw, dropout_p=p, dropout_mask=keep),
                         (q, k, v), dy, torch.Tensor.double)
    scales = (0.0, *gradient_scales(q, k, v, dy, **kw))
    for name, out, expected, size in zip(["output", "grad q", "grad k", "grad v"], ours, ref, scales):
        assert_close(out, expected, dtype, name, size)
    assert (ours[0][0] == 0).all() and (ours[1][0] == 0).all()  # batch 0: every key padded
