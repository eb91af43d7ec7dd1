"""Attention forward, FlashAttention-2 style: O = dropout(softmax(scale * Q K^T + mask)) V. The kernel
arguments, grid, autotuning and the pieces the backward (attention_bwd.py) shares: attention_common.py.

Layout. q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) are read through their strides (only the last
dim must be contiguous, so (B, L, H, E) activations transposed to (B, H, L, E) are read in place). With
grouped-query attention query head h reads kv head h // (H // Hkv); K and V are never repeated. The mask
is a view broadcast to (B, H, L, S) with 0 strides, so a (B, 1, 1, S) key-padding mask costs O(B * S):
bool keeps True entries, float is added to the scaled scores. A mask the same for every query row (key
padding) is read as one vector of keys per key block, other masks as (BLOCK_M, BLOCK_N) tiles
(attention_common.py, "Masks"). Causal masking keeps key j <= query i
(top-left aligned, as torch's SDPA when L != S). Nothing of size L * S is stored: the backward recomputes
the probabilities from q, k and the saved log-sum-exp.

Forward. The kernels work in base 2, exp(t) = 2^(t log2 e), with log2 e folded into the scale and the
float mask: the logits are z_ij = (scale q_i . k_j + mask_ij) log2 e, -inf where masked out. A program
owns BLOCK_M query rows and walks the key blocks with the online softmax (Milakov & Gimelshein, 2018;
Dao, 2023), keeping per row the running max m, sum l and unnormalised output acc:
    m' = max(m, max_j z_j),  p_j = 2^(z_j - m'),  l' = l 2^(m - m') + sum_j p_j,
    acc' = acc 2^(m - m') + sum_j p_j v_j,
and at the end O = acc / l. The scale is folded into the exponent: without a float mask z_ij = x_ij c
with x_ij = q_i . k_j (-inf where masked out) and c = |scale| log2 e > 0, so max_j z_j = c max_j x_j
(rounding is monotone) is one multiply per row and 2^(z_j - m') one FMA per score, x_j c - m', where
scaling each score first took a multiply and a subtraction (attention_common.masked_scores). c > 0 for
any scale, which torch accepts of any sign: the program negates its q tile once where scale < 0 and
zeroes it where scale = 0 (then c = log2 e; compiled per sign, constexpr SCALE_SIGN), and -inf stays
-inf, never -inf x 0 = NaN. A float mask must be in the row max: its logits are formed first (one
FMA, x c + mask log2 e) and used as they are. Compiled for sm_90a (Triton 3.8, bf16, head dim 128,
(128, 64, 8, 3)), the loop's FP32 instructions for its 32 scores a thread went from 96 mul + 34 sub +
2 fma to 66 mul + 2 sub + 34 fma (the backward kernels, which subtract the lse in their exponent,
likewise: benchmarks/notes/attention.md). The row's log-sum-exp (natural log) is stored for the
backward:
    lse = (m + log2 l) ln 2,   so that  P_ij = exp(scale q_i . k_j + mask_ij - lse) = 2^(z_ij - lse log2 e).
While a row has nothing kept (m = -inf) its shift is 0 instead of m, so -inf logits give 2^-inf = 0,
not 2^(-inf + inf) = NaN. A fully masked row ends with l = 0: its O is 0 (the reciprocal of a zero sum
is taken as 0) and its lse is stored as +inf, which makes every recomputed P_ij = 2^(z - inf) = 0 in
the backward, for finite and -inf logits alike, with no special case there.

Float masks are used as given, in fp32: a value below -FLT_MAX / log2(e) ~ -2.4e38 (e.g. the finfo.min
of fp32 or bf16 that some models use for padding) overflows to -inf once scaled, so it masks exactly and
a row of only such values counts as fully masked (0, where torch averages it uniformly). A row whose
every logit is a huge finite negative (say -1e30) has an lse whose fp32 rounding swamps log l: its output
is right but its recomputed P, hence its gradients, are not. Use bool masks or -inf for padding.

Dropout (training). Keep mask Z_ij with P(Z_ij = 1) = 1 - p_q, and O = ((P * Z) V) / (1 - p); the lse
stays that of the undropped P. Z_ij = (v_m >= t) for the 16-bit value m = j % 8 of the words (w_0, ..,
w_3) = tl.randint4x(seed, c, PHILOX_ROUNDS), v_2i the low half of w_i and v_2i+1 its high half, c = ((b H + h) L + i)
ceil(S / 8) + j // 8: Philox-4x32-7 keyed by the seed (read from the Seed tensor by each program; see
attention_common.py for why not passed by value), counted by the group of 8 keys in the flat (B H L, S)
scores (int64, as Triton splits it into two 32-bit counter words). t = dropout_threshold(p) = round(p
2^16) (at most 2^16 - 1), computed once on the host, so p_q = t / 2^16 is within 2^-17 of p (clamped
to 1 - 2^-16 above 1 - 2^-17), a bias far below the sampling noise of any tensor dropout is used on;
the scale stays torch's 1 / (1 - p). One call serves 8 consecutive keys of a row, an eighth of the
Philox work of a call per score (dropout_keep); forward, backward, :func:`dropout_keep_mask` and the
CUDA kernels (csrc/attention/philox.h) draw the same Z whatever their block shapes.

Blocks visited. Causal skips every key block past a query block's last query. Only the diagonal blocks
and the last, partial key block apply element-wise causal and key-bound checks (a branch in the one loop
over the key blocks, see attention_common.score_block); the others are scored unmasked. The key bound
matters here: a padding key, loaded as 0, would score 0 and count in l.

Schedule (constexpr DEFER_PV; on where defer_pv_fits admits the config). Key block j's step issues
Q K_j^T, waits for it, then issues the P V of block j - 1 (its P and rescale carried from the step
before) and computes block j's softmax while that product is in flight; the last block's P V follows
the loop. On Hopper, Triton keeps
a wgmma in flight past the loop's back edge only if nothing but another wgmma's accumulator reads its
result before the first full wait (wait_group 0) of the next step: here that wait is Q K_{j+1}^T's, and
the P V result is read (rescaled) only after it. Compiled for sm_90a (Triton 3.6 and 3.8), the SASS has
all of a step's MUFU.EX2 between the P V's HGMMA and the next WARPGROUP.DEPBAR; in the previous schedule
(DEFER_PV off: P V in its own block's step, after the softmax) the softmax ran with no wgmma in flight.
The cost is one more fp32 score tile held across the step (registers: benchmarks/notes/attention.md).
Issuing Q K_{j+1}^T ahead of block j's softmax instead does not overlap: Triton waits for it at once,
since its result is read by the next step's softmax. FASTTX_TRITON_DEFER_PV=0 (or defer_pv(False)) runs
the previous schedule, to compare the two on one GPU.

Precision. Scores, softmax statistics and accumulators are fp32; P is rounded to the input dtype for the
P V product (as FlashAttention). fp32 inputs follow torch's float32 matmul precision: at its default,
"highest", the products use input_precision="tf32x3" (each operand split into TF32 hi + lo parts, three
tensor-core MMAs): relative errors ~1e-6, as IEEE fp32; at "high" / "medium", plain "tf32": ~3x the MMA
throughput and ~1e-3 relative errors, as fp16. "ieee" is never used: Triton 3.6 lowers it for sm_90 to
CUDA-core FMAs (67 TFLOPS on H100 SXM against 495 dense TF32), whose layouts spill beyond 64 x 32 tiles.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl

from .attention_common import (LN2, attention_autotune, dropout_keep, dropout_threshold, head_rows, held_copies,
                               kernel_args, key_blocks, launch_grid, load_seed, load_v, query_block, score_block,
                               store_rows)
from .utils import cdiv

# ---- launch configurations ---------------------------------------------------------------------
#
# Registers bound the tiles: fp32 accumulators of BLOCK x head dim (forward: acc, BLOCK_M x Ev; dK/dV:
# two of BLOCK_N x E; dQ: BLOCK_M x E) and a BLOCK_M x BLOCK_N fp32 score tile or two share the 255
# registers of each of 32 * num_warps threads; shared memory (227 KB on H100) holds num_stages copies of
# the streamed tiles (see fwd_shared_memory). The lists were chosen by compiling for sm_90a (ptxas -v)
# for configs that spill nothing without mask or dropout for head dims up to its key and its dtype
# class (fp32 with tf32x3, whose hi/lo operand splits make it the worst case); a mask tile (bool ones
# most) or the Philox state adds registers, so each list also holds a config with few score elements
# per thread (BLOCK_M * BLOCK_N / (32 * num_warps) <= 16). fp32 beyond head dim 64 has nothing
# spill-free with 64-row tiles; its lists keep the least-spilling ones and a 16-row one. Registers and
# spills as compiled today: `make kernel-report` (benchmarks/notes/kernel_report.md), not figures
# here. See attention_common.py for the space's key.
FWD_SPACE = {
    (64, False): [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4)],
    (128, False): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 8, 4)],
    (256, False): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 3)],
    (64, True): [(64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2), (128, 16, 8, 3)],
    (128, True): [(64, 16, 4, 2), (128, 32, 8, 2), (16, 32, 4, 3)],
    (256, True): [(16, 16, 4, 2), (16, 32, 4, 2)],
}
# Configs that compile and launch but compute wrong results, by (MASK_KIND, fp32). (64, 32, 4, 3), fp32
# with a float mask: on an H200 (Triton 3.6, sm_90a) it returned inf / NaN / relative errors ~1 (at
# E = 16 and 64, masks random, all zeros or with -inf, dtype fp32), where every other config admitted
# for those calls, 3-stage ones included ((128, 16, 8, 3) at E = 16 / 64, (16, 32, 4, 3) at E = 128),
# and the same config without a mask were within 1e-6 (benchmarks/results/2026-12-04-h200/
# diag_attention_fp32_float_mask.txt, and gpu_check.json's autotune stage). Hence this one config, not
# every 3-stage one. Bool masks and no mask keep it: fp32 tests with a bool mask at E = 16 pass with
# it there (the float-mask ones fail); 16-bit inputs never list it.
FWD_WRONG = {("float", True): [(64, 32, 4, 3)]}


def defer_pv_fits(config, args):
    """{"DEFER_FITS": whether the deferred P V (module docstring, "Schedule") is compiled for ``config``
    (BLOCK_M, BLOCK_N, num_warps, num_stages) in a launch with ``args``}. It holds one more fp32 score
    tile across the step: compiled for sm_90a (Triton 3.8), it spills where the fp32 elements a thread
    holds of the two score tiles and the accumulator, BLOCK_M (2 BLOCK_N + BLOCK_EV) / (32 num_warps),
    exceed 128 (head dim 64, (128, 64, 4, 3), with a mask: 416-572 bytes; without one on the pointer
    path: 40-48), with dropout (Philox's state beside it: 4-88 bytes at head dims 128, bool or float
    mask), and in fp32 (tf32x3 operand splits: 550-920 bytes at head dim 128); none of those do."""
    block_m, block_n, num_warps, _ = config
    fits = block_m * (2 * block_n + args["BLOCK_EV"]) <= 128 * 32 * num_warps
    return {"DEFER_FITS": fits and not args["HAS_DROPOUT"] and args["dtype_bytes"] != 4}


def fwd_shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes):
    """Bytes of shared memory the forward kernel's dot operands take, as Triton 3.8 allocates them for
    sm_90a (checked by compiling the configs, tests/ops/compile_attention.py): the q tile and num_stages
    copies of the k and v tiles the dots stream (the mask's buffers: mask_buffer_bytes)."""
    dots = held_copies(dtype_bytes) * block_m * block_e + num_stages * block_n * (block_e + block_ev)
    return dots * dtype_bytes


# ---- forward -----------------------------------------------------------------------------------


@triton.jit
def _reciprocal(s):
    # 1 / inf = 0 for a row with nothing kept (l = 0): its acc is 0, and so is its output.
    return 1.0 / tl.where(s > 0.0, s, float("inf"))


@triton.jit
def _add_pv(acc, p, alpha, tile, start_n, strides, sizes, EV: tl.constexpr, PRECISION: tl.constexpr,
            TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_EV: tl.constexpr):
    """acc * alpha + P V for the fp32 probabilities ``p`` of the keys from start_n (P rounded to V's dtype)."""
    v = load_v(tile, start_n, strides, sizes, EV, TMA, BLOCK_N, BLOCK_EV)
    return tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)


