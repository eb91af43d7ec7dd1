"""The CUDA attention kernels (csrc/attention), run on the CPU: tests/attention_emulator compiles the
real kernel source for the host, with one fiber per GPU thread, barriers, and mma.sync,
ldmatrix, shuffles and (deferred) cp.async emulated (see its primitives.cuh). Forward and backward
are compared with the float64 reference on small odd shapes, every mask kind, causal, GQA, dropout
(whose keep mask must be Triton's), all head dims and both dtypes. This checks the fragment layouts,
indexing, tiling, pipelining and numerics of the kernels without a GPU; it cannot check what only
hardware shows (timing, bank conflicts, register spills, real races beyond the deferred copies)."""

import ctypes
import math

import pytest
import torch

from fasttx import reference
from fasttx._attention_kernels import HEAD_DIMS
from fasttx.triton_kernels.attention_common import dropout_threshold
from fasttx.testing import TOLERANCE, rel_error

from .conftest import DEVICE
from .cuda_emulator import DTYPE_CODE, MASK_LAYOUTS, compile_emulator, marshal, mask_layout
from .ops.test_attention import gradient_scales

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    library = compile_emulator(tmp_path_factory, "attention_emulator", "emulator.cpp")
    library.emu_attention.restype = ctypes.c_char_p
    return library


def _launch(emulator, backward, fields, inputs):
    """emu_attention with the params' fields by name (marshal)."""
    error = emulator.emu_attention(int(backward), *marshal(fields, inputs))
    if error is not None:
        raise ValueError(f"emu_attention: {error.decode()}")


def _fields(backward, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse, dout=None, delta=None, grads=()):
    """The params as the binding (csrc/attention/attention_api.cpp) fills them."""
    B, H, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    mask_kind, mask_dtype, mask_strides = 0, 0, (0, 0, 0, 0)
    if mask is not None:
        mask_kind = 1 if mask.dtype == torch.bool else 2
        mask_dtype = DTYPE_CODE.get(mask.dtype, 0)
        mask_strides = mask.stride()
    address = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    fields = dict(dtype=DTYPE_CODE[q.dtype], head_dim=E, batch=B, heads=H, kv_heads=Hkv, queries=L, keys=S,
                  is_causal=int(is_causal), scale_log2=scale * math.log2(math.e), scale=scale, dropout_p=dropout_p,
                  keep_threshold=dropout_threshold(dropout_p),  # philox.h's, the oracle's (test_cuda_attention_philox)
                  seed=seed.data_ptr(),  # the emulated device reads host memory
                  q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), q_strides=q.stride()[:3], k_strides=k.stride()[:3],
                  v_strides=v.stride()[:3], mask_kind=mask_kind, mask_dtype=mask_dtype, mask=address(mask),
                  mask_strides=mask_strides, o=o.data_ptr(), lse=lse.data_ptr())
    if backward:
        dq, dk, dv = grads
        fields.update(dout=dout.data_ptr(), dout_strides=dout.stride()[:3], o_strides=o.stride()[:3],
                      delta=delta.data_ptr(), dq=dq.data_ptr(), dk=dk.data_ptr(), dv=dv.data_ptr(),
                      dq_accum=0)  # deterministic: dQ written to dq (the atomic dQ's buffer: sm_90a only)
    return fields


def _run(emulator, backward, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse, dout=None, grads=()):
    """Launch the emulated kernels as the binding would."""
    B, H, L, _ = q.shape
    if mask is not None:
        mask = mask.expand(B, H, L, k.shape[2])
    seed = torch.tensor([seed], dtype=torch.int64)
    delta = torch.empty(B, H, L) if backward else None
    fields = _fields(backward, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse, dout, delta, grads)
    inputs = [t for t in (q, k, v, mask) if t is not None] + ([dout, o, lse, delta] if backward else [])
    _launch(emulator, backward, fields, inputs)


def emulated_attention(emulator, q, k, v, dout, mask=None, scale=None, is_causal=False, dropout_p=0.0, seed=0):
    B, H, L, E = q.shape
    scale = 1 / math.sqrt(E) if scale is None else scale
    o = torch.full((B, H, L, E), float("nan"), dtype=q.dtype)
    lse = torch.full((B, H, L), float("nan"))
    _run(emulator, False, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse)
    grads = [torch.full_like(t, float("nan"), memory_format=torch.contiguous_format) for t in (q, k, v)]
    _run(emulator, True, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse, dout, grads)
    return o, lse, grads


def reference_lse(q, k, mask, scale, is_causal):
    group = q.shape[1] // k.shape[1]
    s = scale * q.double() @ k.double().repeat_interleave(group, 1).transpose(-2, -1)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    lse = s.logsumexp(-1)
    return torch.where(lse == float("-inf"), float("inf"), lse)


