"""The sm_90a attention forward (csrc/attention/sm90), run on the CPU: tests/attention_emulator/emulator_sm90.cpp
compiles the real kernel source and launch code for the host with emulated TMA, mbarriers and wgmma
(tests/attention_emulator/attention/sm90/primitives_sm90.cuh), one fiber per GPU thread.

The emulator and the kernel agreeing on a wrong layout is the main risk, so the emulated TMA box
placement and wgmma descriptor decoding are first checked against this file's own statement of the
layouts (the PTX ISA's 128B swizzle: 16-byte chunk c of row r of a 1024-byte aligned tile at chunk
c ^ (r % 8); the canonical K-major and MN-major descriptor layouts), then the kernel is compared with
the float64 reference. What only a GPU shows (that the hardware reads the ISA as this file does,
timing, races beyond the emulated deferral) is out of reach here."""

import ctypes
import math
import subprocess
import sys

import pytest
import torch

from fasttx import reference
from fasttx.functional.attention import cuda_sm90_keys
from fasttx.testing import TOLERANCE, rel_error

from .conftest import DEVICE
from .cuda_emulator import MASK_LAYOUTS, compile_emulator, marshal, mask_layout
from .test_cuda_attention_emulated import _fields, reference_lse

E = 128  # the head dim of the tests that name none (the layout checks, the E = 128 kernel cases)
# The head dims of the other tiles (csrc/attention/sm90/attention_fwd_sm90.cuh, Sm90Fwd): E = 64 and 96 with
# 128-key blocks (96: a zero-filled half column block), E = 256 with 80-key blocks, 2 stages, two P V
# wgmma a k-step.
OTHER_HEAD_DIMS = [64, 96, 256]


def tile(head_dim, is_causal, masked, dropout, narrow_keys=False):
    """(query rows, dynamic shared memory bytes) of the sm_90a forward's CTA for an instance (Sm90FwdTile),
    from its rows, keys a block and stages: 192 rows (three consumer warpgroups) at E = 64 without mask or
    dropout, 128 elsewhere; 176 keys in 2 stages at E = 128 without causality, mask or dropout, 80 in 2 at
    E = 256, 128 in 3 elsewhere. The bytes: Q, the K and V tiles (rows of ceil(E / 64) 128-byte blocks),
    an 8-byte mbarrier for Q and four a stage, 1 KB of alignment slack. narrow_keys: with
    FASTTX_ATTENTION_SM90_KEYS=128, whose calls of 176-key tiles take 128-key ones."""
    plain = not masked and not dropout
    rows = 192 if head_dim == 64 and plain else 128
    wide = head_dim == 128 and plain and not is_causal and not narrow_keys
    keys, stages = (80, 2) if head_dim == 256 else (176, 2) if wide else (128, 3)
    row_bytes = 128 * -(-head_dim // 64)
    return rows, rows * row_bytes + stages * 2 * keys * row_bytes + 8 * (1 + 4 * stages) + 1024


SHARED_BASE = 1024  # where the layout entry points put their shared-memory image


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lib = compile_emulator(tmp_path_factory, "attention_emulator", "emulator_sm90.cpp")
    lib.emu_attention_fwd_sm90.restype = ctypes.c_char_p
    lib.emu_turns_probe.restype = ctypes.c_char_p
    lib.emu_smem_desc_128b.restype = ctypes.c_uint64
    lib.emu_smem_desc_128b.argtypes = [ctypes.c_uint32] * 3
    lib.emu_wgmma_ss.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int,
                                 ctypes.c_void_p]
    return lib


# ---- the layouts, stated independently of csrc/attention/sm90/smem_layout_sm90.h ------------------

def desc_128b(addr, lbo, sbo):
    """PTX "Matrix Descriptor Format": start >> 4 in bits 0-13, LBO >> 4 in 16-29, SBO >> 4 in 32-45,
    base offset 0 in 49-51, swizzle mode 1 (128B) in 62-63."""
    return (addr >> 4) | (lbo >> 4) << 16 | (sbo >> 4) << 32 | 1 << 62


