"""Attention backward, FlashAttention-2 style: gradients of O = dropout(softmax(scale * Q K^T + mask)) V.

Layout, masking, dropout draw and precision as in attention_fwd.py, whose docstring has the forward; the
kernel arguments, grid and autotuning are attention_common.py's.

Math. P_ij = exp(scale q_i . k_j + mask_ij - lse_i) is recomputed from the forward's lse (P = 0 on fully
masked rows, whose lse is +inf), in base 2 with the scale folded in as in the forward: one FMA a score,
2^(x_ij c - lse_i log2 e) (attention_common.masked_scores; the held operand, k in the dK/dV kernel, is
signed as the forward's q). With dP = dO V^T the gradient w.r.t. P and z_i = scale q_i . K^T + mask_i
the natural-log logits of row i, the softmax Jacobian d P_ij / d z_ik = P_ij (delta_jk - P_ik) gives the
gradient w.r.t. z:
    dS_ik = sum_j dP_ij P_ij (delta_jk - P_ik) = P_ik (dP_ik - D_i),
    D_i = sum_j P_ij dP_ij = sum_j P_ij sum_e dO_ie V_je = sum_e dO_ie O_ie,
so D is one rowsum(dO * O) per row (a preprocessing kernel), and
    dV = P^T dO,   dQ = scale dS K,   dK = scale dS^T Q.
With dropout (keep mask Z, O = ((P * Z) V) / (1 - p)): dV = (P * Z)^T dO / (1 - p), the gradient w.r.t. P
is (dO V^T) * Z / (1 - p), and D = rowsum(dO * O) still holds (the derivation with P * Z / (1 - p) for P).

Kernels. One owns BLOCK_N keys and loops over the query blocks of every query head of its kv group,
accumulating dK and dV in registers (in transposed tiles, keys along axis 0, so that the products add
into them as they are); another owns BLOCK_M queries and loops over key blocks for dQ. Each gradient row
is written once by one program: no atomics, and the same input gives the same bits. Causal skips the
blocks past the diagonal. dQ applies element-wise checks, causal and key bound, on the diagonal and last
key blocks only, as the forward: a padding key, loaded as 0, scores 0, and 2^(0 - lse) overflows for a
row whose real scores sit far below 0 (a mask of -1e30). dK/dV apply the causal check on every block
they visit (see _bwd_kv_blocks) and need no key bound: their padding rows reach only themselves and are
never stored. Padding query rows load lse = +inf, so P = 0 on them. A row-broadcast (key-padding) mask
is the same vector of keys for every query block a dK/dV program visits: its address does not depend on
the block (MASK_ROWS_BROADCAST), so Triton loads it once per query head, before the loop (sm_90a TTGIR,
Triton 3.8), where a tile is loaded in every step.

Both kernels recompute Q K^T and dO V^T: 7 matrix products where the math needs 5, the price of a dQ
written once. deterministic=False (fasttx.scaled_dot_product_attention; ignored while
torch.are_deterministic_algorithms_enabled()) runs the dK/dV kernel alone with ATOMIC_DQ: each of its
query blocks also computes dS K, the block's share of dQ for its BLOCK_N keys, and adds it with fp32
atomic adds into a zeroed (B, H, L, E) buffer, which one torch op then scales and casts (5 products;
the dQ kernel is not launched). The fp32 sums then run in whatever order the programs reach them, so
dQ may differ in its last bits from run to run (dK and dV do not). It costs an fp32 buffer of B H L E
elements and one atomic add per dQ element and key block. This kernel checks the key bound on every
block: dQ sums over keys, and a padding key's P = 2^(0 - lse) can overflow (see above).
"""

import torch
import triton
import triton.language as tl

from .attention_common import (LOG2E, attention_autotune, dropout_keep, head_rows, held_copies, held_signed,
                               kernel_args, key_blocks, kv_heads, launch_grid, load_rows, load_seed, load_v,
                               mask_offsets, masked_scores, program_block, query_block, score_block, store_rows,
                               tile_offsets_fit)
from .utils import next_power_of_2

