"""Masked softmax over the last dimension: y = softmax(scale * x + mask), forward and backward.

The forward reads a contiguous (A, B, L, C) ``x`` as A*B*L rows of C columns (rows shorter than
utils.SHORT_ROWS_TILE, several to a program). The mask is a view of
that shape read through its own strides, so broadcast masks (a (B, 1, 1, C) key-padding mask or an
(L, C) mask, expanded) cost no memory. Bool masks keep True entries; float masks are added; causal
masking keeps column c <= l of row l of the last two dims (top-left aligned, as torch's SDPA).
All math is fp32.

Forward. With z = scale * x + mask (masked-out entries z = -inf) and the row max m = max_j z_j,
    y_i = exp(z_i - m) / sum_j exp(z_j - m)
which is softmax(z) (shift invariance) with every exponent <= 0, so huge logits cannot overflow.
The kernels work in base 2, exp(t) = 2^(t log2 e), with log2 e folded into the scale and the float
mask: one exp2 per element instead of exp (a multiply and an exp2).
A row with nothing kept has m = -inf; m is then replaced by 0, so every exponent is -inf - 0 = -inf
(not -inf + inf = NaN), the sum is 0 and the row is 0: the reciprocal of a zero sum is taken as 0.
Rows too long to hold on chip use the online softmax (Milakov & Gimelshein, 2018): one pass over
column blocks k keeps the running max and sum of what it has seen,
    m_k = max(m_{k-1}, max_{j in k} z_j),  s_k = s_{k-1} * exp(m_{k-1} - m_k) + sum_{j in k} exp(z_j - m_k)
(the old sum is rescaled whenever the max grows), then a second pass writes exp(z_i - m) / s.

Backward. The softmax Jacobian is d y_i / d z_k = y_i (delta_ik - y_k); with dy the gradient w.r.t. y,
summing over i:
    dz_k = sum_i dy_i y_i (delta_ik - y_k) = y_k (dy_k - sum_i y_i dy_i),   dx = scale * dz.
It needs only y: masked entries have y = 0 and get dx = 0, and a fully masked row (y = 0) gets 0.
The mask is constant here; a float mask's gradient is dz = dx / scale, left to the caller.
With the forward's causal flag, y is 0 past column l of row l: only the kept columns of y and dy
are read (up to the same 16-column rounding as the forward's loads, for 16-byte vectors; what is
read past the limit is dropped, so no dy there reaches dx) and dx is written 0 past them. On
square causal matrices that is about 2 row-units of traffic (y and dy over half the row, dx whole)
instead of 3.
"""

import math

import torch
import triton
import triton.language as tl

from ..backends import KERNEL_DTYPES
from .utils import l2_resident_programs, row_tile

# Rows up to MAX_BLOCK columns are held in registers in one block; longer rows loop over LOOP_BLOCK-column
# blocks and re-read the row in a second pass, from L2: their grid is persistent, sized so that the rows in
# flight fit in it (utils.l2_resident_programs; softmax.md, change 1). Row-sized tensors are fp32 in
# registers whatever the dtypes, so the limits are in elements. The masked or causal forward and the backward keep 2
# row-sized tensors live across their reductions (x and the float mask until the exp2; y and dy): at 16384
# columns that took 80-90 registers (bf16), one 16-warp program an SM, each waiting on its whole row's
# loads then reducing with nothing in flight; on the pipelined loop path the same rows take 30-40
# registers, 3-4 programs an SM, and re-read from L2 (softmax.md, change 3). The plain forward (no mask,
# not causal) holds a row of MAX_BLOCK_PLAIN_FWD in 56 registers, two programs an SM, and reads it once.
# The loop's blocks get row_block's 8 elements per thread. What ptxas makes of each (registers, spills,
# access widths, for sm_90a with Triton 3.6 and 3.8): benchmarks/notes/kernel_report.md (`make
# kernel-report`).
MAX_BLOCK = 8192
MAX_BLOCK_PLAIN_FWD = 16384
LOOP_BLOCK = 4096
# The loop path's software pipeline: 3 stages = the next block's async copies in flight (2 buffers) while a
# block reduces. Without it a 16-warp program had one 4096-column block (8 KB bf16) in flight, 4 programs
# an SM 32 KB, about the H200's bandwidth x latency per SM (~4.3 TB/s x ~1 us / 132); with it twice that.
# Compiled (kernel_report, sm_90a, bf16, 32768 columns): 30-40 registers (28-38 before), 16 KB of shared
# memory a program forward, 32 KB backward, no spills. benchmarks/notes/softmax.md, change 4.
LOOP_STAGES = tl.constexpr(3)
_LOG2E = tl.constexpr(math.log2(math.e))