def check(emulator, B, H, Hkv, L, S, E, dtype=torch.float16, mask=None, is_causal=False, dropout_p=0.0,
          transposed=False, scale=None):
    shape = lambda heads, n: (B, n, heads, E) if transposed else (B, heads, n, E)  # noqa: E731
    tr = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t)  # noqa: E731
    q, k, v = (tr(torch.randn(shape(h, n)).to(dtype)) for h, n in ((H, L), (Hkv, S), (Hkv, S)))
    dout = torch.randn(B, H, L, E).to(dtype)
    scale = 1 / math.sqrt(E) if scale is None else scale
    seed, keep = 0, None
    if dropout_p > 0:
        from fasttx.triton_kernels.attention import dropout_keep_mask

        seed = 1234567890123
        # Triton draws it where Triton runs (CUDA, or the CPU under the interpreter); the emulator reads it on the CPU.
        keep = dropout_keep_mask(seed, B, H, L, S, dropout_p, DEVICE).cpu()
    o, lse, grads = emulated_attention(emulator, q, k, v, dout, mask, scale, is_causal, dropout_p, seed)

    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    ref = reference.scaled_dot_product_attention(*leaves, ref_mask, dropout_p, is_causal, scale, enable_gqa=True,
                                                 dropout_mask=keep)
    ref.backward(dout.double())
    kw = dict(scale=scale, attn_mask=ref_mask, is_causal=is_causal, enable_gqa=True)
    scales = (0.0, *gradient_scales(q, k, v, dout, **kw))
    tol = TOLERANCE[dtype]
    for name, ours, theirs, sc in zip(("output", "dq", "dk", "dv"), (o, *grads), (ref, *(t.grad for t in leaves)),
                                      scales):
        err = rel_error(ours, theirs, sc)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g}"
    ref_lse = reference_lse(q, k, mask, scale, is_causal)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), ~finite), "lse must be +inf exactly on fully masked rows"
    assert (lse[finite].double() - ref_lse[finite]).abs().max() <= 1e-4 * (1 + ref_lse[finite].abs().max())


SIZES = [1, 7, 33, 100, 130]


# Every head dim of the list runs: the two smallest (cheapest) over the sequence lengths, the others
# in both dtypes.
@pytest.mark.parametrize("L,S", [(1, 1), (7, 130), (130, 7), (33, 100), (100, 33)], ids=str)
@pytest.mark.parametrize("E", HEAD_DIMS[:2])
def test_sequence_lengths(emulator, L, S, E):
    check(emulator, 1, 2, 2, L, S, E)


@pytest.mark.parametrize("E", HEAD_DIMS[2:])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_head_dims_and_dtypes(emulator, E, dtype):
    check(emulator, 1, 1, 1, 70, 75, E, dtype)


@pytest.mark.parametrize("L,S", [(33, 100), (100, 33), (130, 130)], ids=str)
def test_causal(emulator, L, S):
    check(emulator, 1, 2, 1, L, S, 64, is_causal=True)


def test_grouped_query_attention_and_transposed_views(emulator):
    check(emulator, 2, 4, 2, 33, 70, 32, transposed=True)


@pytest.mark.parametrize("kind", ["bool_key_padding", "bool_full", "float_full_with_-inf", "float32_2d"])
def test_masks(emulator, kind):
    B, H, L, S = 2, 2, 40, 70
    if kind == "bool_key_padding":
        mask = torch.rand(B, 1, 1, S) > 0.3
        mask[0] = False  # batch 0: every row fully masked
    elif kind == "bool_full":
        mask = torch.rand(B, H, L, S) > 0.5
        mask[1, 1, 5] = False
    elif kind == "float_full_with_-inf":
        mask = torch.randn(B, H, L, S).half()
        mask[torch.rand(mask.shape) > 0.7] = float("-inf")
        mask[1, 0, 3] = float("-inf")
    else:
        mask = torch.randn(1, 1, L, S)
    check(emulator, B, H, H, L, S, 32, mask=mask)


@pytest.mark.parametrize("kind,odd_keys", MASK_LAYOUTS, ids=str)
def test_mask_layouts(emulator, kind, odd_keys):
    """Each way a mask is read (cuda_emulator.MASK_LAYOUTS), forward and backward; the emulator
    aborts on a mask load outside the mask's storage or misaligned for its width."""
    B, H, L, S = 2, 2, 40, 70 + odd_keys
    check(emulator, B, H, H, L, S, 32, mask=mask_layout(kind, B, H, L, S))