# See attention_fwd.py's launch configurations; lists chosen the same way.
# The dK/dV kernel holds BLOCK_N keys and two accumulators, and streams BLOCK_M queries.
BWD_KV_SPACE = {
    (64, False): [(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 4), (16, 128, 8, 4)],
    (128, False): [(32, 64, 8, 3), (16, 128, 8, 3), (32, 128, 8, 3), (16, 64, 4, 3)],
    # (128, 16, 8, 2) left out: its model says 280 KB at E = 256, so the pruning would never keep it
    # (it did run on an H200: the model over-counts it there).
    (256, False): [(32, 64, 8, 2), (16, 32, 4, 2)],
    (64, True): [(32, 64, 8, 2), (16, 128, 8, 2), (32, 128, 8, 2), (32, 16, 4, 3)],
    (128, True): [(16, 16, 4, 2), (32, 16, 4, 2)],
    (256, True): [(16, 16, 4, 2)],
}
# The dQ kernel holds BLOCK_M queries and streams BLOCK_N keys.
BWD_Q_SPACE = {
    (64, False): [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    (128, False): [(64, 32, 4, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2)],
    (256, False): [(64, 32, 8, 2), (128, 16, 8, 2), (32, 32, 4, 2)],
    (64, True): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 16, 4, 3), (128, 16, 8, 2)],
    # (128, 16, 8, 2) left out: 294912 B at E = 128 (H200, Triton 3.6: OutOfResources; its model's figure).
    (128, True): [(16, 32, 4, 2), (32, 64, 8, 2)],
    (256, True): [(16, 16, 4, 2), (16, 32, 4, 2)],
}


def bwd_kv_shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes):
    """Bytes of shared memory of the dK/dV kernel, modelled as fwd_shared_memory's: the k and v tiles it
    holds, num_stages copies of the q and dO tiles it streams and of their fp32 lse, delta."""
    dots = (held_copies(dtype_bytes) * block_n + num_stages * block_m) * (block_e + block_ev)
    return dots * dtype_bytes + num_stages * block_m * 8


def bwd_q_shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes):
    """Bytes of shared memory of the dQ kernel, modelled as fwd_shared_memory's: the q and dO tiles it
    holds, num_stages copies of the k and v tiles it streams."""
    dots = (held_copies(dtype_bytes) * block_m + num_stages * block_n) * (block_e + block_ev)
    return dots * dtype_bytes


# The dK/dV kernel with ATOMIC_DQ (deterministic=False) adds the dQ product dS K and its fp32
# BLOCK_M x E tile, added to memory with atomics. Chosen as the others (no spills without mask or
# dropout; sm_90a, Triton 3.8). Unlike dK/dV's, BLOCK_M is 64 where it can be: the dQ product's M is
# BLOCK_M, and below 64 rows Triton gives it mma.sync m16n8k16 instead of wgmma (bf16, E = 128:
# (32, 64, 8, 3) and (32, 128, 8, 3) do, 190 / 234 registers; (64, 64, 8, 2) is all wgmma at 250.
# With an fp32 mask (64, 64, 8, 2) spills 20 B, (32, 64, 8, 3) nothing; with a bool mask, causal and
# dropout 20 B and 40 B).
# Left out for spills: E = 64 (128, 128, 8, 2) 92 B; E = 128 (64, 64, 4, 2) 204 B, (128, 64, 8, 2) 232 B;
# E = 256 (32, 64, 8, 2) 88 B, (64, 32, 8, 2) 4 B: nothing there uses wgmma without spilling. fp32
# (tf32x3): the dK/dV lists' spill-free configs; at E = 256 the least spilling, (16, 16, 8, 2) 320 B
# ((16, 16, 4, 2) 896 B, (16, 32, 8, 2) 3568 B).
BWD_ATOMIC_SPACE = {
    (64, False): [(64, 128, 8, 2), (64, 64, 4, 3), (64, 128, 8, 3)],
    (128, False): [(64, 64, 8, 2), (64, 64, 8, 3), (32, 64, 8, 3), (32, 128, 8, 3)],
    (256, False): [(32, 32, 4, 2), (16, 32, 4, 2)],
    (64, True): [(32, 64, 8, 2), (32, 16, 4, 3)],
    (128, True): [(16, 16, 4, 2), (32, 16, 4, 2)],
    (256, True): [(16, 16, 8, 2)],
}