@triton.jit
def _load_logits(X, Mask, mask_offset, cols, n_read, n_keep, stride_mc, MASK_KIND: tl.constexpr,
                 IS_CAUSAL: tl.constexpr):
    """x (fp32) and the additive term b of columns ``cols`` of one row (X at the row's start, its mask at
    Mask + mask_offset), in base-2 units.

    The base-2 logits are x * scale * log2(e) + b. Columns >= n_read are not read (padding lanes, and
    causal columns far enough past the row index). A column is kept if it is < n_keep (the causal
    limit, <= n_read) and true in a bool mask; elsewhere x = 0 and b = -inf, whatever was read there:
    masked-out logits are ignored even when they are inf or NaN, as torch's masked_fill does.
    Kept columns have b = 0, or the float mask * log2(e).
    """
    in_read = cols < n_read
    x = tl.load(X + cols, mask=in_read, other=0.0).to(tl.float32)
    keep = in_read
    if IS_CAUSAL:
        keep = cols < n_keep
    if MASK_KIND == "bool":
        keep = keep & (tl.load(Mask + mask_offset + cols * stride_mc, mask=in_read, other=0) != 0)
    if MASK_KIND == "float":
        b = tl.where(keep, tl.load(Mask + mask_offset + cols * stride_mc, mask=in_read, other=0.0).to(tl.float32)
                     * _LOG2E,
                     float("-inf"))
    else:
        b = tl.where(keep, 0.0, float("-inf"))
    if IS_CAUSAL or MASK_KIND == "bool":
        x = tl.where(keep, x, 0.0)  # an inf x would give inf - inf = NaN with b = -inf
    return x, b


@triton.jit
def _exp2_shifted(x, b, scale_log2, shift):
    # One rounding of x * scale_log2 - shift (fma): rounding x * scale_log2 on its own puts up to
    # |x * scale_log2| * 2^-24 in every exponent, 2e-5 relative in y for logits near 1e3 (as the
    # interpreter does: its fma rounds twice). Rounding the shift itself moves every exponent of the
    # row alike, which the normalisation cancels.
    return tl.exp2(tl.fma(x, scale_log2, b - shift))


@triton.jit
def _shift(m):
    # The row max, or 0 while nothing is kept (m = -inf), so that -inf logits give exp2(-inf) = 0, not NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _reciprocal(s):
    # 1 / inf = 0 for a row with nothing kept (s = 0): its exps are all 0, and so is its output.
    return 1.0 / tl.where(s > 0.0, s, float("inf"))


@triton.jit
def _causal_bounds(i_l, C, IS_CAUSAL: tl.constexpr):
    """(n_keep, n_read) of query row i_l: the columns kept and those loaded, C each without causal.

    Columns past the row index are kept out, and the online pass stops at the block of the last kept one.
    The loads stop at the kept columns rounded up to a multiple of 16 (<= 15 columns more, all in the
    row). With a bound of no known alignment, as n_keep, the compiler cannot prove that a thread's
    consecutive elements are all read or all not, and splits every load into scalar ones (2 bytes for
    bf16); a multiple of 16 is as aligned as Triton specialises C to, so the loads are 16-byte vectors
    wherever C's are (benchmarks/notes/kernel_report.md, the causal rows).
    """
    n_keep = C
    n_read = C
    if IS_CAUSAL:  # one return: Triton's compiler types every return statement, the constexpr-pruned ones too
        n_keep = tl.minimum(C, i_l + 1)
        n_read = tl.minimum(C, tl.cdiv(i_l + 1, 16) * 16)
    return n_keep, n_read


