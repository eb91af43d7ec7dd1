"""Attention forward, FlashAttention-2 style: O = dropout(softmax(scale * Q K^T + mask)) V, and the pieces
the backward (attention_bwd.py) shares: masked logits, dropout draws, block ranges, launch configuration.

Layout. q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) are read through their strides (only the last
dim must be contiguous, so (B, L, H, E) activations transposed to (B, H, L, E) are read in place). With
grouped-query attention query head h reads kv head h // (H // Hkv); K and V are never repeated. The mask
is a view broadcast to (B, H, L, S) with 0 strides, so a (B, 1, 1, S) key-padding mask costs O(B * S):
bool keeps True entries, float is added to the scaled scores. Causal masking keeps key j <= query i
(top-left aligned, as torch's SDPA when L != S). Nothing of size L * S is stored: the backward recomputes
the probabilities from q, k and the saved log-sum-exp.

Forward. The kernels work in base 2, exp(t) = 2^(t log2 e), with log2 e folded into the scale and the
float mask: the logits are z_ij = (scale q_i . k_j + mask_ij) log2 e, -inf where masked out. A program
owns BLOCK_M query rows and walks the key blocks with the online softmax (Milakov & Gimelshein, 2018;
Dao, 2023), keeping per row the running max m, sum l and unnormalised output acc:
    m' = max(m, max_j z_j),  p_j = 2^(z_j - m'),  l' = l 2^(m - m') + sum_j p_j,
    acc' = acc 2^(m - m') + sum_j p_j v_j,
and at the end O = acc / l. The row's log-sum-exp (natural log) is stored for the backward:
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

Dropout (training). Keep mask Z_ij with P(Z_ij = 1) = 1 - p, and O = ((P * Z) V) / (1 - p); the lse stays
that of the undropped P. Z_ij = tl.rand(seed, ((b H + h) L + i) S + j) >= p: Philox keyed by the seed,
counted by the flat index into (B, H, L, S) (int64, as Triton's rand splits it into two 32-bit counter
words), so forward, backward and :func:`dropout_keep_mask` draw the same Z whatever their block shapes.

Blocks visited. Causal skips every key block past a query block's last query. Only the diagonal blocks
and the last, partial key block apply element-wise causal and key-bound checks; the others are loaded
and scored unmasked. The key bound matters here: a padding key, loaded as 0, would score 0 and count in l.

Precision. Scores, softmax statistics and accumulators are fp32; P is rounded to the input dtype for the
P V product (as FlashAttention). fp32 inputs follow torch's float32 matmul precision: at its default,
"highest", the products use input_precision="tf32x3" (each operand split into TF32 hi + lo parts, three
tensor-core MMAs): relative errors ~1e-6, as IEEE fp32; at "high" / "medium", plain "tf32": ~3x the MMA
throughput and ~1e-3 relative errors, as fp16. "ieee" is never used: Triton 3.6 lowers it for sm_90 to
CUDA-core FMAs (67 TFLOPS on H100 SXM against 495 dense TF32), whose layouts spill beyond 64 x 32 tiles.
"""

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(math.log2(math.e))
_LN2 = tl.constexpr(math.log(2.0))
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 256  # the largest head-dim tile the launch configurations were checked for


# ---- launch configurations ---------------------------------------------------------------------
#
# Registers bound the tiles: fp32 accumulators of BLOCK x head dim (forward: acc, BLOCK_M x Ev; dK/dV:
# two of BLOCK_N x E; dQ: BLOCK_M x E) and a BLOCK_M x BLOCK_N fp32 score tile or two share the 255
# registers of each of 32 * num_warps threads; shared memory (227 KB on H100) holds num_stages copies of
# the streamed tiles. The lists were chosen by compiling for sm_90a with Triton 3.6 (ptxas -v): every
# config listed spills no registers without mask or dropout, unless noted, for head dims up to its key
# and its dtype class (fp32 measured with tf32x3, whose hi/lo operand splits make it the worst case).
# A mask tile (bool ones most) or the Philox state adds registers, so each list also holds a config
# with few score elements per thread (BLOCK_M * BLOCK_N / (32 * num_warps) <= 16) that spills at most
# ~50 B with either. fp32 beyond head dim 64 has nothing spill-free with 64-row tiles; its lists keep
# the least-spilling ones and a 16-row one. The autotuner times each listed config once per key: head
# dims, causal, mask kind, dropout, precision and (added by the autotuner) the dtypes. The interpreter
# runs one fixed config: 16 is tl.dot's smallest size, and small blocks give short test sequences
# several blocks, exercising the loop boundaries.
# (max head dim, fp32) -> [(BLOCK_M, BLOCK_N, num_warps, num_stages)]; the first key that fits is used.
FWD_SPACE = {
    (64, False): [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4)],
    (128, False): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 8, 4)],
    (256, False): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 3)],
    (64, True): [(64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2), (128, 16, 8, 3)],
    (128, True): [(64, 16, 4, 2), (128, 32, 8, 2), (16, 32, 4, 3)],  # the first two spill ~120 B
    (256, True): [(16, 16, 4, 2), (16, 32, 4, 2)],  # spill 136 / 260 B
}