def swizzled_offset(row, col):
    """Byte offset of 16-bit element (row, col < 64) in a 1024-byte aligned tile of 128-byte rows."""
    chunk, within = divmod(2 * col, 16)
    return row * 128 + (chunk ^ (row % 8)) * 16 + within


def place(image, offset, rows, values):
    """Writes values[r][c] (c < 64, 16-bit) at image[offset + swizzled_offset(rows[0] + r, c)]."""
    raw = values.view(torch.int16)
    for r in range(raw.shape[0]):
        for c in range(raw.shape[1]):
            o = offset + swizzled_offset(rows + r, c)
            image[o:o + 2] = torch.tensor([int(raw[r, c])], dtype=torch.int16).view(torch.uint8)


def test_descriptor_encoding_is_the_ptx_format(emulator):
    for addr, lbo, sbo in [(1024, 16, 1024), (1024 + 96, 16, 1024), (200704, 16384, 1024), (2048, 4096, 1024)]:
        assert emulator.emu_smem_desc_128b(addr, lbo, sbo) == desc_128b(addr, lbo, sbo)


def test_tma_box_swizzles_and_zero_fills(emulator):
    """A 64-column x 128-row box of a (B, L, H, E) tensor seen as (B, H, L, E) (the row stride larger
    than the head stride), starting at row 10 of L = 70: rows past L land as zeros."""
    B, L, H = 2, 70, 3
    data = torch.randint(-30000, 30000, (B, L, H, E), dtype=torch.int16)
    dims = (ctypes.c_int64 * 4)(E, L, H, B)
    strides = (ctypes.c_int64 * 3)(2 * H * E, 2 * E, 2 * L * H * E)  # bytes of dims L, H, B
    coords = (ctypes.c_int * 4)(64, 10, 1, 1)
    out = torch.zeros(2 * 64 * 128, dtype=torch.uint8)
    emulator.emu_tma_box(ctypes.c_void_p(data.data_ptr()), dims, strides, 64, 128, coords,
                         ctypes.c_void_p(out.data_ptr()))
    expected = torch.zeros_like(out)
    rows = data[1, 10:, 1, 64:]  # the in-bounds rows 10 .. 69
    place(expected, 0, 0, rows)
    assert torch.equal(out, expected)


def _decode_case(emulator, trans_b):
    """D = A B with A (64 x 16) K-major at columns 16 .. 31 of a 64-row tile (start 32 bytes into the
    rows) and B (16 x 128) either K-major (B^T: 128 rows, columns 48 .. 63) or N-major (rows 16 .. 31 of
    a 32-row tile of two 64-column blocks, LBO = the block size apart): small integers, exact in bf16."""
    a = torch.randint(-4, 5, (64, 16)).to(torch.bfloat16)
    b = torch.randint(-4, 5, (16, 128)).to(torch.bfloat16)
    image = torch.zeros(8192 + 16384, dtype=torch.uint8)
    place(image, 0, 0, torch.cat([torch.zeros(64, 16, dtype=torch.bfloat16), a], 1))
    desc_a = desc_128b(SHARED_BASE + 32, 16, 1024)
    if trans_b:
        block = 32 * 128
        for half in range(2):
            place(image, 8192 + half * block, 16, b[:, 64 * half:64 * half + 64])
        desc_b = desc_128b(SHARED_BASE + 8192 + 2 * 1024, block, 1024)
    else:
        place(image, 8192, 0, torch.cat([torch.zeros(128, 48, dtype=torch.bfloat16), b.t()], 1))
        desc_b = desc_128b(SHARED_BASE + 8192 + 96, 16, 1024)
    out = torch.empty(64, 128)
    emulator.emu_wgmma_ss(ctypes.c_void_p(image.data_ptr()), image.numel(), desc_a, desc_b, int(trans_b),
                          ctypes.c_void_p(out.data_ptr()))
    assert torch.equal(out, a.float() @ b.float())


@pytest.mark.parametrize("trans_b", [False, True], ids=["k_major_b", "n_major_b"])
def test_wgmma_descriptor_decoding(emulator, trans_b):
    _decode_case(emulator, trans_b)