@triton.jit
def _fwd_row_offsets(row, B, L, C, stride_ma, stride_mb, stride_ml, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """The offsets of ``row`` (a scalar, or a [ROWS, 1] tensor of rows) in X and Y and in the mask (0
    without one), and its (n_keep, n_read). Offsets, not pointers: an absent mask is None, which Triton
    3.6 cannot return from a function."""
    i_l = row % L
    # int64: row * C overflows int32 for tensors beyond 2**31 elements, and so may the mask's row offsets.
    # (tl.cast, not .to: the interpreter's loop rows are Python ints.)
    offset = tl.cast(row, tl.int64) * C
    mask_offset = 0
    if MASK_KIND != "none":
        i_b = (row // L) % B
        i_a = row // (L * B)
        mask_offset = (tl.cast(i_a, tl.int64) * stride_ma + tl.cast(i_b, tl.int64) * stride_mb
                       + tl.cast(i_l, tl.int64) * stride_ml)
    n_keep, n_read = _causal_bounds(i_l, C, IS_CAUSAL)
    return offset, mask_offset, n_keep, n_read


@triton.jit
def _softmax_fwd_kernel(
    X,  # (A, B, L, C) logits, contiguous
    Mask,  # (A, B, L, C) bool or float mask with any strides (0 for broadcast dims), or None
    Y,  # (A, B, L, C) output, contiguous
    B,  # sizes of X's dims 1 and 2: row ((a * B) + b) * L + l
    L,
    C,
    n_rows,  # A * B * L
    stride_ma,
    stride_mb,
    stride_ml,
    stride_mc,
    scale_log2,  # scale * log2(e)
    MASK_KIND: tl.constexpr,  # "none", "bool" or "float"
    IS_CAUSAL: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,  # C <= BLOCK_C
    ROWS: tl.constexpr,  # rows a program, a divisor of the row count; 1 unless SINGLE_BLOCK
):
    if SINGLE_BLOCK:
        # A [ROWS, BLOCK_C] tile, a row in each of its rows: the row arithmetic is elementwise.
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        offset, mask_offset, n_keep, n_read = _fwd_row_offsets(row, B, L, C, stride_ma, stride_mb, stride_ml,
                                                               MASK_KIND, IS_CAUSAL)
        x, b = _load_logits(X + offset, Mask, mask_offset, cols, n_read, n_keep, stride_mc, MASK_KIND, IS_CAUSAL)
        m = _shift(tl.max(x * scale_log2 + b, axis=1, keep_dims=True))
        e = _exp2_shifted(x, b, scale_log2, m)
        y = e * _reciprocal(tl.sum(e, axis=1, keep_dims=True))
        tl.store(Y + offset + cols, y.to(Y.dtype.element_ty), mask=cols < C)
    else:
        cols = tl.arange(0, BLOCK_C)
        # A persistent grid (l2_resident_programs): rows pid, pid + programs, ..., so that the rows in
        # flight stay in L2 for the second pass.
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            offset, mask_offset, n_keep, n_read = _fwd_row_offsets(row, B, L, C, stride_ma, stride_mb, stride_ml,
                                                                   MASK_KIND, IS_CAUSAL)
            m = float("-inf")
            s = 0.0
            for off in tl.range(0, n_keep, BLOCK_C, num_stages=LOOP_STAGES):
                x, b = _load_logits(X + offset, Mask, mask_offset, off + cols, n_read, n_keep, stride_mc, MASK_KIND,
                                    IS_CAUSAL)
                m_new = tl.maximum(m, tl.max(x * scale_log2 + b, axis=0))
                shift = _shift(m_new)
                # m = -inf (nothing kept yet) has s = 0 and factor exp2(-inf) = 0.
                s = s * tl.exp2(m - shift) + tl.sum(_exp2_shifted(x, b, scale_log2, shift), axis=0)
                m = m_new
            shift = _shift(m)
            inv = _reciprocal(s)
            for off in tl.range(0, C, BLOCK_C, num_stages=LOOP_STAGES):
                x, b = _load_logits(X + offset, Mask, mask_offset, off + cols, n_read, n_keep, stride_mc, MASK_KIND,
                                    IS_CAUSAL)
                y = _exp2_shifted(x, b, scale_log2, shift) * inv
                tl.store(Y + offset + off + cols, y.to(Y.dtype.element_ty), mask=off + cols < C)


@triton.jit
def _kept(v, cols, n_keep, IS_CAUSAL: tl.constexpr):
    """v where the column is kept, else +0 whatever v is: past the causal limit the loads may have read
    (up to the 16-column rounding) y = 0 next to any dy, inf and NaN included, and 0 * (dy - dot) would be
    -0 for dot > dy, or NaN."""
    if IS_CAUSAL:
        v = tl.where(cols < n_keep, v, 0.0)
    return v


@triton.jit
def _softmax_bwd_kernel(
    Y,  # (M, C) forward output, row-major
    DY,  # (M, C) upstream gradient, row-major
    DX,  # (M, C) input gradient, row-major
    L,  # rows of a causal (L, C) matrix: row r is query r % L (unused without causal)
    C,
    n_rows,  # M
    scale,
    IS_CAUSAL: tl.constexpr,  # the forward's: y is 0 past column l of query row l
    BLOCK_C: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,  # C <= BLOCK_C
    ROWS: tl.constexpr,  # rows a program, a divisor of M; 1 unless SINGLE_BLOCK
):
    if SINGLE_BLOCK:
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        # int64: row * C overflows int32 for tensors beyond 2**31 elements.
        offset = tl.cast(row, tl.int64) * C
        n_keep, n_read = _causal_bounds(row % L, C, IS_CAUSAL)
        y = tl.load(Y + offset + cols, mask=cols < n_read, other=0.0).to(tl.float32)
        dy = tl.load(DY + offset + cols, mask=cols < n_read, other=0.0).to(tl.float32)
        dot = tl.sum(_kept(y * dy, cols, n_keep, IS_CAUSAL), axis=1, keep_dims=True)
        dx = _kept(y * (dy - dot) * scale, cols, n_keep, IS_CAUSAL)
        tl.store(DX + offset + cols, dx.to(DX.dtype.element_ty), mask=cols < C)
    else:
        cols = tl.arange(0, BLOCK_C)
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):  # persistent, as the forward's
            offset = tl.cast(row, tl.int64) * C
            n_keep, n_read = _causal_bounds(row % L, C, IS_CAUSAL)
            dot = 0.0
            for off in tl.range(0, n_keep, BLOCK_C, num_stages=LOOP_STAGES):
                y = tl.load(Y + offset + off + cols, mask=off + cols < n_read, other=0.0).to(tl.float32)
                dy = tl.load(DY + offset + off + cols, mask=off + cols < n_read, other=0.0).to(tl.float32)
                dot += tl.sum(_kept(y * dy, off + cols, n_keep, IS_CAUSAL), axis=0)
            # Blocks past the limit load nothing (every lane masked) and store zeros.
            for off in tl.range(0, C, BLOCK_C, num_stages=LOOP_STAGES):
                y = tl.load(Y + offset + off + cols, mask=off + cols < n_read, other=0.0).to(tl.float32)
                dy = tl.load(DY + offset + off + cols, mask=off + cols < n_read, other=0.0).to(tl.float32)
                dx = _kept(y * (dy - dot) * scale, off + cols, n_keep, IS_CAUSAL)
                tl.store(DX + offset + off + cols, dx.to(DX.dtype.element_ty), mask=off + cols < C)


def _launch_config(n_cols: int, n_rows: int = 1, plain_forward: bool = False) -> dict:
    """Block, rows a program and warps for ``n_rows`` rows of ``n_cols`` (the default: one row's), for the
    backward, or the forward with a mask or causal, or (``plain_forward``) the forward without either."""
    one_block = MAX_BLOCK_PLAIN_FWD if plain_forward else MAX_BLOCK
    max_block = one_block if n_cols <= one_block else LOOP_BLOCK
    block, rows, num_warps = row_tile(n_cols, n_rows, max_block)  # short rows share a program
    return dict(BLOCK_C=block, SINGLE_BLOCK=n_cols <= block, ROWS=rows, num_warps=num_warps)


def _programs(n_rows: int, row_bytes: int, config: dict, device: torch.device) -> int:
    """The grid: a program a ROWS-row tile for rows held in one block; for the loop path, which reads each
    row twice, a persistent grid that keeps the rows in flight within L2 (utils.l2_resident_programs)."""
    if config["SINGLE_BLOCK"]:
        return n_rows // config["ROWS"]
    return l2_resident_programs(n_rows, row_bytes, device)


def _mask_kind(mask, x) -> str:
    if mask is None:
        return "none"
    assert mask.shape == x.shape and mask.device == x.device, "mask must have x's shape and device"
    assert mask.dtype == torch.bool or mask.dtype in KERNEL_DTYPES, f"mask has unsupported dtype {mask.dtype}"
    # Column offsets are int32 in the kernel: only a mask spanning 2**31 elements along a row overflows.
    assert (x.shape[3] - 1) * mask.stride(3) < 2**31, "mask column stride too large"
    return "bool" if mask.dtype == torch.bool else "float"


def softmax_fwd(x, mask, scale: float, is_causal: bool, out_dtype: torch.dtype):
    """softmax(scale * x + mask) over the last dim of a contiguous (A, B, L, C) ``x``, in ``out_dtype``.

    ``mask``: None, or bool (True = keep) / float (added) of x's shape with any strides. ``is_causal``
    keeps column c <= l of the last two dims. Rows with nothing kept are 0.
    """
    assert x.dim() == 4 and x.is_contiguous(), "x must be a contiguous (A, B, L, C) tensor"
    assert x.dtype in KERNEL_DTYPES and out_dtype in KERNEL_DTYPES, f"unsupported dtypes {x.dtype} -> {out_dtype}"
    _, B, L, C = x.shape
    kind = _mask_kind(mask, x)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if y.numel() > 0:
        strides = (0, 0, 0, 0) if mask is None else mask.stride()
        n_rows = x.numel() // C
        config = _launch_config(C, n_rows, plain_forward=kind == "none" and not is_causal)
        row_bytes = C * (x.element_size() + (0 if mask is None else mask.element_size()))
        _softmax_fwd_kernel[(_programs(n_rows, row_bytes, config, x.device),)](
            x, mask, y, B, L, C, n_rows, *strides, scale * _LOG2E.value, MASK_KIND=kind, IS_CAUSAL=is_causal,
            **config,
        )
    return y


def softmax_bwd(y, dy, scale: float, is_causal: bool, in_dtype: torch.dtype):
    """Gradient w.r.t. x of :func:`softmax_fwd`, in ``in_dtype``, from its output ``y`` and ``dy``.

    ``is_causal``: the forward's, over the last two dims of ``y``; y and dy are read only where kept.
    """
    assert y.shape == dy.shape and y.dim() > (1 if is_causal else 0), \
        "y and dy must have the same shape, at least 1-D (2-D with is_causal)"
    assert y.is_contiguous() and dy.is_contiguous(), "y and dy must be contiguous"
    assert y.dtype in KERNEL_DTYPES and dy.dtype in KERNEL_DTYPES and in_dtype in KERNEL_DTYPES, "unsupported dtypes"
    dx = torch.empty(y.shape, dtype=in_dtype, device=y.device)
    if dx.numel() > 0:
        C = y.shape[-1]
        n_rows = y.numel() // C
        config = _launch_config(C, n_rows)
        L = y.shape[-2] if is_causal else 1
        row_bytes = C * (y.element_size() + dy.element_size())
        _softmax_bwd_kernel[(_programs(n_rows, row_bytes, config, y.device),)](
            y, dy, dx, L, C, n_rows, scale, IS_CAUSAL=is_causal, **config)
    return dx
