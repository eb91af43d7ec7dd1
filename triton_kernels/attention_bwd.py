"""Attention backward, FlashAttention-2 style: gradients of O = dropout(softmax(scale * Q K^T + mask)) V.

Layout, masking, dropout draw and precision as in attention_fwd.py, whose docstring has the forward.

Math. P_ij = exp(scale q_i . k_j + mask_ij - lse_i) is recomputed from the forward's lse (P = 0 on fully
masked rows, whose lse is +inf). With dP = dO V^T the gradient w.r.t. P and z_i = scale q_i . K^T + mask_i
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
never stored. Padding query rows load lse = +inf, so P = 0 on them.
"""

import torch
import triton
import triton.language as tl

from .attention_fwd import (LOG2E, attention_autotune, dropout_keep, key_blocks, launch_args, masked_logits,
                            query_block)

# See attention_fwd.py's launch configurations; lists checked the same way (spills noted).
# The dK/dV kernel holds BLOCK_N keys and two accumulators, and streams BLOCK_M queries.
BWD_KV_SPACE = {
    (64, False): [(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 4), (16, 128, 8, 4)],
    (128, False): [(32, 64, 8, 3), (16, 128, 8, 3), (32, 128, 8, 3), (16, 64, 4, 3)],
    (256, False): [(32, 64, 8, 2), (128, 16, 8, 2), (16, 32, 4, 2)],  # the first spills 40 B
    (64, True): [(32, 64, 8, 2), (16, 128, 8, 2), (32, 128, 8, 2), (32, 16, 4, 3)],
    (128, True): [(16, 16, 4, 2), (32, 16, 4, 2)],  # spill 40 / 64 B
    (256, True): [(16, 16, 4, 2)],  # spills 952 B
}
# The dQ kernel holds BLOCK_M queries and streams BLOCK_N keys.
BWD_Q_SPACE = {
    (64, False): [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    (128, False): [(64, 32, 4, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2)],
    (256, False): [(64, 32, 8, 2), (128, 16, 8, 2), (32, 32, 4, 2)],
    (64, True): [(64, 32, 4, 2), (128, 32, 8, 2), (64, 16, 4, 3), (128, 16, 8, 2)],
    (128, True): [(16, 32, 4, 2), (32, 64, 8, 2), (128, 16, 8, 2)],  # the last two spill 96 / 176 B
    (256, True): [(16, 16, 4, 2), (16, 32, 4, 2)],  # spill 684 / 1040 B
}
# Elements of o (and of dO) per program of the memory-bound rowsum(dO * O) kernel: whole rows up to
# Ev = 256, 32 per thread at its 4 warps. ptxas (sm_90a) then uses <= 108 registers, so that several
# programs share an SM and keep loads in flight; at 8192 elements it uses up to 250.
_DELTA_ELEMENTS = 4096


@triton.jit
def _attn_bwd_delta_kernel(
    O,  # (B, H, L, Ev) forward output, last dim contiguous
    DO,  # (B, H, L, Ev) output gradient, last dim contiguous
    Delta,  # (B, H, L) fp32 rowsum(dO * O), contiguous
    stride_ob, stride_oh, stride_ol,
    stride_dob, stride_doh, stride_dol,
    H, L,
    EV: tl.constexpr, BLOCK_EV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b64, h64, m64 = (bh // H).to(tl.int64), (bh % H).to(tl.int64), start_m.to(tl.int64)
    O += b64 * stride_ob + h64 * stride_oh + m64 * stride_ol
    DO += b64 * stride_dob + h64 * stride_doh + m64 * stride_dol
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    cols = tl.arange(0, BLOCK_EV)
    mask = (offs_m[:, None] < L) & (cols[None, :] < EV)
    o = tl.load(O + rows[:, None] * stride_ol + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * stride_dol + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh.to(tl.int64) * L + offs_m, tl.sum(o * do, axis=1), mask=offs_m < L)


@triton.jit
def _first_query_block(start_n, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    # Causal: no query before start_n sees the keys from start_n on.
    if IS_CAUSAL:
        return start_n // BLOCK_M * BLOCK_M
    return 0


@triton.jit
def _bwd_kv_blocks(
    dk, dv, k, v, Q, DO, LSE, Delta, Mask, lo, offs_n, q_offs, do_offs, mask_offs, rng_base, rng_offs,
    stride_ql, stride_dol, stride_ml, L, S, scale_log2, dropout_p, inv_keep, seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Add the unscaled dK = dS^T Q and dV = P^T dO of one query head's blocks from row lo on.

    Causal applies its check on every block: split off an unchecked loop as the forward does, and the
    pipeliner keeps both loops' prefetched tiles live across them, spilling registers (Triton 3.6,
    sm_90a: e.g. 104 B at E = 128, BLOCK_M = 32, BLOCK_N = 64, 8 warps; none with the one loop).
    """
    rows = tl.arange(0, BLOCK_M)
    e_ok = tl.arange(0, BLOCK_E) < E
    ev_ok = tl.arange(0, BLOCK_EV) < EV
    for start_m in range(lo, L, BLOCK_M):
        offs_m = start_m + rows
        m_ok = offs_m < L
        m = tl.cast(start_m, tl.int64)  # not .to(): the interpreter's loop variables are Python ints
        q = tl.load(Q + m * stride_ql + q_offs, mask=m_ok[:, None] & e_ok[None, :], other=0.0)
        # Padding rows get lse = +inf, hence P = 0: no other row check is needed.
        lse2 = tl.load(LSE + offs_m, mask=m_ok, other=float("inf")) * LOG2E
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        # Padding keys need no check (non-causal skips it): they reach only their own dK / dV rows.
        s_t = masked_logits(qk_t, offs_m[None, :], offs_n[:, None], L, S, Mask, m * stride_ml, mask_offs,
                            scale_log2, MASK_KIND, IS_CAUSAL, CHECK=IS_CAUSAL)
        p_t = tl.exp2(s_t - lse2[None, :])
        do = tl.load(DO + m * stride_dol + do_offs, mask=m_ok[:, None] & ev_ok[None, :], other=0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, rng_base + m * S, rng_offs, dropout_p)
            # dV's 1 / (1 - p) is applied once, at the store.
            dv = tl.dot(tl.where(keep, p_t, 0.0).to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        delta = tl.load(Delta + offs_m, mask=m_ok, other=0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_kv_kernel(
    Q,  # (B, H, L, E) queries, last dim contiguous
    K,  # (B, Hkv, S, E) keys, last dim contiguous
    V,  # (B, Hkv, S, Ev) values, last dim contiguous
    Mask,  # (B, H, L, S) bool or float mask with any strides (0 for broadcast dims), or None
    DO,  # (B, H, L, Ev) output gradient, last dim contiguous
    LSE,  # (B, H, L) fp32 forward log-sum-exp, contiguous
    Delta,  # (B, H, L) fp32 rowsum(dO * O), contiguous
    DK,  # (B, Hkv, S, E) key gradient, contiguous, dtype of K
    DV,  # (B, Hkv, S, Ev) value gradient, contiguous, dtype of V
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_ml, stride_ms,
    stride_dob, stride_doh, stride_dol,
    H, group, L, S,  # group = H // Hkv
    scale,
    scale_log2,  # scale * log2(e)
    dropout_p,
    seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr,  # "none", "bool" or "float"
    IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    h_kv = H // group
    b = bkv // h_kv
    kv = bkv % h_kv
    # int64 (batch, head, block start) offsets, as in the forward.
    b64, kv64, n64 = b.to(tl.int64), kv.to(tl.int64), start_n.to(tl.int64)
    K += b64 * stride_kb + kv64 * stride_kh + n64 * stride_kn
    V += b64 * stride_vb + kv64 * stride_vh + n64 * stride_vn
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    rows = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    n_ok = offs_n[:, None] < S
    k = tl.load(K + cols[:, None] * stride_kn + offs_e[None, :], mask=n_ok & (offs_e[None, :] < E),
                other=0.0)
    v = tl.load(V + cols[:, None] * stride_vn + offs_ev[None, :], mask=n_ok & (offs_ev[None, :] < EV),
                other=0.0)
    q_offs = rows[:, None] * stride_ql + offs_e[None, :]
    do_offs = rows[:, None] * stride_dol + offs_ev[None, :]
    mask_offs = rows[None, :] * stride_ml + cols[:, None] * stride_ms
    rng_offs = rows[None, :] * S + cols[:, None]
    inv_keep = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_EV), dtype=tl.float32)
    lo = _first_query_block(start_n, IS_CAUSAL, BLOCK_M)
    # The query heads of this kv head's group, one after another: dK and dV are summed in registers
    # and written once.
    for h in range(kv * group, (kv + 1) * group):
        h64 = tl.cast(h, tl.int64)
        bh64 = b64 * H + h64
        Q_h = Q + b64 * stride_qb + h64 * stride_qh
        DO_h = DO + b64 * stride_dob + h64 * stride_doh
        Mask_h = Mask
        if MASK_KIND != "none":
            Mask_h += b64 * stride_mb + h64 * stride_mh + n64 * stride_ms
        rng_base = bh64 * L * S + start_n
        dk, dv = _bwd_kv_blocks(
            dk, dv, k, v, Q_h, DO_h, LSE + bh64 * L, Delta + bh64 * L, Mask_h, lo, offs_n,
            q_offs, do_offs, mask_offs, rng_base, rng_offs, stride_ql, stride_dol, stride_ml, L, S,
            scale_log2, dropout_p, inv_keep, seed, E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, IS_CAUSAL,
            HAS_DROPOUT, PRECISION, BLOCK_M,
        )

    if HAS_DROPOUT:
        dv *= inv_keep
    DK += (bkv.to(tl.int64) * S + start_n) * E
    DV += (bkv.to(tl.int64) * S + start_n) * EV
    tl.store(DK + cols[:, None] * E + offs_e[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=n_ok & (offs_e[None, :] < E))
    tl.store(DV + cols[:, None] * EV + offs_ev[None, :], dv.to(DV.dtype.element_ty),
             mask=n_ok & (offs_ev[None, :] < EV))


@triton.jit
def _bwd_q_blocks(
    dq, q, do, lse2, delta, K, V, Mask, lo, hi, rows, offs_m, k_offs, v_offs, rng_base,
    stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, inv_keep, seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, CHECK: tl.constexpr,
):
    """Add the unscaled dQ = dS K of the key blocks starting in [lo, hi). As in the forward's loop, the
    mask and Philox offsets are formed from the key indices in the loop, not held across it."""
    offs_n = tl.arange(0, BLOCK_N)
    e_ok = tl.arange(0, BLOCK_E) < E
    ev_ok = tl.arange(0, BLOCK_EV) < EV
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        n = tl.cast(start_n, tl.int64)  # not .to(): the interpreter's loop variables are Python ints
        if CHECK:
            k_mask = (cols[:, None] < S) & e_ok[None, :]
            v_mask = (cols[:, None] < S) & ev_ok[None, :]
        else:
            k_mask = e_ok[None, :]
            v_mask = ev_ok[None, :]
        k = tl.load(K + n * stride_kn + k_offs, mask=k_mask, other=0.0)
        v = tl.load(V + n * stride_vn + v_offs, mask=v_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        mask_offs = rows[:, None] * stride_ml + cols[None, :] * stride_ms
        s = masked_logits(qk, offs_m[:, None], cols[None, :], L, S, Mask, 0, mask_offs, scale_log2,
                          MASK_KIND, IS_CAUSAL, CHECK)
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, rng_base, rows[:, None] * S + cols[None, :], dropout_p)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_q_kernel(
    Q,  # (B, H, L, E) queries, last dim contiguous
    K,  # (B, Hkv, S, E) keys, last dim contiguous
    V,  # (B, Hkv, S, Ev) values, last dim contiguous
    Mask,  # (B, H, L, S) bool or float mask with any strides (0 for broadcast dims), or None
    DO,  # (B, H, L, Ev) output gradient, last dim contiguous
    LSE,  # (B, H, L) fp32 forward log-sum-exp, contiguous
    Delta,  # (B, H, L) fp32 rowsum(dO * O), contiguous
    DQ,  # (B, H, L, E) query gradient, contiguous, dtype of Q
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_ml, stride_ms,
    stride_dob, stride_doh, stride_dol,
    H, group, L, S,  # group = H // Hkv
    scale,
    scale_log2,  # scale * log2(e)
    dropout_p,
    seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr,  # "none", "bool" or "float"
    IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, bh, K, V, mask_off, rows, offs_m, q, k_offs, v_offs, rng_base = query_block(
        Q, K, V, stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_mb, stride_mh, stride_ml, H, group, L, S, E, EV, BLOCK_E, BLOCK_EV, BLOCK_M, BLOCK_N,
    )
    if MASK_KIND != "none":
        Mask += mask_off
    DO += (bh // H).to(tl.int64) * stride_dob + (bh % H).to(tl.int64) * stride_doh + start_m.to(tl.int64) * stride_dol
    m_ok = offs_m < L
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    do = tl.load(DO + rows[:, None] * stride_dol + offs_ev[None, :],
                 mask=m_ok[:, None] & (offs_ev[None, :] < EV), other=0.0)
    # Padding rows get lse = +inf, hence P = 0.
    lse2 = tl.load(LSE + bh.to(tl.int64) * L + offs_m, mask=m_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + bh.to(tl.int64) * L + offs_m, mask=m_ok, other=0.0)
    inv_keep = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    full_end, end = key_blocks(start_m, S, IS_CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_q_blocks(
        dq, q, do, lse2, delta, K, V, Mask, 0, full_end, rows, offs_m, k_offs, v_offs, rng_base,
        stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, inv_keep, seed,
        E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, PRECISION, BLOCK_N, CHECK=False,
    )
    dq = _bwd_q_blocks(
        dq, q, do, lse2, delta, K, V, Mask, full_end, end, rows, offs_m, k_offs, v_offs, rng_base,
        stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, inv_keep, seed,
        E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, PRECISION, BLOCK_N, CHECK=True,
    )
    DQ += (bh.to(tl.int64) * L + start_m) * E
    tl.store(DQ + rows[:, None] * E + offs_e[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & (offs_e[None, :] < E))


_attn_bwd_kv = attention_autotune(BWD_KV_SPACE)(_attn_bwd_kv_kernel)
_attn_bwd_q = attention_autotune(BWD_Q_SPACE)(_attn_bwd_q_kernel)


def attention_bwd(do, q, k, v, o, lse, mask, scale: float, is_causal: bool, dropout_p: float, seed: int):
    """Gradients (dq, dk, dv) of attention_fwd, contiguous in the inputs' dtype.

    ``do`` and ``o`` (B, H, L, Ev) may have any strides with a contiguous last dim; ``lse`` is the
    forward's. The same ``dropout_p`` and ``seed`` regenerate the forward's dropout mask.
    """
    mask, strides, sizes, consts = launch_args(q, k, v, mask, is_causal, dropout_p)
    B, H, L, _ = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    assert do.shape == o.shape == (B, H, L, Ev), "do and o must be (B, H, L, Ev)"
    assert do.stride(-1) == o.stride(-1) == 1, "do and o need a contiguous last dim"
    assert lse.shape == (B, H, L) and lse.dtype == torch.float32 and lse.is_contiguous(), "lse: fp32 (B,H,L)"
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if B * H == 0:
        return dq, dk.zero_(), dv.zero_()
    delta = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    block_m = min(_DELTA_ELEMENTS // consts["BLOCK_EV"], triton.next_power_of_2(L))
    _attn_bwd_delta_kernel[(triton.cdiv(L, block_m), B * H)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], H, L,
        EV=Ev, BLOCK_EV=consts["BLOCK_EV"], BLOCK_M=block_m, num_warps=4,
    )
    args = (q, k, v, mask, do, lse, delta)
    scalars = (*strides, *do.stride()[:3], *sizes, scale, scale * LOG2E.value, dropout_p, seed)
    grid_kv = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * Hkv)  # noqa: E731
    _attn_bwd_kv[grid_kv](*args, dk, dv, *scalars, **consts)
    grid_q = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_q[grid_q](*args, dq, *scalars, **consts)
    return dq, dk, dv
