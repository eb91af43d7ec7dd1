"""The sm_90a attention dK/dV and dQ kernels (csrc/attention/sm90/attention_{bwd,dq}_sm90.cuh), run on
the CPU: tests/attention_emulator/emulator_sm90_bwd.cpp compiles the real kernel source and the real
backward launch code (D kernel, dK/dV, dQ) of head dims 64, 96, 128 and 256 for the host, with the emulated TMA,
mbarriers and wgmma of tests/attention_emulator/attention/sm90/primitives_sm90.cuh (checked against
an independent statement of the layouts by tests/test_cuda_attention_sm90_emulated.py). The backward
runs from the float64 reference's O and lse; dQ, dK and dV are compared with the float64 reference,
with bool and float masks (broadcast and full) and dropout (the reference given the keep mask Triton
draws, which the kernels must draw bit for bit).
The sm_90a kernels run where the launch code picks them: FASTTX_ATTENTION_SM90=1 (the switch set by
cuda_sm90_kernels) and a supported call; each test asserts which ran, as the instance (mask,
dropout) the call calls for (the emulator reports every launch). What only a GPU shows is out of
reach here (see the forward's emulated tests)."""

import ctypes
import math

import pytest
import torch

from fasttx import reference
from fasttx.functional.attention import cuda_sm90_dq_turns, cuda_sm90_kernels
from fasttx.testing import TOLERANCE, rel_error

from .ops.test_attention import gradient_scales
from .conftest import DEVICE
from .cuda_emulator import MASK_LAYOUTS, compile_emulator, marshal, mask_layout
from .test_cuda_attention_emulated import _fields, reference_lse

E = 128  # the head dim of most tests; test_head_dim* cover the others (SM90_HEAD_DIMS)
# The emulator's report: which sm_90a kernels ran (ATOMIC: dK/dV with atomic dQ; DQ_WITHOUT_TURNS: the dQ
# kernel whose consumers do not take turns, cuda_sm90_dq_turns(False)).
KV, DQ, ATOMIC, DQ_WITHOUT_TURNS = 1, 2, 4, 8
SEED = 1234567890123  # dropout's


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lib = compile_emulator(tmp_path_factory, "attention_emulator", "emulator_sm90_bwd.cpp")
    lib.emu_attention_bwd_sm90.restype = ctypes.c_char_p
    return lib


def run_backward(emulator, q, k, v, dout, scale, is_causal, sm90=True, mask=None, dropout_p=0.0, keep=None,
                 atomic=False, dq_turns=True):
    """dq, dk, dv from the emulated backward (q's head dim), launched as attention_bwd_launch would with
    the sm_90a switch on or off, from the reference's O (rounded to q's dtype; with dropout, given the
    keep mask `keep` the kernels draw from SEED) and lse (with no key: O = 0, lse = +inf); and which
    sm_90a kernels ran (KV | DQ, or ATOMIC) as the instances the call's mask and dropout call for.
    atomic: dq_accum given (deterministic=False), zeros; where the atomic-dQ kernel ran, dq is
    dq_accum scaled and cast as the binding does. dq_turns: cuda_sm90_dq_turns(dq_turns)."""
    B, H, L, _ = q.shape
    ref_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    if k.shape[2] > 0:
        o = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), ref_mask, dropout_p, is_causal,
                                                   scale, enable_gqa=True, dropout_mask=keep).to(q.dtype)
        lse = reference_lse(q, k, mask, scale, is_causal).float()
    else:
        o, lse = torch.zeros_like(q), torch.full((B, H, L), float("inf"))
    if mask is not None:
        mask = mask.expand(B, H, L, k.shape[2])  # broadcast dims read with stride 0, as the binding passes them
    seed = torch.tensor([SEED], dtype=torch.int64)
    delta = torch.full((B, H, L), float("nan"))
    grads = [torch.full_like(t, float("nan"), memory_format=torch.contiguous_format) for t in (q, k, v)]
    fields = _fields(True, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse, dout, delta, grads)
    dq_accum = torch.zeros(B, H, L, q.shape[-1]) if atomic else None
    if atomic:
        fields["dq_accum"] = dq_accum.data_ptr()
    inputs = [q, k, v, dout, o, lse, delta, seed] + ([mask] if mask is not None else [])
    launched = ctypes.c_int(-1)
    with cuda_sm90_kernels(sm90), cuda_sm90_dq_turns(dq_turns):
        error = emulator.emu_attention_bwd_sm90(*marshal(fields, inputs), ctypes.byref(launched))
    if error is not None:
        raise ValueError(f"emu_attention_bwd_sm90: {error.decode()}")
    if launched.value & ATOMIC:
        assert torch.isnan(grads[0]).all(), "dq written beside dq_accum"
        grads[0] = (dq_accum * scale).to(q.dtype)
    return grads, launched.value