@triton.jit
def _fwd_blocks(
    acc, l_i, m_i, tile, Mask, full_end, end, rows, offs_m, strides, sizes, scale_log2, keep_threshold, seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, MASK_KIND: tl.constexpr,
    MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, DEFER_PV: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) with the key blocks starting before ``end``; those from
    ``full_end`` on are checked (key_blocks, score_block). DEFER_PV: the module docstring's "Schedule"."""
    rng_row, S = tile[5], sizes[3]
    # DEFER_PV carries block j - 1's P and rescale to block j; block "-1" adds 0 x block 0's V (loaded twice).
    p_prev = tl.zeros((rows.shape[0], BLOCK_N), dtype=tl.float32)
    alpha_prev = tl.full((rows.shape[0],), 1.0, dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        x, x_scale, _ = score_block(tile, Mask, start_n, full_end, rows, offs_m, strides, sizes, scale_log2, E, EV,
                                    BLOCK_E, BLOCK_EV, MASK_KIND, MASK_ROWS_BROADCAST, IS_CAUSAL, PRECISION, TMA,
                                    BLOCK_N)
        if DEFER_PV:  # issued after Q K^T's wait, in flight through this block's softmax
            acc = _add_pv(acc, p_prev, alpha_prev, tile, tl.maximum(start_n - BLOCK_N, 0), strides, sizes, EV,
                          PRECISION, TMA, BLOCK_N, BLOCK_EV)
        # The logits are x * x_scale with x_scale > 0: their row max is x's, scaled once per row.
        m_new = tl.maximum(m_i, tl.max(x, axis=1) * x_scale)
        # 0 while the row has nothing kept: -inf logits then give 2^-inf = 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(tl.fma(x, x_scale, -shift[:, None]))  # one FMA a score
        alpha = tl.exp2(m_i - shift)  # 0 while m_i = -inf: acc and l_i are still 0 then
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_DROPOUT:  # after the sum: lse is that of the undropped probabilities
            p = tl.where(dropout_keep(seed, rng_row, rows, start_n, S, keep_threshold, BLOCK_N), p, 0.0)
        if DEFER_PV:
            p_prev, alpha_prev = p, alpha
        else:
            acc = _add_pv(acc, p, alpha, tile, start_n, strides, sizes, EV, PRECISION, TMA, BLOCK_N, BLOCK_EV)
        m_i = m_new
    if DEFER_PV:  # the last block's P V
        acc = _add_pv(acc, p_prev, alpha_prev, tile, (end - 1) // BLOCK_N * BLOCK_N, strides, sizes, EV, PRECISION,
                      TMA, BLOCK_N, BLOCK_EV)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["keep_threshold"])  # see kernel_args