def _config(block_m, block_n, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n},
                         num_warps=num_warps, num_stages=num_stages)


def attention_autotune(space):
    """triton.autotune over the configs of ``space`` that fit the call's head dims and dtype class."""
    if _INTERPRET:
        return triton.autotune(configs=[_config(16, 16, 1, 1)], key=[])
    configs = {c: _config(*c) for shapes in space.values() for c in shapes}

    def prune(_configs, named_args, **kwargs):
        # The autotuner passes positional arguments in named_args and keyword ones (the constexprs) apart.
        head_dim = max(kwargs["BLOCK_E"], kwargs["BLOCK_EV"])
        fp32 = named_args["Q"].dtype == torch.float32
        key = next(k for k in space if k[1] == fp32 and head_dim <= k[0])
        return [configs[c] for c in space[key]]

    return triton.autotune(
        configs=list(configs.values()),
        key=["E", "EV", "IS_CAUSAL", "MASK_KIND", "HAS_DROPOUT", "PRECISION"],
        prune_configs_by={"early_config_prune": prune},
    )


# ---- pieces shared with the backward -----------------------------------------------------------


@triton.jit
def masked_logits(qk, rows, cols, L, S, Mask, mask_off, mask_offs, scale_log2,
                  MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, CHECK: tl.constexpr):
    """Base-2 logits of a score tile ``qk`` = q . k (either orientation): qk * scale * log2(e), plus the
    float mask * log2(e), -inf where masked out. ``rows``, ``cols``: global query and key indices,
    broadcastable to qk; ``Mask + mask_off + mask_offs``: the tile's mask entries (int64 offset of its
    corner, int32 ones within it). CHECK applies the causal and key-bound checks."""
    s = qk * scale_log2
    if MASK_KIND != "none":
        # Padding rows / columns may lie past the mask's storage: never load them.
        m = tl.load(Mask + mask_off + mask_offs, mask=(rows < L) & (cols < S), other=0)
        if MASK_KIND == "bool":
            s = tl.where(m != 0, s, float("-inf"))
        else:
            s += m.to(tl.float32) * LOG2E
    if CHECK:
        keep = cols < S
        if IS_CAUSAL:
            keep = keep & (cols <= rows)
        s = tl.where(keep, s, float("-inf"))
    return s


@triton.jit
def dropout_keep(seed, rng_base, rng_offs, dropout_p):
    """Keep mask of a tile whose Philox counters, the flat (B, H, L, S) indices, are rng_base (int64
    scalar) + rng_offs (int32 tile)."""
    return tl.rand(seed, rng_base + rng_offs) >= dropout_p


