"""LayerNorm and RMSNorm over the last dimension of a contiguous (M, N) tensor: the kernels, and
LayerNorm's launchers (RMSNorm's are in rms_norm.py).

RMSNorm is LayerNorm with the mean fixed at 0 and no bias, so one forward and one backward kernel
serve both, switched by the ``IS_RMS`` constexpr. Statistics always accumulate in fp32.

Forward (var biased, as torch):
    mean = sum(x) / N                      (RMS: 0)
    rstd = 1 / sqrt(sum((x - mean)^2) / N + eps)
    xhat = (x - mean) * rstd,  y = xhat * w + b

Backward. With g = dy * w (dy when there is no weight) the gradient w.r.t. xhat, and
    d mean / dx_j = 1/N,   d rstd / dx_j = -rstd^3 (x_j - mean) / N = -rstd^2 xhat_j / N,
    d xhat_i / dx_j = rstd * (delta_ij - 1/N - xhat_i xhat_j / N),
so summing over i:
    dx = rstd * (g - (xhat * mean(g * xhat) + mean(g)))
RMS drops the 1/N term (no mean subtraction): dx = rstd * (g - xhat * mean(g * xhat)); the kernels get it
by setting mean = 0 and mean(g) = 0.
    dw = sum_rows(dy * xhat),  db = sum_rows(dy)

The forward takes one row a program, or several short rows (< 1024 columns) as one tile.

dw/db are reduced deterministically without atomics: each of G persistent programs owns a contiguous
range of rows, walks it in order and writes its partial sums to row ``pid`` of a (G, N) fp32 buffer,
which the launcher then reduces with ``sum(0)``. G is what the GPU holds at once: one full wave.

The backward's innermost loop is software-pipelined (``tl.range(num_stages=...)``): when a row fits one
block, the row loop, whose next rows' x and dy Triton copies into shared memory (cp.async) while the
current row reduces; for longer rows, each pass's loop over column blocks, likewise one block ahead. So a
program keeps loads in flight through its reductions and stores. Pipelining changes when bytes arrive,
not the arithmetic or its order.

Registers, spills, shared memory and whether the loop is pipelined, for the configurations the
launchers choose: benchmarks/notes/kernel_report.md (``python -m fasttx.benchmarks.kernel_report``).
"""

import torch
import triton
import triton.language as tl

from ..backends import KERNEL_DTYPES
from .utils import persistent_split, programs_per_sm, row_block, row_tile

# Rows up to these lengths are held in registers in one block; longer rows loop over column blocks and
# re-read the row (from L2) in a second pass. Row-sized tensors are fp32 in registers whatever the input
# dtype, so the limits are in elements. At 16 warps ptxas may give each thread 128 registers (64K file).
# The forward keeps ~2 row-sized tensors live, the backward ~5 (x, dy, g and the dw, db accumulators),
# hence its smaller limit: past these ptxas spills (registers and spills of each configuration:
# benchmarks/notes/kernel_report.md).
FWD_MAX_BLOCK = 16384
BWD_MAX_BLOCK = 8192
# Rows shorter than this many columns are reduced BWD_ROWS_TILE // BLOCK_N at a time by a backward program,
# as one [ROWS, BLOCK_N] tile at 8 warps: compiled for sm_90a (bf16), 80 registers for LayerNorm (3
# programs an SM), 64 for RMSNorm (4), so the grid has 396 / 528 programs on an H200 at any such width,
# and their partial dW / dB rows (G x N fp32, written and read once more) cost ~4-6% of the minimum bytes,
# where one row a step gave 1024 programs at 1024 columns (+17%) and 2048 at 512 (+33%). Tiles of 4096
# (16 warps) took 92-96 registers, one program an SM (layer_norm.md, change 3).
BWD_ROWS_TILE = 2048
# Column block of the backward's two passes over rows longer than BWD_MAX_BLOCK. 2048 at 8 warps, its
# column loops pipelined, compiles to <= 64 registers and 57-66 KB of shared memory (bf16 / fp16), so
# four programs share an SM on sm_90 with two blocks each in flight; 8192 (the one-block limit) took 90
# registers for LayerNorm, one program an SM, RMSNorm spilled, and 4096 pipelined takes 92 registers and
# 112 KB (layer_norm.md, change 2).
BWD_LOOP_BLOCK = 2048
# Loop stages of the backward (its row loop for one-block rows, its column loops for longer ones): 3
# keeps the next two rows' (blocks') x and dy in flight (two shared-memory buffers) while one reduces, in
# <= 64 registers at 16 warps up to 4096, i.e. two programs an SM on sm_90 (kernel_report.md). Where two
# buffers would pass BWD_BUFFER_BYTES (fp32 rows of 8192: 128 KB), 2 stages (one buffer, the next row in
# flight), so that a program still fits the ~100 KB of shared memory a block gets on sm_86 / sm_89.
BWD_STAGES = tl.constexpr(3)
BWD_BUFFER_BYTES = 64 * 1024