def _attn_fwd_kernel(
    Q, K, V, Mask, Seed, strides, sizes, scale_log2, dropout_p, keep_threshold,  # attention_common.py
    seq_buckets, dtype_bytes,
    O,  # (B, H, L, Ev) output, contiguous, dtype of Q (or its descriptor)
    LSE,  # (B, H, L) fp32 log-sum-exp of the masked scores (natural log; +inf for fully masked rows)
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, SCALE_SIGN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DEFER_PV: tl.constexpr = True, DEFER_FITS: tl.constexpr = True,
):
    start_m, head, rows, offs_m, seed, tile = query_block(Q, K, V, Seed, strides, sizes, E, BLOCK_E, BLOCK_EV,
                                                          SCALE_SIGN, HAS_DROPOUT, TMA, BLOCK_M, BLOCK_N)
    b, h, bh = head  # not unpacked in the line above: Triton 3.6's cache key cannot hash nested targets
    L, S = sizes[2], sizes[3]
    offs_ev = tl.arange(0, BLOCK_EV)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_EV), dtype=tl.float32)
    full_end, end = key_blocks(start_m, S, IS_CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, tile, Mask, full_end, end, rows, offs_m, strides, sizes,
                                scale_log2, keep_threshold, seed, E, EV, BLOCK_E, BLOCK_EV, MASK_KIND,
                                MASK_ROWS_BROADCAST, IS_CAUSAL, HAS_DROPOUT, PRECISION, TMA, BLOCK_N,
                                DEFER_PV and DEFER_FITS)

    inv_l = _reciprocal(l_i)
    if HAS_DROPOUT:
        inv_l = inv_l / (1.0 - dropout_p)  # the kept probabilities' 1 / (1 - p), once per row
    store_rows(head_rows(O, bh.to(tl.int64) * L * EV, b, h, TMA), start_m, L, EV,
               rows[:, None] * EV + offs_ev[None, :], acc * inv_l[:, None], EV, TMA, BLOCK_M, BLOCK_EV)
    # +inf where nothing is kept (l = 0), so that the backward's P = 2^(z - inf) = 0. log2 gets 1 there,
    # not 0: the same result, without the interpreter's numpy warning about log2(0).
    has_l = l_i > 0.0
    lse = tl.where(has_l, (m_i + tl.log2(tl.where(has_l, l_i, 1.0))) * LN2, float("inf"))
    tl.store(LSE + bh.to(tl.int64) * L + offs_m, lse, mask=offs_m < L)