# ---- the named-barrier model (bar.sync / bar.arrive) ---------------------------------------------------

def test_named_barriers_pass_the_turn(emulator):
    """Two warpgroups taking turns through a section on two named barriers (emulator_sm90.cpp's probe,
    the consumers' schedule): they alternate, starting with warpgroup 0."""
    order = (ctypes.c_int * 8)()
    emulator.emu_named_barrier_probe(0, 4, order)
    assert list(order) == [0, 1] * 4


@pytest.mark.parametrize("consumers", [1, 2, 3])
def test_the_turns_go_round_robin(emulator, consumers):
    """The kernels' own Sm90Turns (turns_sm90.cuh), of two and three consumers (the forward's tiles, the
    dQ kernel's two) and of one (the dQ kernel at E = 256: no barrier at all): warpgroups 0, 1 (, 2), 0, 1
    (, 2), ..., every named-barrier phase complete at the end (the model fails a count, a missing or an
    extra arrival)."""
    order = (ctypes.c_int * (4 * consumers))()
    error = emulator.emu_turns_probe(consumers, 4, order)
    assert error is None, error
    assert list(order) == list(range(consumers)) * 4


@pytest.mark.parametrize("defect,message", [
    (1, "named barrier arrivals with different thread counts in one phase"),
    (2, "named barrier sync never completes"),
    (3, "a CTA exited with a named barrier phase partly arrived"),
    (4, "named barrier id outside 1..15"),
], ids=["wrong_count", "missed_arrive", "extra_arrive", "id_0"])
def test_named_barrier_model_catches(emulator, defect, message):
    """The probe with one defect: the model aborts with its message (so in a child process; a missed
    arrival is a deadlock, reported once every thread waits with nothing left to run)."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.emu_named_barrier_probe(int(sys.argv[2]), 3, (ctypes.c_int * 6)())")
    proc = subprocess.run([sys.executable, "-c", code, emulator._name, str(defect)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# ---- the kernel -------------------------------------------------------------------------------------

def launch_sm90(emulator, fields, inputs):
    """emu_attention_fwd_sm90 with the params' fields by name (as emu_attention's): the sm_90a kernel's
    tile if it ran, as tile() states it (query rows, their grid checked to cover L; dynamic shared memory
    bytes), None if not."""
    launched, shared = ctypes.c_int(-1), ctypes.c_int(-1)
    error = emulator.emu_attention_fwd_sm90(*marshal(fields, inputs), ctypes.byref(launched), ctypes.byref(shared))
    if error is not None:
        raise ValueError(f"emu_attention_fwd_sm90: {error.decode()}")
    return (launched.value, shared.value) if launched.value else None


def run_sm90(emulator, q, k, v, scale, is_causal, mask=None, dropout_p=0.0, seed=0):
    """O, lse and the sm_90a kernel's tile (launch_sm90; None: it did not run), launched as
    attention_fwd_launch would (the mask broadcast to (B, H, L, S) through zero strides, as the binding
    does)."""
    B, H, L, head_dim = q.shape
    if mask is not None:
        mask = mask.expand(B, H, L, k.shape[2])
    o = torch.full((B, H, L, head_dim), float("nan"), dtype=q.dtype)
    lse = torch.full((B, H, L), float("nan"))
    seed = torch.tensor([seed], dtype=torch.int64)
    fields = _fields(False, q, k, v, mask, scale, is_causal, dropout_p, seed, o, lse)
    return o, lse, launch_sm90(emulator, fields, [t for t in (q, k, v, mask, seed) if t is not None])


SEED = 1234567890123


def triton_keep_mask(B, H, L, S, dropout_p):
    """The keep mask the Triton kernels draw (and the sm_80 kernel, tests/test_cuda_attention_emulated.py;
    philox.h's specification, tests/test_cuda_attention_philox.py): Triton draws it where it runs."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    return dropout_keep_mask(SEED, B, H, L, S, dropout_p, DEVICE).cpu()


def check(emulator, B, H, Hkv, L, S, dtype=torch.bfloat16, is_causal=False, transposed=False, mask=None,
          dropout_p=0.0, E=E, narrow_keys=False):
    shape = lambda heads, n: (B, n, heads, E) if transposed else (B, heads, n, E)  # noqa: E731
    tr = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t)  # noqa: E731
    q, k, v = (tr(torch.randn(shape(h, n)).to(dtype)) for h, n in ((H, L), (Hkv, S), (Hkv, S)))
    scale = 1 / math.sqrt(E)
    o, lse, ran = run_sm90(emulator, q, k, v, scale, is_causal, mask, dropout_p, SEED)
    expected = tile(E, is_causal, mask is not None, dropout_p > 0, narrow_keys)
    assert ran == expected, f"the sm_90a kernel ran with tile {ran}, not {expected}"
    keep = triton_keep_mask(B, H, L, S, dropout_p) if dropout_p > 0 else None
    ref_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    ref = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), ref_mask, dropout_p, is_causal,
                                                 scale, enable_gqa=True, dropout_mask=keep)
    err = rel_error(o, ref)
    assert err <= TOLERANCE[dtype], f"output: relative error {err:.3g} > {TOLERANCE[dtype]:.3g}"
    ref_lse = reference_lse(q, k, mask, scale, is_causal)  # dropout leaves it alone
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), ~finite), "lse must be +inf exactly on fully masked rows"
    assert (lse[~finite] == float("inf")).all() and (o[~finite] == 0).all(), "a fully masked row gives O = 0"
    assert (lse[finite].double() - ref_lse[finite]).abs().max() <= 1e-4 * (1 + ref_lse[finite].abs().max())