@triton.jit
def _affine(xhat, W, B, cols, mask, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    y = xhat
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    return y


@triton.jit
def _moments(x, mask, n, IS_RMS: tl.constexpr):
    """Mean (0 for RMS) and sum of squared deviations of the ``n`` valid lanes of each row of the
    [rows, block] tile ``x``, as [rows, 1] tensors."""
    if IS_RMS:
        mean = tl.zeros((x.shape[0], 1), dtype=tl.float32)
    else:
        mean = tl.sum(x, axis=1, keep_dims=True) / n
    # Padding lanes hold 0, not the mean: zero them so they add nothing to M2.
    xc = tl.where(mask, x - mean, 0.0)
    return mean, tl.sum(xc * xc, axis=1, keep_dims=True)


@triton.jit
def _norm_fwd_kernel(
    X,  # (M, N) input, row-major
    Y,  # (M, N) output, dtype of X
    W,  # (N,) weight, or None
    B,  # (N,) bias, or None
    Mean,  # (M,) fp32 row means, or None when IS_RMS
    Rstd,  # (M,) fp32 reciprocal standard deviations
    N,
    eps,
    IS_RMS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,  # N <= BLOCK_N
    ROWS: tl.constexpr,  # rows a program, a divisor of M (utils.row_tile); 1 unless SINGLE_BLOCK
):
    # A program normalises a [ROWS, BLOCK_N] tile, a row in each of its rows (ROWS > 1 only for short
    # rows); row is [ROWS, 1], the statistics [ROWS, 1], and a long row's running ones [1, 1].
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    # int64: row * N overflows int32 for tensors beyond 2**31 elements.
    X += row.to(tl.int64) * N
    Y += row.to(tl.int64) * N
    cols = tl.arange(0, BLOCK_N)[None, :]
    if SINGLE_BLOCK:
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        mean, m2 = _moments(x, mask, N, IS_RMS)
        rstd = tl.rsqrt(m2 / N + eps)
        y = _affine((x - mean) * rstd, W, B, cols, mask, HAS_W, HAS_B)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Chan et al.'s pairwise combination of per-block (mean, M2): as stable as two passes over the
        # row, with one. All blocks before `off` are full, so `off` is the count combined so far.
        mean = tl.zeros((1, 1), dtype=tl.float32)
        m2 = tl.zeros((1, 1), dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            x = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
            n_b = tl.minimum(N - off, BLOCK_N).to(tl.float32)
            mean_b, m2_b = _moments(x, mask, n_b, IS_RMS)
            frac = n_b / (off + n_b)
            delta = mean_b - mean
            mean += delta * frac
            m2 += m2_b + delta * delta * off * frac
        rstd = tl.rsqrt(m2 / N + eps)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            x = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
            y = _affine((x - mean) * rstd, W, B, off + cols, mask, HAS_W, HAS_B)
            tl.store(Y + off + cols, y.to(Y.dtype.element_ty), mask=mask)
    if not IS_RMS:
        tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _xhat_dy(X, DY, offs, mask, mean, rstd):
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    # Padding lanes would give xhat = -mean * rstd: zero them so they drop out of the row sums.
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    return xhat, dy


@triton.jit
def _xhat_dy_g(X, DY, W, offs, cols, mask, mean, rstd, HAS_W: tl.constexpr):
    """_xhat_dy and g = dy * w, the gradient w.r.t. xhat, of a column block of a long row. The weight
    is re-read per block: it hits L1, and holding it across rows costs a row of registers."""
    xhat, dy = _xhat_dy(X, DY, offs, mask, mean, rstd)
    g = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else dy
    return xhat, dy, g


# rows_per_program is not specialised (e.g. on divisibility by 16): the launcher compiles the kernel
# before it knows the grid, to size the grid by the compiled kernel's registers and shared memory.
@triton.jit(do_not_specialize=["rows_per_program"])
def _norm_bwd_kernel(
    DY,  # (M, N) upstream gradient, row-major
    X,  # (M, N) forward input, row-major
    W,  # (N,) weight, or None
    Mean,  # (M,) fp32 row means, or None when IS_RMS
    Rstd,  # (M,) fp32 reciprocal standard deviations
    DX,  # (M, N) input gradient, dtype of X
    DW,  # (G, N) fp32 per-program partial sums of dy * xhat, or None
    DB,  # (G, N) fp32 per-program partial sums of dy, or None
    M,
    N,
    rows_per_program,
    IS_RMS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,  # N <= BLOCK_N
    STAGES: tl.constexpr = BWD_STAGES,  # software-pipelining depth of the row loop (one block) or column loops
    ROWS: tl.constexpr = 1,  # rows a step of the one-block row loop (rows_per_program is a multiple of it)
):
    pid = tl.program_id(0)
    # int64 rows, so that row * N cannot overflow for tensors beyond 2**31 elements.
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    part = pid.to(tl.int64) * N  # this program's row of DW / DB
    if SINGLE_BLOCK:
        # A step takes a [ROWS, BLOCK_N] tile, a row in each of its rows; past row_end (the program's
        # last step only) the rows are masked: they load 0 and add nothing.
        # The weight and the partial sums are [BLOCK_N] vectors, broadcast over the tile: loaded as a
        # [1, BLOCK_N] tile, the weight's layout (one row over every warp) became the whole step's,
        # with 2-byte dx stores and ~30 more registers (compiled for sm_90a).
        cols_1d = tl.arange(0, BLOCK_N)
        cols = cols_1d[None, :]
        col_mask = cols < N
        dw = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        db = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        # Loaded once, as stored (half the registers of fp32 for 16-bit weights), and held across rows:
        # inside the pipelined loop it would be copied to shared memory again for every row.
        w = tl.load(W + cols_1d, mask=cols_1d < N, other=0.0)[None, :] if HAS_W else 0.0
        # num_stages on the loop itself: Triton pipelines loads that feed no tl.dot only when asked.
        for first in tl.range(row_start, row_end, ROWS, num_stages=STAGES):
            row = first + tl.arange(0, ROWS)[:, None]
            row_mask = row < row_end
            mask = row_mask & col_mask
            mean = 0.0 if IS_RMS else tl.load(Mean + row, mask=row_mask, other=0.0)
            rstd = tl.load(Rstd + row, mask=row_mask, other=0.0)
            offs = row * N + cols
            xhat, dy = _xhat_dy(X, DY, offs, mask, mean, rstd)
            g = dy * w.to(tl.float32) if HAS_W else dy  # the gradient w.r.t. xhat
            c1 = tl.sum(xhat * g, axis=1, keep_dims=True) / N
            c2 = 0.0 if IS_RMS else tl.sum(g, axis=1, keep_dims=True) / N
            tl.store(DX + offs, ((g - (xhat * c1 + c2)) * rstd).to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                dw += dy * xhat
            if HAS_B:
                db += dy
        if HAS_W:
            tl.store(DW + part + cols_1d, tl.sum(dw, axis=0), mask=cols_1d < N)
        if HAS_B:
            tl.store(DB + part + cols_1d, tl.sum(db, axis=0), mask=cols_1d < N)
    else:
        cols = tl.arange(0, BLOCK_N)
        # The column loops are pipelined, not the row loop that holds them (Triton pipelines innermost
        # loops only): each row's pass over its blocks keeps the next blocks' loads in flight.
        for row in range(row_start, row_end):
            mean = 0.0 if IS_RMS else tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            base = row * N
            c1 = 0.0
            c2 = 0.0
            for off in tl.range(0, N, BLOCK_N, num_stages=STAGES):
                mask = off + cols < N
                xhat, dy, g = _xhat_dy_g(X, DY, W, base + off + cols, off + cols, mask, mean, rstd, HAS_W)
                c1 += tl.sum(xhat * g, axis=0)
                if not IS_RMS:
                    c2 += tl.sum(g, axis=0)
            c1 /= N
            c2 /= N
            # The program's first row initialises its partial row instead of adding to it, so the
            # buffers need no memset. Only this program touches that row: no races, fixed order. The
            # pipelined loop copies a block's partials ahead of time, by whichever threads the copy's
            # layout assigns; the first pass's block reductions (bar.sync) order those copies after the
            # previous row's partial stores.
            accumulate = row > row_start
            for off in tl.range(0, N, BLOCK_N, num_stages=STAGES):
                mask = off + cols < N
                xhat, dy, g = _xhat_dy_g(X, DY, W, base + off + cols, off + cols, mask, mean, rstd, HAS_W)
                dx = (g - (xhat * c1 + c2)) * rstd
                tl.store(DX + base + off + cols, dx.to(DX.dtype.element_ty), mask=mask)
                if HAS_W:
                    p = DW + part + off + cols
                    tl.store(p, tl.load(p, mask=mask & accumulate, other=0.0) + dy * xhat, mask=mask)
                if HAS_B:
                    p = DB + part + off + cols
                    tl.store(p, tl.load(p, mask=mask & accumulate, other=0.0) + dy, mask=mask)


def _check_rows(x: torch.Tensor, name: str = "x") -> None:
    assert x.dim() == 2 and x.is_contiguous(), f"{name} must be a contiguous (M, N) tensor"
    assert x.dtype in KERNEL_DTYPES, f"{name} has unsupported dtype {x.dtype}"


def _check_param(p, n: int) -> None:
    assert p is None or (p.shape == (n,) and p.is_contiguous()), f"parameters must be contiguous ({n},)"


def _fwd_config(M: int, N: int) -> dict:
    """The forward's block, rows a program and warps for M rows of N."""
    block, rows, num_warps = row_tile(N, M, FWD_MAX_BLOCK)  # short rows share a program
    return dict(BLOCK_N=block, SINGLE_BLOCK=N <= block, ROWS=rows, num_warps=num_warps)


def _norm_fwd(x, weight, bias, eps, is_rms):
    _check_rows(x)
    M, N = x.shape
    _check_param(weight, N)
    _check_param(bias, N)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = None if is_rms else torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M > 0:
        config = _fwd_config(M, N)
        _norm_fwd_kernel[(M // config["ROWS"],)](
            x, y, weight, bias, mean, rstd, N, eps,
            IS_RMS=is_rms, HAS_W=weight is not None, HAS_B=bias is not None, **config,
        )
    return y, mean, rstd


def _bwd_consts(x, dy, weight, has_bias, is_rms):
    """The backward's compile-time arguments and num_warps for rows like ``x``."""
    N = x.shape[1]
    block, _ = row_block(N, BWD_MAX_BLOCK if N <= BWD_MAX_BLOCK else BWD_LOOP_BLOCK)
    rows = max(BWD_ROWS_TILE // block, 1) if N <= block else 1  # short rows: several a step
    _, num_warps = row_block(rows * block, BWD_MAX_BLOCK)  # 8 elements a thread, as for one longer row
    step_bytes = rows * block * (x.element_size() + dy.element_size())  # a step's x and dy in shared memory
    stages = BWD_STAGES.value if (BWD_STAGES.value - 1) * step_bytes <= BWD_BUFFER_BYTES else 2
    return dict(IS_RMS=is_rms, HAS_W=weight is not None, HAS_B=has_bias, BLOCK_N=block, SINGLE_BLOCK=N <= block,
                STAGES=stages, ROWS=rows, num_warps=num_warps)


def _bwd_kernel_for(dy, x, weight, mean, rstd, dx, has_bias, consts):
    """The compiled backward that the launch with these arguments runs, compiled (or found in Triton's
    cache) before its grid, and so its partial buffers and rows_per_program, are known: stand-ins lend
    the buffers' dtype, and rows_per_program is not specialised."""
    stand_in = torch.empty(1, dtype=torch.float32, device=x.device)
    return _norm_bwd_kernel.warmup(
        dy, x, weight, mean, rstd, dx, stand_in if weight is not None else None, stand_in if has_bias else None,
        x.shape[0], x.shape[1], 1, grid=(1,), **consts)


# programs_per_sm of the backward by what selects its compiled kernel (device, dtypes, N, constants):
# one warm-up, a second JIT dispatch, per model shape instead of per call, where host time is what
# small rows pay.
_BWD_PER_SM = {}


def _norm_bwd(dy, x, weight, mean, rstd, has_bias, is_rms):
    _check_rows(x)
    _check_rows(dy, "dy")
    M, N = x.shape
    assert dy.shape == x.shape and rstd.shape == (M,) and (mean is None or mean.shape == (M,))
    _check_param(weight, N)
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    consts = _bwd_consts(x, dy, weight, has_bias, is_rms)
    per_sm = None
    if M > 0 and x.device.type == "cuda":
        # Its registers and shared memory say how many programs an SM holds: the grid is one full wave.
        key = (x.device, x.dtype, dy.dtype, None if weight is None else weight.dtype, N, tuple(consts.items()))
        per_sm = _BWD_PER_SM.get(key)
        if per_sm is None:
            kernel = _bwd_kernel_for(dy, x, weight, mean, rstd, dx, has_bias, consts)
            per_sm = _BWD_PER_SM[key] = programs_per_sm(kernel, x.device)
    programs, rows_per_program = persistent_split(M, x.device, per_sm, row_multiple=consts["ROWS"])
    # With M == 0 the (0, N) buffers still reduce to the correct all-zero gradients.
    dw = torch.empty((programs, N), dtype=torch.float32, device=x.device) if weight is not None else None
    db = torch.empty((programs, N), dtype=torch.float32, device=x.device) if has_bias else None
    if M > 0:
        _norm_bwd_kernel[(programs,)](dy, x, weight, mean, rstd, dx, dw, db, M, N, rows_per_program, **consts)
    param_dtype = x.dtype if weight is None else weight.dtype

    def reduce(partial):
        if partial is None:
            return torch.empty(0, dtype=x.dtype, device=x.device)
        return partial.sum(0).to(param_dtype)

    return dx, reduce(dw), reduce(db)


def layer_norm_fwd(x, weight, bias, eps: float):
    """LayerNorm over the last dim of ``x`` (M, N). Returns (y, mean, rstd); mean and rstd are fp32 (M,)."""
    return _norm_fwd(x, weight, bias, eps, is_rms=False)


def layer_norm_bwd(dy, x, weight, mean, rstd, has_bias: bool):
    """Gradients of :func:`layer_norm_fwd`: (dx, dweight, dbias); absent parameters get empty (0,) ones."""
    return _norm_bwd(dy, x, weight, mean, rstd, has_bias, is_rms=False)