@triton.jit(do_not_specialize=["keep_threshold"])  # see kernel_args
def _dropout_keep_kernel(
    Keep,  # (R, S) bool, contiguous, R = B * H * L: the (B, H, L, S) keep mask
    R,
    S,
    Seed,
    keep_threshold,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0).to(tl.int64) * BLOCK_M
    start_n = tl.program_id(1) * BLOCK_N
    rows = tl.arange(0, BLOCK_M)
    cols = start_n + tl.arange(0, BLOCK_N)
    keep = dropout_keep(load_seed(Seed, True), start_m, rows, start_n, S, keep_threshold, BLOCK_N)
    tl.store(Keep + (start_m + rows[:, None]) * S + cols[None, :], keep,
             mask=(start_m + rows[:, None] < R) & (cols[None, :] < S))


# ---- launchers ---------------------------------------------------------------------------------

FWD_TUNING = (FWD_SPACE, fwd_shared_memory, FWD_WRONG)  # attention_autotune's arguments (and defer_pv_fits)
# The loop's schedule (module docstring, "Schedule"): FASTTX_TRITON_DEFER_PV=0 runs the previous one, P V in
# the step of its own block, to compare the two on one GPU (the bench's "fasttx triton (P V in step)").
_DEFER_PV = os.environ.get("FASTTX_TRITON_DEFER_PV", "1") != "0"