def bwd_atomic_shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes):
    """Bytes of shared memory of the dK/dV kernel with ATOMIC_DQ: bwd_kv_shared_memory's, plus the
    larger of the fp32 dQ tile (the atomic adds' layout conversion) and another copy of k (dS K's
    operand) with two of the dS tile. An upper bound fitted to Triton 3.8's allocations for sm_90a
    (exact at (32, 64, 8, 3) and (64, 64, 8, 2), E = 128, bf16; above at the others compiled)."""
    kv = bwd_kv_shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes)
    operands = (held_copies(dtype_bytes) * block_n * block_e + 2 * block_m * block_n) * dtype_bytes
    return kv + max(block_m * block_e * 4, operands)


# Elements of o (and of dO) per program of the memory-bound rowsum(dO * O) kernel: whole rows up to
# Ev = 256, 32 per thread at its 4 warps: few enough registers that several programs share an SM and
# keep loads in flight (8192 elements take about twice as many, one program per SM).
_DELTA_ELEMENTS = 4096


@triton.jit
def _attn_bwd_delta_kernel(
    O,  # (B, H, L, Ev) forward output, last dim contiguous
    DO,  # (B, H, L, Ev) output gradient, last dim contiguous
    Delta,  # (B, H, L) fp32 rowsum(dO * O), contiguous
    o_strides, do_strides,  # (b, h, l) of O and DO
    H, L,
    EV: tl.constexpr, BLOCK_EV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    start_m, bh = program_block(L, BLOCK_M)
    b64, h64, m64 = (bh // H).to(tl.int64), (bh % H).to(tl.int64), start_m.to(tl.int64)
    O += b64 * o_strides[0] + h64 * o_strides[1] + m64 * o_strides[2]
    DO += b64 * do_strides[0] + h64 * do_strides[1] + m64 * do_strides[2]
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    cols = tl.arange(0, BLOCK_EV)
    mask = (offs_m[:, None] < L) & (cols[None, :] < EV)
    o = tl.load(O + rows[:, None] * o_strides[2] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * do_strides[2] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh.to(tl.int64) * L + offs_m, tl.sum(o * do, axis=1), mask=offs_m < L)


@triton.jit
def _first_query_block(start_n, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    # Causal: no query before start_n sees the keys from start_n on.
    if IS_CAUSAL:
        return start_n // BLOCK_M * BLOCK_M
    return 0


@triton.jit
def _bwd_kv_blocks(
    dk, dv, k, v, q_head, do_head, DQ, LSE, Delta, Mask, lo, start_n, offs_n, q_offs, do_offs, mask_offs, rng_row,
    stride_ql, stride_dol, stride_ml, L, S, scale_log2, keep_threshold, inv_keep, seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Add the unscaled dK = dS^T Q and dV = P^T dO of one query head's blocks from row lo on (q_head and
    do_head: that head of Q and dO, head_rows); with ATOMIC_DQ, also dS K into the head's fp32 (L, E) rows
    at DQ, by atomic adds.

    Causal applies its check on every block: split off into a loop of its own, the unchecked blocks
    made the pipeliner keep both loops' prefetched tiles live across them, spilling registers (Triton
    3.6, sm_90a: e.g. 104 B at E = 128, BLOCK_M = 32, BLOCK_N = 64, 8 warps; none with the one loop).
    """
    rows = tl.arange(0, BLOCK_M)
    e_ok = tl.arange(0, BLOCK_E) < E
    dq_offs = rows[:, None] * E + tl.arange(0, BLOCK_E)[None, :]
    for start_m in range(lo, L, BLOCK_M):
        offs_m = start_m + rows
        m_ok = offs_m < L
        m = tl.cast(start_m, tl.int64)  # not .to(): the interpreter's loop variables are Python ints
        q = load_rows(q_head, start_m, L, stride_ql, q_offs, E, TMA, BLOCK_M, BLOCK_E)
        # Padding rows get lse = +inf, hence P = 0: no other row check is needed.
        lse2 = tl.load(LSE + offs_m, mask=m_ok, other=float("inf")) * LOG2E
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        # Padding keys need no check for dK / dV (non-causal skips it): they reach only their own rows.
        # dQ sums over the keys: a padding key, loaded as 0, scores 0, and 2^(0 - lse) overflows for a
        # row whose real scores sit far below 0 (a mask of -1e30), so inf * 0 = NaN would reach it.
        if MASK_ROWS_BROADCAST:  # every query block reads the keys' one vector
            mask_row = 0
        else:
            mask_row = m * stride_ml
        x_t, x_scale = masked_scores(qk_t, offs_m[None, :], offs_n[:, None], L, S, Mask, mask_row, mask_offs,
                                     scale_log2, MASK_KIND, MASK_ROWS_BROADCAST, IS_CAUSAL,
                                     CHECK=IS_CAUSAL or ATOMIC_DQ)
        p_t = tl.exp2(tl.fma(x_t, x_scale, -lse2[None, :]))
        do = load_rows(do_head, start_m, L, stride_dol, do_offs, EV, TMA, BLOCK_M, BLOCK_EV)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = tl.trans(dropout_keep(seed, rng_row + m, rows, start_n, S, keep_threshold, BLOCK_N))
            # dV's 1 / (1 - p) is applied once, at the store.
            dv = tl.dot(tl.where(keep, p_t, 0.0).to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        delta = tl.load(Delta + offs_m, mask=m_ok, other=0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=PRECISION)
            # relaxed: the adds need no ordering among themselves, only the kernel's end.
            tl.atomic_add(DQ + m * E + dq_offs, dq, mask=m_ok[:, None] & e_ok[None, :], sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["keep_threshold"])  # see kernel_args
def _attn_bwd_kv_kernel(
    Q, K, V, Mask, Seed, strides, sizes, scale_log2, dropout_p, keep_threshold,  # attention_common.py
    seq_buckets, dtype_bytes,
    DO, LSE, Delta, do_strides, scale,  # see attention_bwd
    DK,  # (B, Hkv, S, E) key gradient, contiguous, dtype of K (or its descriptor, as DV, DO, DQ)
    DV,  # (B, Hkv, S, Ev) value gradient, contiguous, dtype of V
    # ATOMIC_DQ: (B, H, L, E) fp32, contiguous, zeroed: gets sign(scale) dS K (k is held signed), which
    # |scale| turns into dQ. None otherwise.
    DQ,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, SCALE_SIGN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    H, group, L, S = sizes
    stride_ql, stride_kn, stride_vn = strides[0][2], strides[1][2], strides[2][2]
    stride_ml, stride_ms = strides[3][2], strides[3][3]
    start_n, bkv = program_block(S, BLOCK_N)
    h_kv = H // group
    b = bkv // h_kv
    kv = bkv % h_kv
    # int64 (batch, head, block start) offsets, as in the forward.
    b64, n64 = b.to(tl.int64), start_n.to(tl.int64)
    k_head, v_head = kv_heads(K, V, strides, b, kv, TMA)
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    rows = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    k = load_rows(k_head, start_n, S, stride_kn, cols[:, None] * stride_kn + offs_e[None, :], E, TMA, BLOCK_N,
                  BLOCK_E)
    k = held_signed(k, SCALE_SIGN)  # k is held here, q streamed: see masked_scores
    v = load_rows(v_head, start_n, S, stride_vn, cols[:, None] * stride_vn + offs_ev[None, :], EV, TMA, BLOCK_N,
                  BLOCK_EV)
    q_offs = rows[:, None] * stride_ql + offs_e[None, :]
    do_offs = rows[:, None] * do_strides[2] + offs_ev[None, :]
    mask_offs = mask_offsets(rows[None, :], cols[:, None], stride_ml, stride_ms, MASK_ROWS_BROADCAST)
    inv_keep = 1.0 / (1.0 - dropout_p)
    seed = load_seed(Seed, HAS_DROPOUT)

    dk = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_EV), dtype=tl.float32)
    lo = _first_query_block(start_n, IS_CAUSAL, BLOCK_M)
    # The query heads of this kv head's group, one after another: dK and dV are summed in registers
    # and written once.
    for h in range(kv * group, (kv + 1) * group):
        h64 = tl.cast(h, tl.int64)
        bh64 = b64 * H + h64
        q_head = head_rows(Q, b64 * strides[0][0] + h64 * strides[0][1], b, h, TMA)
        do_head = head_rows(DO, b64 * do_strides[0] + h64 * do_strides[1], b, h, TMA)
        Mask_h = Mask
        if MASK_KIND != "none":
            Mask_h += b64 * strides[3][0] + h64 * strides[3][1] + n64 * stride_ms
        DQ_h = DQ
        if ATOMIC_DQ:
            DQ_h += bh64 * L * E
        dk, dv = _bwd_kv_blocks(
            dk, dv, k, v, q_head, do_head, DQ_h, LSE + bh64 * L, Delta + bh64 * L, Mask_h, lo, start_n, offs_n,
            q_offs, do_offs, mask_offs, bh64 * L, stride_ql, do_strides[2], stride_ml, L, S,
            scale_log2, keep_threshold, inv_keep, seed, E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, MASK_ROWS_BROADCAST,
            IS_CAUSAL, HAS_DROPOUT, ATOMIC_DQ, PRECISION, TMA, BLOCK_M, BLOCK_N,
        )

    if HAS_DROPOUT:
        dv *= inv_keep
    store_rows(head_rows(DK, bkv.to(tl.int64) * S * E, b, kv, TMA), start_n, S, E, cols[:, None] * E + offs_e[None, :],
               dk * scale, E, TMA, BLOCK_N, BLOCK_E)
    store_rows(head_rows(DV, bkv.to(tl.int64) * S * EV, b, kv, TMA), start_n, S, EV,
               cols[:, None] * EV + offs_ev[None, :], dv, EV, TMA, BLOCK_N, BLOCK_EV)


@triton.jit
def _bwd_q_blocks(
    dq, do, lse2, delta, tile, Mask, full_end, end, rows, offs_m, strides, sizes, scale_log2, keep_threshold, inv_keep,
    seed, E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Add the unscaled dQ = dS K of the key blocks starting before ``end``; those from ``full_end`` on
    are checked (one loop: see score_block)."""
    rng_row, S = tile[5], sizes[3]
    for start_n in range(0, end, BLOCK_N):
        x, x_scale, k = score_block(tile, Mask, start_n, full_end, rows, offs_m, strides, sizes, scale_log2, E, EV,
                                    BLOCK_E, BLOCK_EV, MASK_KIND, MASK_ROWS_BROADCAST, IS_CAUSAL, PRECISION, TMA,
                                    BLOCK_N)
        v = load_v(tile, start_n, strides, sizes, EV, TMA, BLOCK_N, BLOCK_EV)
        p = tl.exp2(tl.fma(x, x_scale, -lse2[:, None]))
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, rng_row, rows, start_n, S, keep_threshold, BLOCK_N)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit(do_not_specialize=["keep_threshold"])  # see kernel_args
def _attn_bwd_q_kernel(
    Q, K, V, Mask, Seed, strides, sizes, scale_log2, dropout_p, keep_threshold,  # attention_common.py
    seq_buckets, dtype_bytes,
    DO, LSE, Delta, do_strides, scale,  # see attention_bwd
    DQ,  # (B, H, L, E) query gradient, contiguous, dtype of Q (or its descriptor, as DO)
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, SCALE_SIGN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, head, rows, offs_m, seed, tile = query_block(Q, K, V, Seed, strides, sizes, E, BLOCK_E, BLOCK_EV,
                                                          SCALE_SIGN, HAS_DROPOUT, TMA, BLOCK_M, BLOCK_N)
    b, h, bh = head  # not unpacked in the line above: Triton 3.6's cache key cannot hash nested targets
    L, S = sizes[2], sizes[3]
    m_ok = offs_m < L
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    do = load_rows(head_rows(DO, b.to(tl.int64) * do_strides[0] + h.to(tl.int64) * do_strides[1], b, h, TMA),
                   start_m, L, do_strides[2], rows[:, None] * do_strides[2] + offs_ev[None, :], EV, TMA, BLOCK_M,
                   BLOCK_EV)
    # Padding rows get lse = +inf, hence P = 0.
    lse2 = tl.load(LSE + bh.to(tl.int64) * L + offs_m, mask=m_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + bh.to(tl.int64) * L + offs_m, mask=m_ok, other=0.0)
    inv_keep = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    full_end, end = key_blocks(start_m, S, IS_CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_q_blocks(dq, do, lse2, delta, tile, Mask, full_end, end, rows, offs_m, strides, sizes, scale_log2,
                       keep_threshold, inv_keep, seed, E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, MASK_ROWS_BROADCAST,
                       IS_CAUSAL, HAS_DROPOUT, PRECISION, TMA, BLOCK_N)
    store_rows(head_rows(DQ, bh.to(tl.int64) * L * E, b, h, TMA), start_m, L, E, rows[:, None] * E + offs_e[None, :],
               dq * scale, E, TMA, BLOCK_M, BLOCK_E)


# attention_autotune's arguments (no config is known to compute wrong results: see FWD_WRONG).
BWD_KV_TUNING = (BWD_KV_SPACE, bwd_kv_shared_memory, None)
BWD_Q_TUNING = (BWD_Q_SPACE, bwd_q_shared_memory, None)
BWD_ATOMIC_TUNING = (BWD_ATOMIC_SPACE, bwd_atomic_shared_memory, None)
_attn_bwd_kv = attention_autotune(*BWD_KV_TUNING)(_attn_bwd_kv_kernel)
_attn_bwd_q = attention_autotune(*BWD_Q_TUNING)(_attn_bwd_q_kernel)
# The same kernel with ATOMIC_DQ: its own configs, tuned apart.
_attn_bwd_atomic = attention_autotune(*BWD_ATOMIC_TUNING)(_attn_bwd_kv_kernel)


def attention_bwd(do, q, k, v, o, lse, mask, scale: float, is_causal: bool, dropout_p: float, seed,
                  deterministic: bool = True):
    """Gradients (dq, dk, dv) of attention_fwd, contiguous in the inputs' dtype.

    ``do`` and ``o`` (B, H, L, Ev) may have any strides with a contiguous last dim; ``lse`` is the
    forward's. The same ``dropout_p`` and ``seed`` regenerate the forward's dropout mask.
    ``deterministic=False`` runs the 5-product kernel with atomic dQ (see the module docstring), unless
    torch.are_deterministic_algorithms_enabled(), checked here, at the backward, as torch's own ops do.
    """
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    atomic = not deterministic and not torch.are_deterministic_algorithms_enabled()
    # The atomic kernel adds dQ into an fp32 buffer through pointers: dq is no kernel argument there.
    args = kernel_args(q, k, v, mask, seed, scale, is_causal, dropout_p, DO=do, DK=dk, DV=dv,
                       **({} if atomic else dict(DQ=dq)))
    B, H, L, _ = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    assert do.shape == o.shape == (B, H, L, Ev), "do and o must be (B, H, L, Ev)"
    assert do.stride(-1) == o.stride(-1) == 1, "do and o need a contiguous last dim"
    assert tile_offsets_fit([do.stride(2), o.stride(2)], S, 0), "do or o: row stride too large for int32 offsets"
    assert lse.shape == (B, H, L) and lse.dtype == torch.float32 and lse.is_contiguous(), "lse: fp32 (B,H,L)"
    if B * H == 0:
        return dq, dk.zero_(), dv.zero_()
    delta = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    block_m = min(_DELTA_ELEMENTS // args["BLOCK_EV"], next_power_of_2(L))
    _attn_bwd_delta_kernel[launch_grid(L, block_m, B * H)](
        o, do, delta, o.stride()[:3], do.stride()[:3], H, L,
        EV=Ev, BLOCK_EV=args["BLOCK_EV"], BLOCK_M=block_m, num_warps=4,
    )
    grads = dict(LSE=lse, Delta=delta, do_strides=do.stride()[:3], scale=scale)
    kv_grid = lambda meta: launch_grid(S, meta["BLOCK_N"], B * Hkv)  # noqa: E731
    if atomic:
        dq_sum = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        _attn_bwd_atomic[kv_grid](DQ=dq_sum, ATOMIC_DQ=True, **grads, **args)
        torch.mul(dq_sum, abs(scale), out=dq)  # |scale|: dq_sum holds sign(scale) dS K; one rounding
    else:
        _attn_bwd_kv[kv_grid](ATOMIC_DQ=False, **grads, **dict(args, DQ=None))
        _attn_bwd_q[lambda meta: launch_grid(L, meta["BLOCK_M"], B * H)](**grads, **args)
    return dq, dk, dv