@triton.jit
def key_blocks(start_m, S, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(full_end, end) for the query block at start_m: key blocks starting before full_end need no checks
    (all their keys < S and, causal, <= every query of the block); those in [full_end, end) do."""
    if IS_CAUSAL:
        # Block [n, n + BLOCK_N) is below the diagonal of queries >= start_m iff n + BLOCK_N <= start_m + 1.
        return tl.minimum(S, start_m + 1) // BLOCK_N * BLOCK_N, tl.minimum(S, start_m + BLOCK_M)
    return S // BLOCK_N * BLOCK_N, S


@triton.jit
def query_block(
    Q, K, V, stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_ml, H, group, L, S,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """What a program over one (batch, head, query block) starts from, in the forward and the dQ
    kernel: its block start and flat batch-head index; Q, K, V advanced to its batch and (kv) head and
    Q to its first row; the int64 offset of the block's mask row and batch-head base of (B, H, L)
    tensors; the in-block rows, their global indices, the q tile, the k / v tile offsets and the
    block's Philox base counter."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    # int64 for every (batch, head, block start) offset: B * H * L * E and the rows of a transposed
    # (B, L, H, E) view overflow int32; the offsets within a tile stay int32.
    b64, h64, kv64, m64 = b.to(tl.int64), h.to(tl.int64), (h // group).to(tl.int64), start_m.to(tl.int64)
    Q += b64 * stride_qb + h64 * stride_qh + m64 * stride_ql
    K += b64 * stride_kb + kv64 * stride_kh
    V += b64 * stride_vb + kv64 * stride_vh
    mask_off = b64 * stride_mb + h64 * stride_mh + m64 * stride_ml
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    q = tl.load(Q + rows[:, None] * stride_ql + offs_e[None, :],
                mask=(offs_m[:, None] < L) & (offs_e[None, :] < E), other=0.0)
    k_offs = offs_n[:, None] * stride_kn + offs_e[None, :]
    v_offs = offs_n[:, None] * stride_vn + offs_ev[None, :]
    rng_base = (bh.to(tl.int64) * L + start_m) * S  # Philox counter of the block's (start_m, 0)
    return start_m, bh, K, V, mask_off, rows, offs_m, q, k_offs, v_offs, rng_base


# ---- forward -----------------------------------------------------------------------------------


@triton.jit
def _reciprocal(s):
    # 1 / inf = 0 for a row with nothing kept (l = 0): its acc is 0, and so is its output.
    return 1.0 / tl.where(s > 0.0, s, float("inf"))


@triton.jit
def _fwd_blocks(
    acc, l_i, m_i, q, K, V, Mask, lo, hi, rows, offs_m, k_offs, v_offs, rng_base,
    stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, seed,
    E: tl.constexpr, EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, CHECK: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) with the key blocks starting in [lo, hi).

    The mask and Philox offsets within a tile are formed in the loop from the key indices, not held in
    registers across it: those (BLOCK_M, BLOCK_N) int32 tiles would cost as much as the score tile.
    """
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
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        mask_offs = rows[:, None] * stride_ml + cols[None, :] * stride_ms
        s = masked_logits(qk, offs_m[:, None], cols[None, :], L, S, Mask, 0, mask_offs, scale_log2,
                          MASK_KIND, IS_CAUSAL, CHECK)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # 0 while the row has nothing kept: -inf logits then give 2^-inf = 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m_i - shift)  # 0 while m_i = -inf: acc and l_i are still 0 then
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_DROPOUT:  # after the sum: lse is that of the undropped probabilities
            p = tl.where(dropout_keep(seed, rng_base, rows[:, None] * S + cols[None, :], dropout_p), p, 0.0)
        v = tl.load(V + n * stride_vn + v_offs, mask=v_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, H, L, E) queries, last dim contiguous
    K,  # (B, Hkv, S, E) keys, last dim contiguous
    V,  # (B, Hkv, S, Ev) values, last dim contiguous
    Mask,  # (B, H, L, S) bool or float mask with any strides (0 for broadcast dims), or None
    O,  # (B, H, L, Ev) output, contiguous, dtype of Q
    LSE,  # (B, H, L) fp32 log-sum-exp of the masked scores (natural log; +inf for fully masked rows)
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_ml, stride_ms,
    H, group, L, S,  # group = H // Hkv
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
    offs_ev = tl.arange(0, BLOCK_EV)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_EV), dtype=tl.float32)
    full_end, end = key_blocks(start_m, S, IS_CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_blocks(
        acc, l_i, m_i, q, K, V, Mask, 0, full_end, rows, offs_m, k_offs, v_offs, rng_base,
        stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, seed,
        E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, PRECISION, BLOCK_N, CHECK=False,
    )
    acc, l_i, m_i = _fwd_blocks(
        acc, l_i, m_i, q, K, V, Mask, full_end, end, rows, offs_m, k_offs, v_offs, rng_base,
        stride_kn, stride_vn, stride_ml, stride_ms, L, S, scale_log2, dropout_p, seed,
        E, EV, BLOCK_E, BLOCK_EV, MASK_KIND, IS_CAUSAL, HAS_DROPOUT, PRECISION, BLOCK_N, CHECK=True,
    )

    inv_l = _reciprocal(l_i)
    if HAS_DROPOUT:
        inv_l = inv_l / (1.0 - dropout_p)  # the kept probabilities' 1 / (1 - p), once per row
    O += (bh.to(tl.int64) * L + start_m) * EV
    tl.store(O + rows[:, None] * EV + offs_ev[None, :], (acc * inv_l[:, None]).to(O.dtype.element_ty),
             mask=(offs_m[:, None] < L) & (offs_ev[None, :] < EV))
    # +inf where nothing is kept (l = 0), so that the backward's P = 2^(z - inf) = 0. log2 gets 1 there,
    # not 0: the same result, without the interpreter's numpy warning about log2(0).
    has_l = l_i > 0.0
    lse = tl.where(has_l, (m_i + tl.log2(tl.where(has_l, l_i, 1.0))) * _LN2, float("inf"))
    tl.store(LSE + bh.to(tl.int64) * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def _dropout_keep_kernel(
    Keep,  # (N,) bool, N = B * H * L * S: the flat (B, H, L, S) keep mask
    N,
    seed,
    dropout_p,
    BLOCK: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    tl.store(Keep + start + offs, dropout_keep(seed, start, offs, dropout_p), mask=start + offs < N)


# ---- launchers ---------------------------------------------------------------------------------

_attn_fwd = attention_autotune(FWD_SPACE)(_attn_fwd_kernel)
_DROPOUT_BLOCK = 1024  # keep-mask entries per program of the test helper


def _head_block(d: int) -> int:
    # tl.dot needs every dimension >= 16; other head dims are padded to a power of 2 with masked loads.
    return max(16, triton.next_power_of_2(d))


def _check_qkv(q, k, v):
    assert q.dim() == k.dim() == v.dim() == 4, "q, k, v: 4-D (B, H, L, E), (B, Hkv, S, E), (B, Hkv, S, Ev)"
    B, H, _, E = q.shape
    _, Hkv, S, _ = k.shape
    assert k.shape[0] == v.shape[0] == B and v.shape[1] == Hkv and v.shape[2] == S and k.shape[3] == E, (
        f"mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    assert Hkv > 0 and H % Hkv == 0, f"H = {H} must be a multiple of Hkv = {Hkv}"
    assert q.dtype in _DTYPES and k.dtype == v.dtype == q.dtype, "q, k, v: one dtype, fp32, fp16 or bf16"
    assert q.device == k.device == v.device, "q, k, v must be on one device"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "q, k, v need a contiguous last dim"
    assert max(E, v.shape[3]) <= MAX_HEAD_DIM, f"head dims above {MAX_HEAD_DIM} are not supported"


def _mask_args(mask, shape):
    """(mask broadcast to ``shape`` = (B, H, L, S) without copying, its 4 strides, MASK_KIND)."""
    if mask is None:
        return None, (0, 0, 0, 0), "none"
    assert mask.dim() == 4, "mask must be 4-D, broadcastable to (B, H, L, S)"
    assert mask.dtype == torch.bool or mask.is_floating_point(), f"mask has unsupported dtype {mask.dtype}"
    mask = mask.expand(shape)  # broadcast dims get stride 0
    return mask, mask.stride(), "bool" if mask.dtype == torch.bool else "float"


def launch_args(q, k, v, mask, is_causal, dropout_p):
    """Checks, then (mask as (B, H, L, S) view, q/k/v/mask strides, (H, group, L, S), constexpr kwargs)."""
    _check_qkv(q, k, v)
    assert 0.0 <= dropout_p < 1.0, f"dropout_p must be in [0, 1), got {dropout_p}"
    B, H, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    mask, mask_strides, mask_kind = _mask_args(mask, (B, H, L, S))
    # Offsets within a block of at most 128 query rows are int32 (batch, head and block bases are int64):
    # the Philox counters rows * S + keys, and the mask's rows * stride_ml + keys * stride_ms.
    assert 128 * (S + mask_strides[2]) + S * mask_strides[3] < 2**31, "too long for int32 tile offsets"
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *mask_strides)
    # torch's fp32 matmul policy (see the module docstring); 16-bit operands ignore it.
    precision = "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    consts = dict(E=E, EV=Ev, BLOCK_E=_head_block(E), BLOCK_EV=_head_block(Ev), MASK_KIND=mask_kind,
                  IS_CAUSAL=bool(is_causal), HAS_DROPOUT=dropout_p > 0.0,
                  PRECISION=precision if q.dtype == torch.float32 else "tf32")
    return mask, strides, (H, H // Hkv, L, S), consts


def attention_fwd(q, k, v, mask, scale: float, is_causal: bool, dropout_p: float, seed: int):
    """FlashAttention-2 forward; see the module docstring. Returns (o, lse).

    q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), any strides with a contiguous last dim; mask None
    or 4-D broadcastable to (B, H, L, S), bool (True = keep) or float (added). o: (B, H, L, Ev)
    contiguous in q's dtype, 0 on fully masked rows; lse: (B, H, L) fp32 natural log-sum-exp of the
    scaled, masked scores (without dropout), +inf on fully masked rows. ``seed`` keys the dropout draw.
    """
    mask, strides, sizes, consts = launch_args(q, k, v, mask, is_causal, dropout_p)
    B, H, L, _ = q.shape
    o = torch.empty((B, H, L, v.shape[3]), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    if o.numel() > 0:
        grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](q, k, v, mask, o, lse, *strides, *sizes, scale * LOG2E.value, dropout_p, seed,
                        **consts)
    return o, lse


def dropout_keep_mask(seed: int, B: int, H: int, L: int, S: int, dropout_p: float, device) -> torch.Tensor:
    """The (B, H, L, S) bool keep mask that attention_fwd / attention_bwd draw for ``seed`` (for tests)."""
    keep = torch.empty((B, H, L, S), dtype=torch.bool, device=device)
    if keep.numel() > 0:
        _dropout_keep_kernel[(triton.cdiv(keep.numel(), _DROPOUT_BLOCK),)](
            keep, keep.numel(), seed, dropout_p, BLOCK=_DROPOUT_BLOCK)
    return keep
