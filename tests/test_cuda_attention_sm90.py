"""The sm_90a attention kernels (csrc/attention/sm90) on a GPU: with FASTTX_ATTENTION_SM90=1 (their switch
until a GPU run validates them; every test here sets it), backend="cuda" at head dim 128 takes the sm_90a
forward and, in the backward, the sm_90a dK/dV and dQ kernels (also at 64 and 96) (after the sm_80 D kernel) on sm_90
devices, with or without a mask or dropout (attention_launch.cpp, attention_launch.cuh); output and
gradients against the float64 reference (with dropout, with the Triton kernels' keep mask, which the
sm_90a forward and backward must draw bit for bit). Elsewhere
the same calls run the sm_80 kernels, so the tests still hold; on an
sm_90 device the profiler shows which kernels ran. On the CPU machine the CPU checks are
tests/test_cuda_attention_sm90_emulated.py and tests/test_cuda_attention_sm90_bwd_emulated.py."""

import pytest
import torch

import fasttx
from fasttx.functional.attention import cuda_sm90_dq_turns, cuda_sm90_keys

from .conftest import DEVICE, runnable_backends
from .ops.test_attention import attention_inputs, check

pytestmark = pytest.mark.skipif("cuda" not in runnable_backends(op="attention"),
                                reason="needs a CUDA device and the extension (backend='cuda')")


@pytest.fixture(autouse=True)
def sm90_switched_on(monkeypatch):
    monkeypatch.setenv("FASTTX_ATTENTION_SM90", "1")