@contextlib.contextmanager
def defer_pv(on: bool):
    """Runs the block's forward launches with the schedule DEFER_PV ``on`` or off, then restores the one
    before (the bench's "fasttx triton (P V in step)")."""
    global _DEFER_PV
    previous, _DEFER_PV = _DEFER_PV, bool(on)
    try:
        yield
    finally:
        _DEFER_PV = previous


_attn_fwd = attention_autotune(*FWD_TUNING, meta=defer_pv_fits)(_attn_fwd_kernel)
_DROPOUT_BLOCK = (16, 64)  # keep-mask rows and keys per program of the test helper


def attention_fwd(q, k, v, mask, scale: float, is_causal: bool, dropout_p: float, seed):
    """FlashAttention-2 forward; see the module docstring. Returns (o, lse).

    q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), any strides with a contiguous last dim; mask None
    or 4-D broadcastable to (B, H, L, S), bool (True = keep) or float (added). o: (B, H, L, Ev)
    contiguous in q's dtype, 0 on fully masked rows; lse: (B, H, L) fp32 natural log-sum-exp of the
    scaled, masked scores (without dropout), +inf on fully masked rows. ``seed``, an int64 tensor of one
    element (on q's device for CUDA graphs), keys the dropout draw; None without dropout.
    """
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))  # before the checks: O is a kernel argument like q, k, v
    args = kernel_args(q, k, v, mask, seed, scale, is_causal, dropout_p, O=o)
    B, H, L, _ = q.shape
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    if o.numel() > 0:
        _attn_fwd[lambda meta: launch_grid(L, meta["BLOCK_M"], B * H)](LSE=lse, DEFER_PV=_DEFER_PV, **args)
    return o, lse


def dropout_keep_mask(seed: int, B: int, H: int, L: int, S: int, dropout_p: float, device) -> torch.Tensor:
    """The (B, H, L, S) bool keep mask that attention_fwd / attention_bwd draw for ``seed`` (for tests)."""
    keep = torch.empty((B, H, L, S), dtype=torch.bool, device=device)
    if keep.numel() > 0:
        seed = torch.tensor(seed, dtype=torch.int64, device=device)
        block_m, block_n = _DROPOUT_BLOCK
        _dropout_keep_kernel[(cdiv(B * H * L, block_m), cdiv(S, block_n))](
            keep, B * H * L, S, seed, dropout_threshold(dropout_p), BLOCK_M=block_m, BLOCK_N=block_n)
    return keep