def check(emulator, B, H, Hkv, L, S, dtype=torch.bfloat16, is_causal=False, transposed=False, scale=None,
          sm90=True, bias=0.0, mask=None, dropout_p=0.0, E=E, atomic=False, dq_turns=True):
    """bias: added to q, subtracted from k (so that every score lies far below 0 when large). mask:
    broadcastable to (B, H, L, S), bool or float. dropout_p > 0: the reference's gradients are given
    the keep mask Triton draws from SEED, which the kernels must draw bit for bit. atomic: the opt-in
    atomic dQ (run_backward), taken at E <= 128. dq_turns=False: the dQ kernel without its consumers'
    turns, at E <= 128 (two consumers). Returns the grads."""
    shape = lambda heads, n: (B, n, heads, E) if transposed else (B, heads, n, E)  # noqa: E731
    tr = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t)  # noqa: E731
    q, k, v = (tr((torch.randn(shape(h, n)) + b).to(dtype)) for h, n, b in ((H, L, bias), (Hkv, S, -bias), (Hkv, S, 0)))
    dout = torch.randn(B, H, L, E).to(dtype)
    scale = 1 / math.sqrt(E) if scale is None else scale
    keep = None
    if dropout_p > 0:
        from fasttx.triton_kernels.attention import dropout_keep_mask

        keep = dropout_keep_mask(SEED, B, H, L, S, dropout_p, DEVICE).cpu()
    grads, launched = run_backward(emulator, q, k, v, dout, scale, is_causal, sm90, mask, dropout_p, keep, atomic,
                                   dq_turns)
    dq_kernel = DQ_WITHOUT_TURNS if not dq_turns and E <= 128 else DQ
    assert launched == (0 if not sm90 else ATOMIC if atomic and E <= 128 else KV | dq_kernel)

    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    reference.scaled_dot_product_attention(*leaves, ref_mask, dropout_p, is_causal, scale, enable_gqa=True,
                                           dropout_mask=keep).backward(dout.double())
    scales = gradient_scales(q, k, v, dout, scale=scale, attn_mask=ref_mask, is_causal=is_causal, enable_gqa=True)
    for name, ours, leaf, sc in zip(("dq", "dk", "dv"), grads, leaves, scales):
        assert torch.isfinite(ours).all(), f"{name}: not finite"
        err = rel_error(ours, leaf.grad, sc)
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g}"
    return grads