# GQA (2 query heads a kv head); S = 37 ends each row with a partial group of the 8 keys one Philox
# call serves, L = 70 a partial query tile.
@pytest.mark.parametrize("B,L,S", [(1, 70, 100), (2, 70, 37)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_dropout_draws_triton_keep_mask(emulator, is_causal, B, L, S):
    check(emulator, B, 2, 1, L, S, 32, is_causal=is_causal, dropout_p=0.3)


@pytest.mark.parametrize("L,S", [(129, 200), (257, 70), (1, 257)], ids=str)
@pytest.mark.parametrize("E", [32, 64, 96, 128])
def test_forward_128_row_tiles(emulator, L, S, E):
    """The forward's 128-row CTAs (two 16-row tiles a warp; 32-key blocks from E = 96, Q in registers
    up to 64): L crossing a tile by one row, two tiles and a bit, one row against many keys."""
    check(emulator, 1, 1, 1, L, S, E)


@pytest.mark.parametrize("E", [64, 128])
def test_forward_128_row_tiles_causal(emulator, E):
    check(emulator, 1, 1, 1, 257, 257, E, is_causal=True)


def test_forward_128_row_tiles_float_mask(emulator):
    """E = 96 with a mask: two row tiles, 32-key blocks, the masked variant."""
    mask = torch.randn(1, 1, 129, 100)
    mask[..., 7, :] = float("-inf")
    check(emulator, 1, 2, 2, 129, 100, 96, mask=mask)


@pytest.mark.parametrize("E,is_causal", [(64, False), (96, True)])
def test_forward_128_row_tiles_dropout(emulator, E, is_causal):
    """Dropout on 128-row CTAs (E < 128; 32-key blocks from E = 64), each key block's keep bits drawn
    before its scores: L = 129 crosses a tile, S = 37 ends each row with a partial group of 8 keys."""
    check(emulator, 1, 2, 1, 129, 37, E, is_causal=is_causal, dropout_p=0.3)


@pytest.mark.parametrize("is_causal", [False, True])
def test_head_dim_256_dropout(emulator, is_causal):
    """E = 256: dQ draws a block's keep bits where dS takes them (as at E = 96, the other test's causal
    case), not before the scores as at E = 32, 64, 128 (32-key blocks: two pairs of tiles), and dK / dV come from their two launches; S = 75 ends each
    row with a partial group of 8 keys."""
    check(emulator, 1, 2, 1, 40, 75, 256, is_causal=is_causal, dropout_p=0.3)


@pytest.mark.parametrize("scale", [-0.3, 0.0])
@pytest.mark.parametrize("variant", ["plain", "causal_float_mask", "dropout"])
def test_non_positive_scale(emulator, scale, variant):
    """The forward maximizes raw scores and scales inside the exp2 FMA: a negative scale is moved
    into Q, a zero one must not turn masked scores into NaN. Two row tiles each (plain, masked,
    dropout)."""
    if variant == "plain":
        check(emulator, 1, 2, 2, 129, 100, 64, scale=scale)
    elif variant == "causal_float_mask":
        mask = torch.randn(1, 2, 100, 129)
        mask[0, 1, 4] = float("-inf")
        check(emulator, 1, 2, 2, 100, 129, 32, mask=mask, is_causal=True, scale=scale)
    else:
        check(emulator, 1, 2, 1, 70, 100, 32, dropout_p=0.3, scale=scale)


def test_no_keys_gives_zero_output_and_infinite_lse(emulator):
    """S = 0: the forward visits no key block (the binding launches it; the backward it does not:
    dq = 0 there)."""
    q, k = torch.randn(1, 2, 70, 64).half(), torch.randn(1, 2, 0, 64).half()
    o = torch.full((1, 2, 70, 64), float("nan"), dtype=torch.float16)
    lse = torch.full((1, 2, 70), float("nan"))
    _run(emulator, False, q, k, k, None, 0.125, False, 0.0, 0, o, lse)
    assert (o == 0).all() and (lse == float("inf")).all()


def test_params_are_set_by_field_name(emulator):
    """The emulator sets each field of AttentionParams / AttentionBwdParams by name: a misspelt, missing,
    repeated or unknown field, a wrong number of values or a head dim without kernels fails loudly,
    launching nothing."""
    q = torch.zeros(1, 1, 3, 32).half()
    o, lse = torch.full_like(q, float("nan")), torch.full((1, 1, 3), float("nan"))
    fields = _fields(False, q, q, q, None, 0.5, False, 0.0, torch.zeros(1, dtype=torch.int64), o, lse)
    _launch(emulator, False, fields, [q])
    assert (o == 0).all() and torch.allclose(lse, torch.full_like(lse, math.log(3)))
    o.fill_(float("nan"))
    misspelt = {("quries" if name == "queries" else name): value for name, value in fields.items()}
    missing = {name: value for name, value in fields.items() if name != "keys"}
    bad = {
        "unknown field 'quries'": misspelt,
        "field 'keys' not given": missing,
        "unknown field 'dq'": {**fields, "dq": 0},  # a backward field given to the forward
        r"field 'q_strides': 3 value\(s\) expected, got 2": {**fields, "q_strides": (96, 32)},
        "field 'dropout_p': 'x' is not a number": {**fields, "dropout_p": "x"},
        "no kernels for this head_dim": {**fields, "head_dim": 80},
    }
    for message, given in bad.items():
        with pytest.raises(ValueError, match=message):
            _launch(emulator, False, given, [q])
    entries = [f"{n}={v}".encode() for n, v in (("batch", 1), ("batch", 1))]
    assert emulator.emu_attention(0, (ctypes.c_char_p * 2)(*entries), 2, None, 0) == b"field 'batch' given twice"
    assert o.isnan().all(), "a rejected call launched a kernel"