# Not causal, at E = 128: 176-key blocks in a 2-stage ring. S = 352: two whole blocks (no element checks);
# 650 and 1000: 4 and 6 blocks, each stage refilled, the last block partial.
@pytest.mark.parametrize("L,S", [(1, 1), (1, 200), (130, 7), (70, 300), (70, 352), (70, 650), (1, 1000)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sequence_lengths(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype)


@pytest.mark.parametrize("L,S", [(70, 300), (1, 1000)], ids=str)
def test_128_key_blocks_where_switched(emulator, L, S):
    """cuda_sm90_keys(128), FASTTX_ATTENTION_SM90_KEYS=128 (the bench's comparison): the calls of 176-key
    tiles run on the 128-key tile instead (read at each call), and compute the same; the 176-key tile
    again once the block ends."""
    with cuda_sm90_keys(128):
        check(emulator, 1, 2, 1, L, S, narrow_keys=True)
        with cuda_sm90_keys(176):
            check(emulator, 1, 2, 1, L, S)
        check(emulator, 1, 2, 1, L, S, narrow_keys=True)
    check(emulator, 1, 2, 1, L, S)
    with pytest.raises(ValueError, match="keys must be 128 or 176, got 64"):
        cuda_sm90_keys(64)


@pytest.mark.parametrize("L,S", [(200, 200), (130, 260), (260, 130)], ids=str)
def test_causal(emulator, L, S):
    check(emulator, 1, 1, 1, L, S, is_causal=True)


def test_grouped_query_attention_and_transposed_views(emulator):
    check(emulator, 2, 4, 2, 33, 150, torch.float16, transposed=True)


# Masks read through broadcast strides (bool and float, fp16 / fp32 / bf16), each with fully masked rows;
# L = 70 and S = 200: a partial query tile, a second key block, partial.
def _mask(kind, B, H, L, S):
    if kind == "bool_key_padding":  # (B, 1, 1, S): broadcast over heads and queries; batch 0 fully masked
        mask = torch.rand(B, 1, 1, S) > 0.3
        mask[0] = False
    elif kind == "bool_per_head_query_broadcast":  # (1, H, 1, S): broadcast over batch and queries
        mask = torch.rand(1, H, 1, S) > 0.5
    elif kind == "bool_full":
        mask = torch.rand(B, H, L, S) > 0.5
        mask[-1, -1, 5] = False
        mask[0, 0, 69] = False  # the tile's last row, the second consumer warpgroup's
    elif kind == "float16_full_with_-inf":
        mask = torch.randn(B, H, L, S).half()
        mask[torch.rand(mask.shape) > 0.7] = float("-inf")
        mask[-1, 0, 3] = float("-inf")
    elif kind == "bfloat16_rows":  # (B, 1, L, 1): a per-query bias, broadcast over heads and keys
        mask = torch.randn(B, 1, L, 1).bfloat16()
        mask[0, 0, 7] = float("-inf")
    else:  # float32, (L, S): broadcast over batch and heads, second key block all -inf on some rows
        mask = torch.randn(1, 1, L, S)
        mask[..., 10:20, 128:] = float("-inf")
        mask[..., 40, :] = float("-inf")
    return mask


MASKS = ["bool_key_padding", "bool_per_head_query_broadcast", "bool_full", "float16_full_with_-inf",
         "bfloat16_rows", "float32_2d"]


@pytest.mark.parametrize("kind", MASKS)
def test_masks(emulator, kind):
    dtype = torch.float16 if MASKS.index(kind) % 2 else torch.bfloat16
    check(emulator, 2, 2, 1, 70, 200, dtype, mask=_mask(kind, 2, 2, 70, 200))


@pytest.mark.parametrize("kind,odd_keys", MASK_LAYOUTS, ids=str)
def test_mask_layouts(emulator, kind, odd_keys):
    """Each way a mask is read (cuda_emulator.MASK_LAYOUTS); the emulator aborts on a mask load
    outside the mask's storage or misaligned for its width."""
    B, H, L, S = 2, 2, 70, 200 + odd_keys
    check(emulator, B, H, 1, L, S, torch.float16, mask=mask_layout(kind, B, H, L, S))


@pytest.mark.parametrize("kind", ["bool_full", "float32_2d"])
def test_masks_with_causal(emulator, kind):
    """The mask's logits then the diagonal's -inf on the diagonal blocks; L > 128: two query tiles, the
    second with blocks free of checks."""
    check(emulator, 1, 2, 2, 150, 150, torch.float16, is_causal=True, mask=_mask(kind, 1, 2, 150, 150))


def kernel_keep_mask(emulator, B, H, Hkv, L, S, dropout_p, is_causal=False, E=E):
    """The kernel's keep mask (B, H, L, S), read off its output: with V's row j the unit vector of
    column j % E (keys E c .. E c + E - 1 in run c, the others' rows 0), O[i, j % E] = P_ij / (1 - p)
    when key j is kept and exactly 0 when it is dropped; P_ij > 0 wherever the mask and causality let
    key j in (small scores: no probability underflows)."""
    q = (0.1 * torch.randn(B, H, L, E)).bfloat16()
    k = (0.1 * torch.randn(B, Hkv, S, E)).bfloat16()
    keep = torch.zeros(B, H, L, S, dtype=torch.bool)
    for c in range(0, S, E):
        v = torch.zeros(B, Hkv, S, E, dtype=torch.bfloat16)
        n = min(E, S - c)
        v[:, :, c:c + n] = torch.eye(n, E, dtype=torch.bfloat16)
        o, _, ran = run_sm90(emulator, q, k, v, 1 / math.sqrt(E), is_causal, None, dropout_p, SEED)
        assert ran == tile(E, is_causal, False, True), f"the sm_90a kernel ran with tile {ran}"
        keep[..., c:c + n] = o[..., :n] != 0
    return keep


# GQA (2 query heads a kv head); S = 37 ends each row with a partial group of the 8 keys one Philox call
# serves, S = 200 crosses a key block (the counters' key offset), L = 70 / 150 partial query tiles.
@pytest.mark.parametrize("B,L,S,is_causal", [(2, 70, 37, False), (1, 150, 200, False), (1, 150, 200, True)], ids=str)
def test_dropout_keeps_exactly_the_triton_keep_mask(emulator, B, L, S, is_causal):
    """Bit for bit: the elements the sm_90a kernel keeps are those the Triton and sm_80 kernels keep,
    and those of the independent NumPy oracle (tests/test_cuda_attention_philox.py)."""
    from .test_cuda_attention_philox import oracle_keep

    H, p = 2, 0.3
    ours = kernel_keep_mask(emulator, B, H, 1, L, S, p, is_causal)
    theirs = triton_keep_mask(B, H, L, S, p)
    allowed = torch.ones(L, S, dtype=torch.bool).tril() if is_causal else torch.ones(L, S, dtype=torch.bool)
    assert torch.equal(ours & allowed, theirs & allowed)
    assert torch.equal(ours & allowed, oracle_keep(SEED, B * H * L, S, p).reshape(B, H, L, S) & allowed)
    assert 0.6 < ours[..., allowed].float().mean() < 0.8  # p = 0.3 drops about 30 %


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_dropout(emulator, dtype, is_causal):
    """Output against the float64 reference with the Triton keep mask (scaled by 1 / (1 - p)), lse that
    of the undropped probabilities."""
    check(emulator, 2, 2, 1, 70, 200, dtype, is_causal=is_causal, dropout_p=0.25)


def test_dropout_with_a_mask(emulator):
    check(emulator, 2, 2, 2, 33, 150, torch.float16, transposed=True, mask=_mask("bool_key_padding", 2, 2, 33, 150),
          dropout_p=0.4)


def test_no_keys_gives_zero_output_and_infinite_lse(emulator):
    q, k = torch.randn(1, 2, 70, E).bfloat16(), torch.randn(1, 2, 0, E).bfloat16()
    o, lse, launched = run_sm90(emulator, q, k, k, 0.125, False)
    assert launched and (o == 0).all() and (lse == float("inf")).all()


def test_negative_scale_is_left_to_the_sm80_kernel(emulator):
    q = torch.randn(1, 1, 8, E).bfloat16()
    assert not run_sm90(emulator, q, q, q, -0.125, False)[2]


def test_params_are_set_by_field_name(emulator):
    """As emu_attention's: a misspelt, missing or backward field, or a wrong number of values, fails
    loudly and launches nothing."""
    q = torch.zeros(1, 1, 3, E).bfloat16()
    o, lse = torch.full_like(q, float("nan")), torch.full((1, 1, 3), float("nan"))
    fields = _fields(False, q, q, q, None, 0.5, False, 0.0, torch.zeros(1, dtype=torch.int64), o, lse)
    misspelt = {("quries" if name == "queries" else name): value for name, value in fields.items()}
    missing = {name: value for name, value in fields.items() if name != "keys"}
    bad = {
        "unknown field 'quries'": misspelt,
        "field 'keys' not given": missing,
        "unknown field 'dq'": {**fields, "dq": 0},
        r"field 'k_strides': 3 value\(s\) expected, got 4": {**fields, "k_strides": (1, 2, 3, 4)},
    }
    for message, given in bad.items():
        with pytest.raises(ValueError, match=message):
            launch_sm90(emulator, given, [q])
    assert o.isnan().all(), "a rejected call launched a kernel"
    assert launch_sm90(emulator, fields, [q])
    assert (o == 0).all() and torch.allclose(lse, torch.full_like(lse, math.log(3)))


# ---- the other head dims' tiles ------------------------------------------------------------------------
# L and S multiples of neither 128 nor 80 (partial query tiles and key blocks), several key blocks
# through the ring (E = 256: 2 stages, each reused), masks with fully masked rows, causal with
# diagonal blocks of 80 keys across the 128-query tile, GQA through transposed views, dropout.

@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("L,S", [(1, 1), (130, 7), (70, 410)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_other_head_dims_sequence_lengths(emulator, E, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype, E=E)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("L,S", [(200, 200), (130, 260), (260, 130)], ids=str)
def test_other_head_dims_causal(emulator, E, L, S):
    check(emulator, 1, 1, 1, L, S, is_causal=True, E=E)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
def test_other_head_dims_grouped_query_attention_and_transposed_views(emulator, E):
    check(emulator, 2, 4, 2, 33, 170, torch.float16, transposed=True, E=E)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
@pytest.mark.parametrize("kind", ["bool_key_padding", "bool_full", "float16_full_with_-inf", "float32_2d"])
def test_other_head_dims_masks(emulator, E, kind):
    dtype = torch.float16 if "float16" in kind else torch.bfloat16
    check(emulator, 2, 2, 1, 70, 200, dtype, mask=_mask(kind, 2, 2, 70, 200), E=E)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
def test_other_head_dims_masks_with_causal(emulator, E):
    check(emulator, 1, 2, 2, 150, 150, torch.float16, is_causal=True, mask=_mask("bool_full", 1, 2, 150, 150), E=E)


@pytest.mark.parametrize("E,is_causal", [(64, False), (64, True), (96, True), (256, False), (256, True)], ids=str)
def test_other_head_dims_dropout(emulator, E, is_causal):
    check(emulator, 2, 2, 1, 70, 200, torch.bfloat16, is_causal=is_causal, dropout_p=0.25, E=E)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
def test_other_head_dims_dropout_keeps_exactly_the_triton_keep_mask(emulator, E):
    """S = 203 crosses key blocks of 128 (E = 64, 96) and of 80 (E = 256), with a partial group of 8 keys
    at the end; GQA, a partial query tile; causal."""
    B, H, L, S, p, is_causal = 1, 2, 150, 203, 0.3, True
    ours = kernel_keep_mask(emulator, B, H, 1, L, S, p, is_causal, E=E)
    allowed = torch.ones(L, S, dtype=torch.bool)
    allowed = allowed.tril() if is_causal else allowed
    assert torch.equal(ours & allowed, triton_keep_mask(B, H, L, S, p) & allowed)
    assert 0.6 < ours[..., allowed].float().mean() < 0.8


def test_e256_causal_dropout_with_a_mask(emulator):
    """The instance that spilled when it was first compiled (csrc/attention/README.md), now built: causal,
    dropout and a mask with fully masked rows, two query tiles, diagonal 80-key blocks."""
    check(emulator, 1, 2, 1, 150, 210, torch.float16, is_causal=True, mask=_mask("bool_full", 1, 2, 150, 210),
          dropout_p=0.3, E=256)


@pytest.mark.parametrize("E", OTHER_HEAD_DIMS)
def test_other_head_dims_dropout_with_a_mask(emulator, E):
    check(emulator, 2, 2, 2, 33, 150, torch.float16, transposed=True, mask=_mask("bool_key_padding", 2, 2, 33, 150),
          dropout_p=0.4, E=E)


# ---- E = 64 without mask or dropout: 192 x 128 tiles, three consumer warpgroups -------------------------
# (check asserts the tile). L = 1 (two consumers with only padding rows), L not a multiple of 192 (the
# last CTA's third warpgroup partly or wholly past L), several CTAs, key blocks through the ring; causal
# with L != S (diagonal blocks across the 192 rows, CTAs whose first warpgroup's rows see none of the last
# block's keys); GQA with B, H > 1 through transposed views.

@pytest.mark.parametrize("L,S", [(1, 1), (1, 300), (200, 7), (385, 410)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_e64_three_consumers_sequence_lengths(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype, E=64)


@pytest.mark.parametrize("L,S", [(1, 5), (200, 330), (330, 200), (400, 400), (100, 700)], ids=str)
def test_e64_three_consumers_causal(emulator, L, S):
    check(emulator, 1, 1, 1, L, S, torch.float16, is_causal=True, E=64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_e64_three_consumers_grouped_query_attention_and_transposed_views(emulator, is_causal):
    check(emulator, 2, 4, 2, 200, 260, torch.bfloat16, is_causal=is_causal, transposed=True, E=64)


@pytest.mark.parametrize("E", [32, 192])
def test_head_dims_without_a_tile_are_left_to_the_sm80_kernel(emulator, E):
    q = torch.randn(1, 1, 8, E).bfloat16()
    assert not run_sm90(emulator, q, q, q, 0.125, False)[2]