def _on_sm90():
    return DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("queries,keys", [(1, 1), (130, 7), (200, 300), (1000, 1000)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_forward_and_gradients(dtype, is_causal, queries, keys):
    check(*attention_inputs(2, 4, 2, queries, keys, 128, dtype=dtype), "cuda", is_causal=is_causal)


def test_transposed_views():
    q, k, v = (torch.randn(2, n, 4, 128, device=DEVICE).bfloat16().transpose(1, 2) for n in (150, 260, 260))
    check(q, k, v, "cuda")


def test_gradients_grouped_query_attention_causal_long():
    """Four query heads a kv head summed in one dK/dV CTA, many 64-query tiles through the 2-stage ring,
    L < S: key blocks past the last query see none (zero dK, dV); dQ CTAs of up to 15 causal 64-key
    blocks through its 3-stage ring."""
    check(*attention_inputs(2, 8, 2, 1500, 1700, 128, dtype=torch.bfloat16), "cuda", is_causal=True)


def _mask(kind, batch, heads, queries, keys, dtype):
    """Masks read through broadcast strides, each with fully masked rows (O = 0, zero gradients)."""
    if kind == "bool_key_padding":  # (B, 1, 1, S), batch 0 fully masked
        mask = torch.rand(batch, 1, 1, keys, device=DEVICE) > 0.3
        mask[0] = False
    elif kind == "bool_full":
        mask = torch.rand(batch, heads, queries, keys, device=DEVICE) > 0.5
        mask[-1, -1, 5] = False
    elif kind == "float_key_padding":  # (B, 1, 1, S) in the inputs' dtype, batch 0 fully masked
        mask = torch.randn(batch, 1, 1, keys, device=DEVICE).to(dtype)
        mask[..., torch.rand(keys, device=DEVICE) > 0.8] = float("-inf")
        mask[0] = float("-inf")
    else:  # a float bias in the inputs' dtype, (1, 1, L, S): -inf on some elements and on row 3
        mask = torch.randn(1, 1, queries, keys, device=DEVICE).to(dtype)
        mask[torch.rand(mask.shape, device=DEVICE) > 0.7] = float("-inf")
        mask[..., 3, :] = float("-inf")
    return mask


# The API takes a mask or is_causal, not both (as torch): the kernel's causal masked instances are
# reached through the op only, and checked by the emulator (test_cuda_attention_sm90_emulated.py).
@pytest.mark.parametrize("kind", ["bool_key_padding", "bool_full", "float_with_-inf"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_masks(dtype, kind):
    q, k, v = attention_inputs(2, 4, 2, 300, 333, 128, dtype=dtype)
    check(q, k, v, "cuda", attn_mask=_mask(kind, 2, 4, 300, 333, dtype))


@pytest.mark.parametrize("mask,is_causal", [(None, False), (None, True), ("bool_key_padding", False),
                                             ("float_with_-inf", False)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dropout(dtype, mask, is_causal):
    """The op's keep mask is the Triton kernels' (the seed it draws after manual_seed, as
    tests/ops/test_attention.py's test_dropout reads it); output and gradients (the sm_90a dK/dV
    kernel draws it keys along rows, the dQ kernel queries along rows) against the reference with that
    mask."""
    _check_dropout(2, 4, 2, 200, 333, dtype, mask, is_causal, 0.3)


def test_gradients_grouped_query_attention_float_key_padding_dropout_long():
    """Masked dropout backward on long sequences: four query heads a kv head, a float (B, 1, 1, S)
    key-padding mask in the inputs' dtype (batch 0 fully masked: zero gradients), many 64-query tiles
    and 64-key blocks through both rings."""
    _check_dropout(2, 8, 2, 1100, 1300, torch.bfloat16, "float_key_padding", False, 0.1)


def _check_dropout(batch, heads, kv_heads, queries, keys, dtype, mask, is_causal, p, **kw):
    from fasttx.triton_kernels.attention import dropout_keep_mask

    q, k, v = attention_inputs(batch, heads, kv_heads, queries, keys, 128, dtype=dtype)
    attn_mask = None if mask is None else _mask(mask, batch, heads, queries, keys, dtype)
    dy = torch.randn(batch, heads, queries, 128, device=DEVICE).to(dtype)  # before the seed: no draw between
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))
    keep = dropout_keep_mask(seed, batch, heads, queries, keys, p, q.device)
    torch.manual_seed(7)
    check(q, k, v, "cuda", dy=dy, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p, dropout_mask=keep, **kw)


# The forward's other tiles (attention_fwd_sm90.cuh, Sm90Fwd): E = 64 and 96 with 128-key blocks, E = 256
# with 80-key blocks and 2 stages. Their backward: the sm_90a dK/dV and dQ kernels (bwd_common_sm90.cuh, Sm90BwdHead:
# the tiles of E = 128 at E = 64 and 96; at E = 256 dK/dV in two passes, dV then dK, and dQ with one
# consumer warpgroup of 64 rows), causal with dropout included.
OTHER_HEAD_DIMS = [64, 96, 256]


@pytest.mark.parametrize("head_dim", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("queries,keys", [(1, 1), (130, 7), (1000, 1000)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_other_head_dims_forward_and_gradients(dtype, is_causal, queries, keys, head_dim):
    check(*attention_inputs(2, 4, 2, queries, keys, head_dim, dtype=dtype), "cuda", is_causal=is_causal)


@pytest.mark.parametrize("head_dim", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("kind", ["bool_key_padding", "bool_full", "float_with_-inf"])
def test_other_head_dims_masks(kind, head_dim):
    q, k, v = attention_inputs(2, 4, 2, 300, 333, head_dim, dtype=torch.bfloat16)
    check(q, k, v, "cuda", attn_mask=_mask(kind, 2, 4, 300, 333, torch.bfloat16))


@pytest.mark.parametrize("head_dim", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_other_head_dims_dropout(is_causal, head_dim):
    """As test_dropout (the Triton kernels' keep mask)."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    p = 0.3
    q, k, v = attention_inputs(2, 4, 2, 200, 333, head_dim, dtype=torch.float16)
    dy = torch.randn(2, 4, 200, head_dim, device=DEVICE).half()
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))
    keep = dropout_keep_mask(seed, 2, 4, 200, 333, p, q.device)
    torch.manual_seed(7)
    check(q, k, v, "cuda", dy=dy, is_causal=is_causal, dropout_p=p, dropout_mask=keep)


# E = 64 without mask or dropout: 192 x 128 tiles with three consumer warpgroups (Sm90FwdTile; the masked and
# dropout calls above keep two): L not a multiple of 192 (the last CTA's third warpgroup partly or wholly
# past L), causal with L != S (diagonal key blocks across the 192 rows), GQA, many key blocks.
@pytest.mark.parametrize("queries,keys", [(193, 500), (385, 385), (1500, 1300)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_e64_three_consumer_tile(dtype, is_causal, queries, keys):
    check(*attention_inputs(2, 4, 2, queries, keys, 64, dtype=dtype), "cuda", is_causal=is_causal)


# E = 128 without causality, mask or dropout: 176-key blocks through a 2-stage ring (Sm90FwdTile): S a whole
# number of blocks (704: 4, no element checks), one partial block, many blocks with a partial last one, GQA;
# and the 128-key tile the bench compares it with (cuda_sm90_keys(128)).
@pytest.mark.parametrize("queries,keys", [(300, 704), (129, 100), (1000, 2500)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block_keys", [176, 128])
def test_e128_176_key_blocks(block_keys, dtype, queries, keys):
    with cuda_sm90_keys(block_keys):
        check(*attention_inputs(2, 4, 2, queries, keys, 128, dtype=dtype), "cuda")


# The dQ kernel with its consumers' turns (the default) and without (cuda_sm90_dq_turns(False), which the
# bench compares): several dQ CTAs, key blocks through the 3-stage ring, causal with GQA, a mask and dropout.
@pytest.mark.parametrize("dq_turns", [True, False], ids=["turns", "no_turns"])
@pytest.mark.parametrize("head_dim", [64, 96, 128])
def test_dq_turns(dq_turns, head_dim):
    with cuda_sm90_dq_turns(dq_turns):
        check(*attention_inputs(2, 4, 2, 700, 900, head_dim, dtype=torch.bfloat16), "cuda", is_causal=True)
        q, k, v = attention_inputs(2, 4, 2, 300, 333, head_dim, dtype=torch.float16)
        check(q, k, v, "cuda", attn_mask=_mask("bool_key_padding", 2, 4, 300, 333, torch.float16))


def _kernels_run(backward, head_dim=128, **kw):
    """The names of the CUDA kernels one bf16 call (and its backward) runs."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 2, 2, 256, 256, head_dim, dtype=torch.bfloat16))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="cuda", **kw)
        if backward:
            out.backward(torch.randn_like(out))
        torch.cuda.synchronize()
    return [e.name for e in prof.events()]


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
@pytest.mark.parametrize("head_dim", OTHER_HEAD_DIMS + [128])
@pytest.mark.parametrize("call", [{}, {"attn_mask": "key_padding"}, {"dropout_p": 0.2}], ids=["plain", "mask", "dropout"])
@pytest.mark.parametrize("switch", ["1", None])
def test_sm90_device_runs_the_sm90a_kernel_only_when_switched_on(switch, call, head_dim, monkeypatch):
    if switch is None:
        monkeypatch.delenv("FASTTX_ATTENTION_SM90")
    if "attn_mask" in call:
        call = {"attn_mask": torch.rand(1, 1, 1, 256, device=DEVICE) > 0.3}
    names = _kernels_run(backward=False, head_dim=head_dim, **call)
    assert any("attention_fwd_sm90_kernel" in n for n in names) == (switch == "1"), names
    assert any("attention_fwd_kernel" in n for n in names) == (switch is None), names


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("call", [{}, {"attn_mask": "key_padding"}, {"dropout_p": 0.2}], ids=["plain", "mask", "dropout"])
@pytest.mark.parametrize("switch", ["1", None])
def test_sm90_device_runs_the_sm90a_backward_kernels_only_when_switched_on(switch, call, head_dim, monkeypatch):
    """E = 256: the sm_90a dK/dV kernel in two launches (its dV pass, then its dK pass)."""
    if switch is None:
        monkeypatch.delenv("FASTTX_ATTENTION_SM90")
    if "attn_mask" in call:
        call = {"attn_mask": torch.rand(1, 1, 1, 256, device=DEVICE) > 0.3}
    names = _kernels_run(backward=True, head_dim=head_dim, **call)
    sm90 = switch == "1"
    passes = 2 if head_dim == 256 else 1  # instances of different names (Sm90Grad)
    assert len({n for n in names if "attention_bwd_kv_sm90_kernel" in n}) == (passes if sm90 else 0), names
    assert any("attention_bwd_kv_kernel" in n for n in names) == (not sm90), names
    assert any("attention_bwd_q_sm90_kernel" in n for n in names) == sm90, names
    assert any("attention_bwd_q_kernel" in n for n in names) == (not sm90), names
    assert any("attention_bwd_delta_kernel" in n for n in names), names


# The opt-in atomic dQ (deterministic=False; attention_bwd_sm90.cuh, Sm90Grad::kKVAtomicQ): the dK/dV kernel
# also adds dQ with vector reductions into fp32 zeros, which the binding scales and casts; no dQ
# kernel. E = 256 (no atomic instance) and torch.use_deterministic_algorithms(True) run the
# deterministic kernels. Gradients against float64 at each head dim with instances, with GQA, causal,
# masks with fully masked rows and dropout.
@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_atomic_dq(dtype, is_causal, head_dim):
    q, k, v = attention_inputs(2, 4, 2, 1000, 777, head_dim, dtype=dtype)
    check(q, k, v, "cuda", is_causal=is_causal, deterministic=False)


@pytest.mark.parametrize("kind", ["bool_key_padding", "float_with_-inf"])
def test_atomic_dq_masks_and_dropout(kind):
    q, k, v = attention_inputs(2, 4, 2, 300, 333, 128, dtype=torch.bfloat16)
    check(q, k, v, "cuda", attn_mask=_mask(kind, 2, 4, 300, 333, torch.bfloat16), deterministic=False)
    _check_dropout(2, 4, 2, 300, 333, torch.float16, kind, False, 0.2, deterministic=False)


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("forced_deterministic", [False, True])
def test_atomic_dq_runs_the_atomic_kernel_only_where_asked_and_allowed(head_dim, forced_deterministic):
    """deterministic=False: the atomic dK/dV instance and no dQ kernel at E = 128; the deterministic pair
    at E = 256 and under torch.use_deterministic_algorithms(True)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(forced_deterministic)
    try:
        names = _kernels_run(backward=True, head_dim=head_dim, deterministic=False)
    finally:
        torch.use_deterministic_algorithms(previous)
    atomic = head_dim == 128 and not forced_deterministic
    assert any("attention_bwd_kv_sm90_kernel" in n for n in names), names
    assert any("attention_bwd_q_sm90_kernel" in n for n in names) == (not atomic), names
    assert not any("attention_bwd_q_kernel" in n for n in names), names


def test_atomic_dq_is_close_to_the_deterministic_backward():
    """The two backwards of one call agree to fp32 summation order (then rounding to bf16)."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 4, 2, 700, 900, 128, dtype=torch.bfloat16))
    dy = torch.randn(2, 4, 700, 128, device=DEVICE).bfloat16()
    grads = []
    for deterministic in (True, False):
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="cuda", deterministic=deterministic)
        grads.append(torch.autograd.grad(out, (q, k, v), dy))
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * a.float().abs().max(), name


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
def test_size_one_dims_with_odd_strides_still_take_the_sm90a_kernels():
    """A dim of extent 1 may carry any stride (torch leaves it free; here odd ones on the batch and on
    L = 1's row dim of q, and on k's batch): the TMA maps give such a dim a packed stride, where the
    driver would refuse the odd one and the call would quietly run the sm_80 kernels."""
    q, k, v = attention_inputs(1, 2, 2, 1, 300, 128, dtype=torch.bfloat16)
    q = q.as_strided(q.shape, (7, q.stride(1), 3, 1))
    k = k.as_strided(k.shape, (5, *k.stride()[1:]))
    assert q.stride(0) % 8 and q.stride(2) % 8 and k.stride(0) % 8
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        check(q, k, v, "cuda")
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    for kernel in ("attention_fwd_sm90_kernel", "attention_bwd_kv_sm90_kernel", "attention_bwd_q_sm90_kernel"):
        assert any(kernel in n for n in names), (kernel, names)