# L, S not multiples of the tiles (dK/dV: 64-query tiles, 128-key blocks; dQ: 128-row CTAs, 64-key
# blocks); one row; one key; several dQ CTAs and key blocks.
@pytest.mark.parametrize("L,S", [(1, 1), (1, 200), (130, 7), (70, 300), (300, 129)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sequence_lengths(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype)


# Diagonal tiles at every offset of the 64-query tiles against the 128-key blocks (dK/dV) and of the
# 128-row CTAs against the 64-key blocks (dQ: a CTA's first warpgroup sees blocks wholly past its
# diagonal); L < S leaves the last key blocks with no query (their dK, dV rows: zeros, written), L > S
# rows past the last key.
@pytest.mark.parametrize("L,S", [(200, 200), (70, 300), (260, 130), (1, 65), (300, 100)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_causal(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype, is_causal=True)


def test_grouped_query_attention_and_transposed_views(emulator):
    """Two query heads a kv head summed in one CTA's registers, (B, L, H, E) views read by TMA through
    their strides, B = 2."""
    check(emulator, 2, 4, 2, 70, 150, torch.float16, transposed=True)


def test_grouped_query_attention_causal(emulator):
    check(emulator, 1, 3, 1, 100, 140, torch.bfloat16, is_causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0])
def test_any_scale(emulator, scale):
    """Unlike the sm_90a forward, the backward takes every scale (it reads lse, no row maxima)."""
    check(emulator, 1, 2, 2, 70, 130, torch.bfloat16, scale=scale)


def test_scores_far_below_zero(emulator):
    """Every score about -115 after scaling, lse about -160 in base 2: a padding key (loaded as 0,
    scoring 0) must get P = 0 from the element checks, not 2^(0 - lse) = inf (S = 100: the second
    64-key block of dQ and the first 128-key block of dK/dV have padding keys)."""
    check(emulator, 1, 1, 1, 70, 100, torch.bfloat16, scale=0.1, bias=3.0)
    check(emulator, 1, 1, 1, 70, 100, torch.float16, is_causal=True, scale=0.1, bias=3.0)


def test_switched_off_runs_the_sm80_kernel(emulator):
    check(emulator, 1, 2, 1, 70, 130, torch.float16, is_causal=True, sm90=False)


def test_no_keys_is_left_to_the_sm80_kernels(emulator):
    """S = 0 (which the binding does not launch: dq = 0 there): the sm_90a kernels decline, the launch
    code's sm_80 dQ kernel writes zeros."""
    q, k = torch.randn(1, 2, 70, E).bfloat16(), torch.randn(1, 2, 0, E).bfloat16()
    (dq, _, _), launched = run_backward(emulator, q, k, k, torch.randn_like(q), 0.125, False)
    assert launched == 0 and (dq == 0).all()


# Masks, read through broadcast strides as the sm_80 backward and the sm_90a forward read them: S = 200
# spans two dK/dV key blocks (the second partial) and four dQ key blocks, L = 150 two dQ CTAs and a
# partial 64-query tile.
def _mask(kind, B, H, L, S):
    if kind == "bool_key_padding":  # (B, 1, 1, S); batch 1's last 70 keys dropped
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[1, ..., S - 70:] = False
        mask[0, ..., torch.rand(S) > 0.8] = False
    elif kind == "bool_full":
        mask = torch.rand(B, H, L, S) > 0.4
    elif kind == "float_key_padding":  # (B, 1, 1, S), fp16, -inf on some keys
        mask = torch.randn(B, 1, 1, S).half()
        mask[..., torch.rand(S) > 0.7] = float("-inf")
    elif kind == "float_full":  # (B, H, L, S) float32 with -inf
        mask = torch.randn(B, H, L, S)
        mask[torch.rand(mask.shape) > 0.7] = float("-inf")
    else:  # (L, S) bf16, broadcast over B and H
        mask = torch.randn(L, S).bfloat16()
    return mask


MASKS = ["bool_key_padding", "bool_full", "float_key_padding", "float_full", "bfloat16_2d"]


@pytest.mark.parametrize("kind", MASKS)
def test_masks(emulator, kind):
    B, H, L, S = 2, 2, 150, 200
    check(emulator, B, H, H, L, S, torch.float16, mask=_mask(kind, B, H, L, S))


@pytest.mark.parametrize("kind,odd_keys", MASK_LAYOUTS, ids=str)
def test_mask_layouts(emulator, kind, odd_keys):
    """Each way a mask is read (cuda_emulator.MASK_LAYOUTS), in dK / dV with keys along the fragment's
    rows; the emulator aborts on a mask load outside the mask's storage or misaligned for its width."""
    B, H, L, S = 2, 2, 150, 200 + odd_keys
    check(emulator, B, H, H, L, S, torch.float16, mask=mask_layout(kind, B, H, L, S))


@pytest.mark.parametrize("kind", ["bool_full", "float_key_padding"])
def test_causal_with_mask(emulator, kind):
    B, H, L, S = 2, 2, 150, 200
    check(emulator, B, H, H, L, S, torch.bfloat16, is_causal=True, mask=_mask(kind, B, H, L, S))


def test_fully_masked_rows_get_zero_gradients(emulator):
    """Rows with no key (lse = +inf): batch 0 entirely (a bool key-padding mask of no key), and single
    rows of a float mask of -inf: zero dQ, no NaN anywhere, and the other rows right (check)."""
    B, H, L, S = 2, 2, 70, 130
    bool_mask = torch.rand(B, 1, 1, S) > 0.3
    bool_mask[0] = False
    dq, dk, dv = check(emulator, B, H, H, L, S, torch.float16, mask=bool_mask)
    assert (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    float_mask = torch.randn(B, H, L, S)
    float_mask[1, 0, [0, 37, 69]] = float("-inf")
    dq, _, _ = check(emulator, B, H, H, L, S, torch.bfloat16, is_causal=True, mask=float_mask)
    assert (dq[1, 0, [0, 37, 69]] == 0).all()


# GQA (2 query heads a kv head: the dK/dV kernel draws each head's keep bits); S = 201 ends each row
# with a partial group of the 8 keys one Philox call serves; L = 150 a partial query tile and two dQ CTAs.
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_dropout_draws_the_forwards_keep_mask(emulator, is_causal, dtype):
    check(emulator, 2, 2, 1, 150, 201, dtype, is_causal=is_causal, dropout_p=0.3)


@pytest.mark.parametrize("kind", ["bool_key_padding", "float_full"])
def test_mask_and_dropout(emulator, kind):
    B, H, L, S = 2, 2, 150, 200
    check(emulator, B, H, H, L, S, torch.float16, mask=_mask(kind, B, H, L, S), dropout_p=0.2)


def test_grouped_query_attention_mask_dropout_causal(emulator):
    """Every switch at once, GQA with 3 query heads a kv head, (B, L, H, E) views."""
    B, H, L, S = 1, 3, 100, 140
    check(emulator, B, H, 1, L, S, torch.bfloat16, is_causal=True, transposed=True,
          mask=_mask("float_full", B, H, L, S), dropout_p=0.25)


# The other head dims (Sm90BwdHead; E = 96: a column block and a half, columns 96 .. 127 of the
# second the TMA's zero fill; E = 256: dK/dV in two passes, dV then dK, the dK pass with one stage, and
# dQ with one consumer warpgroup of 64 rows, its dP issued after P): the whole backward through the
# launch path once per switch, L and S not multiples of the tiles (E = 256: L = 130 three 64-row dQ
# CTAs, the last partial), GQA, rows with no key.
OTHER_E = [64, 96, 256]


@pytest.mark.parametrize("E", OTHER_E)
def test_head_dims_plain_and_causal(emulator, E):
    check(emulator, 1, 2, 1, 130, 200, torch.float16, E=E)
    check(emulator, 1, 1, 1, 150, 100, torch.bfloat16, is_causal=True, E=E)


@pytest.mark.parametrize("E", OTHER_E)
def test_head_dims_masks_with_fully_masked_rows(emulator, E):
    B, H, L, S = 2, 2, 70, 130
    bool_mask = torch.rand(B, 1, 1, S) > 0.3
    bool_mask[0] = False
    dq, dk, dv = check(emulator, B, H, H, L, S, torch.float16, mask=bool_mask, E=E)
    assert (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    float_mask = torch.randn(B, H, L, S)
    float_mask[1, 0, [0, 37, 69]] = float("-inf")
    dq, _, _ = check(emulator, B, H, H, L, S, torch.bfloat16, is_causal=True, mask=float_mask, E=E)
    assert (dq[1, 0, [0, 37, 69]] == 0).all()


@pytest.mark.parametrize("E", OTHER_E)
def test_head_dims_dropout_gqa_mask_causal(emulator, E):
    B, H, L, S = 2, 2, 100, 201
    check(emulator, B, H, 1, L, S, torch.float16, dropout_p=0.3, E=E)
    check(emulator, 1, 3, 1, L, 140, torch.bfloat16, is_causal=True, transposed=True,
          mask=_mask("float_full", 1, 3, L, 140), dropout_p=0.25, E=E)


@pytest.mark.parametrize("kind", ["bool_key_padding", "float_key_padding", "bool_full"])
def test_head_dim_256_masks_with_dropout(emulator, kind):
    """E = 256, whose two dK/dV passes each read the mask and draw the keep bits: (B, 1, 1, S) key
    padding and full masks with dropout."""
    B, H, L, S = 2, 2, 150, 200
    check(emulator, B, H, H, L, S, torch.float16, mask=_mask(kind, B, H, L, S), dropout_p=0.2, E=256)


def test_head_dim_256_causal_dropout(emulator):
    """Causal with dropout, no mask: the instance whose dK pass spilled with the draw under S^T and dP^T
    (Sm90Bwd::kDrawFirst); GQA."""
    check(emulator, 1, 2, 1, 70, 130, torch.bfloat16, is_causal=True, dropout_p=0.3, E=256)


# The dQ kernel's consumers take turns at their wgmma (Sm90Turns; the emulated named barriers check every
# phase's count and that none is left half-arrived); cuda_sm90_dq_turns(False) runs the instances without
# turns, which the bench compares. Both against the reference: one CTA and several (L = 70, 300), key
# blocks through the 3-stage ring, causal with GQA, a mask with dropout.
@pytest.mark.parametrize("E,is_causal", [(64, False), (128, True)], ids=str)
@pytest.mark.parametrize("dq_turns", [True, False], ids=["turns", "no_turns"])
def test_dq_turns(emulator, E, is_causal, dq_turns):
    check(emulator, 1, 4, 2, 300, 270, torch.float16, is_causal=is_causal, E=E, dq_turns=dq_turns)


@pytest.mark.parametrize("dq_turns", [True, False], ids=["turns", "no_turns"])
def test_dq_turns_mask_dropout(emulator, dq_turns):
    check(emulator, 2, 2, 1, 70, 200, torch.bfloat16, mask=_mask("bool_key_padding", 2, 2, 70, 200), dropout_p=0.3,
          E=96, dq_turns=dq_turns)


def test_dq_at_head_dim_256_takes_no_turns(emulator):
    """One consumer warpgroup: nobody to take turns with; the switch changes nothing there."""
    check(emulator, 1, 2, 1, 70, 130, torch.bfloat16, E=256, dq_turns=False)


# The opt-in atomic dQ (deterministic=False, Sm90Grad::kKVAtomicQ): the dK/dV kernel also computes
# dS K over each consumer's 64 keys from its stored dS^T (wgmma with both operands MN-major), the two
# consumers sum their partials through shared memory, and each adds its half of the columns into
# dq_accum with vector reductions; no dQ kernel. At every head dim with instances (E = 128 issues dQ's
# product after dV's and dK's), L and S not multiples of the tiles (several query tiles, so the swap
# buffers of both parities are reused), GQA (the CTA adds for each query head), causal, masks with
# fully masked rows, dropout.
ATOMIC_E = [64, 96, 128]


@pytest.mark.parametrize("E", ATOMIC_E)
def test_atomic_dq_plain_causal_gqa(emulator, E):
    check(emulator, 1, 2, 1, 150, 200, torch.float16, E=E, atomic=True)
    check(emulator, 2, 2, 2, 130, 100, torch.bfloat16, is_causal=True, transposed=True, E=E, atomic=True)


@pytest.mark.parametrize("E", ATOMIC_E)
def test_atomic_dq_masks_dropout(emulator, E):
    B, H, L, S = 2, 2, 70, 130
    bool_mask = torch.rand(B, 1, 1, S) > 0.3
    bool_mask[0] = False
    dq, _, _ = check(emulator, B, H, H, L, S, torch.float16, mask=bool_mask, dropout_p=0.2, E=E, atomic=True)
    assert (dq[0] == 0).all()
    check(emulator, 1, 3, 1, 100, 140, torch.bfloat16, is_causal=True, mask=_mask("float_full", 1, 3, 100, 140),
          dropout_p=0.25, E=E, atomic=True)


def test_atomic_dq_one_row_one_key(emulator):
    check(emulator, 1, 1, 1, 1, 1, torch.bfloat16, atomic=True)


def test_atomic_dq_at_head_dim_256_runs_the_deterministic_kernels(emulator):
    """No atomic instance at E = 256 (dQ's accumulator beside dK's or dV's would not fit): the two dK/dV
    passes and the dQ kernel run, dq written, dq_accum left alone."""
    check(emulator, 1, 2, 1, 70, 130, torch.float16, E=256, atomic=True)


def test_atomic_dq_switched_off_runs_the_sm80_kernels(emulator):
    check(emulator, 1, 2, 1, 70, 130, torch.float16, sm90=False, atomic=True)


def test_atomic_dq_scores_far_below_zero(emulator):
    """As test_scores_far_below_zero: a padding key of the last 128-key block (K loaded as 0, scoring 0)
    gets P = 2^(0 - lse) = inf and dS = inf or NaN in the dK/dV kernel, harmless for dK and dV (those rows
    are not stored) but not for dQ = dS K (0 x inf): its dS^T rows are stored as zeros."""
    check(emulator, 1, 1, 1, 70, 100, torch.bfloat16, scale=0.1, bias=3.0, atomic=True)
    check(emulator, 1, 1, 1, 70, 100, torch.float16, is_causal=True, scale=0.1, bias=3.0, atomic=True, E=96)
