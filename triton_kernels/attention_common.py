"""What the Triton attention forward (attention_fwd.py) and backward (attention_bwd.py) share: the kernel
arguments, the launch grid, autotuning, and the jit pieces both compute with (masked logits, dropout draw,
key-block ranges, a query block's start). Conventions and math: attention_fwd.py's docstring.

Kernel arguments. Every kernel takes the keyword arguments of :func:`kernel_args`, grouped so that a
signature is written once:
    Q (B, H, L, E), K (B, Hkv, S, E), V (B, Hkv, S, Ev): inputs, any strides, last dim contiguous, or
    (TMA) their TMA descriptors, as are the launchers' other (B, heads, rows, head dim) tensors then;
    Mask: (B, H, L, S) bool or float view with any strides (0 on broadcast dims), or None;
    Seed: int64 tensor of one element on the inputs' device, the Philox seed, or None without dropout;
    strides: ((q b, h, l), (k b, h, n), (v b, h, n), (mask b, h, l, s)) in elements;
    sizes: (H, group, L, S) with group = H // Hkv: query head h reads kv head h // group;
    scale_log2 = scale * log2(e); dropout_p (for the kept elements' 1 / (1 - p)) and keep_threshold (its
    16-bit drop threshold, :func:`dropout_threshold`; an int argument every kernel lists in do_not_specialize,
    or Triton would compile one variant for 1 (a constexpr then), one for multiples of 16 and one for
    the others);
    seq_buckets: (seq_bucket(L), seq_bucket(S)), and dtype_bytes: q's element size, which only the
    autotuner's key reads (it adds the dtypes of tensor arguments itself, but descriptors have none);
    constexprs E, EV, BLOCK_E, BLOCK_EV (head dims and their power-of-2 tiles), SCALE_SIGN (1, -1 or 0:
    the sign of scale, see masked_scores), MASK_KIND ("none", "bool", "float"), MASK_ROWS_BROADCAST (see
    below), IS_CAUSAL, HAS_DROPOUT, PRECISION (tl.dot input_precision of fp32 operands), TMA (see below), and
    the autotuned BLOCK_M, BLOCK_N.

Masks. The mask is read through its broadcast strides, so a broadcast over batches or heads costs nothing
but the offset of a (batch, head). A broadcast over query rows, the key-padding mask (B, 1, 1, S) of
training on padded batches (or (B, H, 1, S), or any mask of one query row), is compiled apart:
MASK_ROWS_BROADCAST (mask_rows_broadcast, decided once per launch) loads one BLOCK_N vector of the keys
per key block and broadcasts it across the score tile's rows (mask_offsets, masked_scores), where a
(BLOCK_M, BLOCK_N) tile through a 0 row stride loads the same entries BLOCK_M times, and pipelines
num_stages - 1 such tiles through shared memory (mask_buffer_bytes). Other masks keep the tile.

TMA tensor descriptors (Hopper's bulk tensor copies): attention_tma.py; kernel_args passes the launch's
(B, heads, rows, head dim) tensors as descriptors where use_tma decides so, and the kernels' constexpr TMA
picks their loads and stores (head_rows, load_rows, store_rows).

The seed is read from device memory, never passed by value: Triton specialises an int argument on its
value (== 1, divisible by 16), which would recompile the kernels for one training step in 16, and a CUDA
graph replays its kernels with the arguments of the capture, while a seed tensor drawn by torch's CUDA
generator inside the graph holds a new value at each replay.

Grid. Programs run over (batch-head, block) on grid dim 0 alone, the blocks of one head consecutive:
CUDA caps dims 1 and 2 at 65535, which B * H exceeds (B = 4097, H = 16), and dim 0 at 2^31 - 1.
"""

import math
import os

import torch
import triton
import triton.language as tl
from ..backends import KERNEL_DTYPES
from .attention_tma import descriptor, set_block_shapes, tensor_of, use_tma
from .utils import cdiv, device_property, next_power_of_2

LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# FASTTX_TRITON_AUTOTUNE=0 runs the first config the pruning keeps instead of timing them all: for
# runs whose timings mean nothing (the test suite, many processes sharing one GPU), where timing every
# config of every new key would cost most of the time. make gpu-check's tests stage sets it; its
# autotune stage runs every config on its own.
_AUTOTUNE = os.environ.get("FASTTX_TRITON_AUTOTUNE", "1") != "0"
MAX_HEAD_DIM = 256  # the largest head-dim tile the launch configurations were checked for
MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid dim 0
# The tile offsets within a block are int32 (the bases of batches, heads and blocks are int64): a block
# has at most this many rows (any BLOCK_M or BLOCK_N of the configurations).
MAX_BLOCK = 128


# ---- launch grid -------------------------------------------------------------------------------


def launch_grid(n: int, block: int, heads: int) -> tuple[int]:
    """The grid of a kernel whose programs own ``block`` of ``n`` rows (queries or keys) of each of
    ``heads`` (batch, head) pairs: everything on dim 0 (see the module docstring)."""
    programs = cdiv(n, block) * heads
    if programs > MAX_PROGRAMS:
        raise ValueError(f"attention: {heads} batch-heads x {cdiv(n, block)} blocks of {block} rows "
                         f"need {programs} programs, more than CUDA's {MAX_PROGRAMS}")
    return (programs,)


@triton.jit
def program_block(n, BLOCK: tl.constexpr):
    """(first row, batch-head index) of this program in launch_grid(n, BLOCK, heads)."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(n, BLOCK)
    return (pid % blocks) * BLOCK, pid // blocks


# ---- autotuning --------------------------------------------------------------------------------
#
# A space maps (max head dim, fp32) to [(BLOCK_M, BLOCK_N, num_warps, num_stages)]; the first key that
# fits the call's head dims and dtype class is used. Each kernel file documents how its lists were chosen.
# The autotuner times each config kept for the call once per key: head dims, causal, mask kind and rows
# (MASK_ROWS_BROADCAST), dropout, precision, TMA or pointers, the forward's schedule (DEFER_PV: the
# autotuner skips key names a kernel lacks), the sequence-length buckets, q's element size and (added by
# the autotuner) the dtypes of the tensors passed as such, mask included. The interpreter runs one fixed
# config: 16 is tl.dot's smallest size, and small blocks give short test sequences several blocks,
# exercising the loop boundaries.

TUNING_KEY = ["E", "EV", "IS_CAUSAL", "MASK_KIND", "MASK_ROWS_BROADCAST", "HAS_DROPOUT", "PRECISION", "TMA",
              "DEFER_PV", "seq_buckets", "dtype_bytes"]
# Shared memory per block where the device cannot be asked (the interpreter, prune tests): H100 / H200.
DEFAULT_SHARED_MEMORY = 227 * 1024


def held_copies(dtype_bytes):
    """Copies in shared memory of a tile a kernel holds across its loop: fp32 operands (tf32x3) keep
    two, fp16 / bf16 one (measured; tf32 needs one, so this is an upper bound there)."""
    return 2 if dtype_bytes == 4 else 1


def seq_bucket(n: int) -> int:
    """The autotuning bucket of a sequence length: its next power of 2, within [16, 16384]. The best tile
    changes with the length (few long loops against many short programs) in steps of about 2x; beyond
    16K every program's loop is long. Never 1 nor a non-multiple of 16, so the bucket never makes
    Triton specialise the kernel anew."""
    return min(max(next_power_of_2(n), 16), 16384)


# Pipeline stages a config is given at the least: with one, Triton pipelines nothing and stages the
# dot operands and mask through other shared buffers, which the models do not count (measured: more
# than two stages take, e.g. 160 KB against 96 KB for (128, 128, 8, 1) at E = 128 with an fp64 mask).
MIN_STAGES = 2


def fitting_configs(configs, shared_memory, limit):
    """The configs (BLOCK_M, BLOCK_N, num_warps, num_stages) that fit in ``limit`` bytes of shared
    memory, where ``shared_memory(BLOCK_M, BLOCK_N, num_stages)`` models their use: each with the most
    pipeline stages, at most its own, that fit; none of those that do not fit with MIN_STAGES."""
    fitting = []
    for block_m, block_n, num_warps, num_stages in configs:
        while num_stages > MIN_STAGES and shared_memory(block_m, block_n, num_stages) > limit:
            num_stages -= 1
        config = (block_m, block_n, num_warps, num_stages)
        if shared_memory(block_m, block_n, num_stages) <= limit and config not in fitting:
            fitting.append(config)
    return fitting


def shared_memory_limit(device: torch.device) -> int:
    return device_property(device, "shared_memory_per_block_optin", DEFAULT_SHARED_MEMORY)


def _config(block_m, block_n, num_warps, num_stages, **meta):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, **meta}, num_warps=num_warps,
                         num_stages=num_stages, pre_hook=set_block_shapes)


def keep_tile_bytes(block_m, block_n, has_dropout):
    """Shared memory the dropout keep tile passes through, 1 byte an element (Triton 3.6 and 3.8, sm_90a,
    seen compiling the configs): dropout_keep draws it in a layout of 8-key groups whose rows lie in
    other warps than in the scores' layout, so the conversion goes through shared memory."""
    return block_m * block_n if has_dropout else 0


def mask_buffer_bytes(block_m, block_n, num_stages, mask_bytes, vectors):
    """Shared memory of the mask's pipeline buffers, num_stages - 1 of them (Triton 3.8, sm_90a, seen
    compiling the configs: at E = 128, fp16, the forward's (128, 128, 8, 3) takes 224 KB without a mask,
    352 KB with an fp32 (B, 1, L, S) one): a (BLOCK_M, BLOCK_N) tile each, or (``vectors``, with
    MASK_ROWS_BROADCAST) one BLOCK_N vector (an upper bound: benchmarks/notes/attention.md has what it takes; the pruning's
    choice between the two: mask_vector_buffers)."""
    return (num_stages - 1) * (1 if vectors else block_m) * block_n * mask_bytes


def tma_barrier_bytes(num_stages):
    """Shared memory of the TMA path's mbarriers, 8 bytes each: one per pipeline stage of each of the two
    tiles a loop streams, and one for the held tiles (Triton 3.6 and 3.8, sm_90a: 56 B at 3 stages, 32 at
    2). The pointer path has none: counted for both, an upper bound there."""
    return 8 * (2 * num_stages + 1)


def modelled_shared_memory(shared_memory, block_m, block_n, num_stages, block_e, block_ev, dtype_bytes,
                           mask_bytes=0, mask_vectors=False, has_dropout=False):
    """Bytes of shared memory a config of a kernel takes by the models: ``shared_memory(BLOCK_M, BLOCK_N,
    num_stages, block_e, block_ev, dtype_bytes)``, the kernel's model of its dot operands and statistics,
    plus the mask's buffers (mask_buffer_bytes; mask_bytes 0 without a mask), dropout's keep tile
    (keep_tile_bytes) and the TMA path's barriers (tma_barrier_bytes)."""
    return (shared_memory(block_m, block_n, num_stages, block_e, block_ev, dtype_bytes)
            + mask_buffer_bytes(block_m, block_n, num_stages, mask_bytes, mask_vectors)
            + keep_tile_bytes(block_m, block_n, has_dropout) + tma_barrier_bytes(num_stages))


def mask_vector_buffers(rows_broadcast, tma, has_dropout):
    """Whether the pruning models a launch's mask buffers as vectors (mask_buffer_bytes), from its
    MASK_ROWS_BROADCAST, TMA and HAS_DROPOUT. The configs the vectors' smaller model admits were compiled
    for sm_90a (Triton 3.6 and 3.8, bf16) to check they spill nothing; where some spilled, a row-broadcast
    mask is counted as a tile all the same: with dropout (the forward's (128, 128, 8, 2) at head dim 128
    with an fp32 key-padding mask, 8-176 bytes, (128, 64, 8, 2) at 256, 4 bytes; Triton 3.8) and on the
    pointer path ((128, 128, 8, 3) at head dim 128, causal, bf16 / fp32 mask: 32 / 4 bytes; Triton 3.6).
    Without either, none does (benchmarks/notes/attention.md)."""
    return rows_broadcast and tma and not has_dropout


def space_configs(space, shared_memory, block_e, block_ev, dtype_bytes, mask_bytes, limit, wrong=(),
                  has_dropout=False, mask_vectors=False):
    """The configs (BLOCK_M, BLOCK_N, num_warps, num_stages) of ``space`` for a call: those of the first
    key that fits its head dims and dtype class (fp32 when dtype_bytes is 4), less the ``wrong`` ones
    (measured to compute wrong results for the call's dtype and mask kind), fitted to ``limit`` bytes by
    modelled_shared_memory with the kernel's model ``shared_memory`` (see fitting_configs). A mask tile
    takes num_stages - 1 more buffers, so with one some configs get fewer stages (vectors, ``mask_vectors``
    from mask_vector_buffers, hardly any); without one the model applies too: a listed config may not fit
    every device, nor every head dim of its key (measured on an H200: the dQ kernel's (128, 16, 8, 2) at
    E = 128 fp32 asked for 294912 bytes, the model's figure, against 232448)."""
    key = next(k for k in space if k[1] == (dtype_bytes == 4) and max(block_e, block_ev) <= k[0])

    def model(block_m, block_n, num_stages):
        return modelled_shared_memory(shared_memory, block_m, block_n, num_stages, block_e, block_ev, dtype_bytes,
                                      mask_bytes, mask_vectors, has_dropout)

    return fitting_configs([c for c in space[key] if c not in wrong], model, limit)


def attention_autotune(space, shared_memory, wrong=None, meta=None):
    """triton.autotune over the configs of ``space`` that space_configs keeps for the call. ``wrong``:
    {(MASK_KIND, fp32): configs} that compile and launch but compute wrong results for such calls
    (each kernel file gives the measurements); they are never kept for them. ``meta(config, args)``: more
    constexprs of a config for the call (dict; the forward's DEFER_FITS), not under the interpreter."""
    if _INTERPRET:  # one config: the key is never read
        return triton.autotune(configs=[_config(16, 16, 1, 1)], key=TUNING_KEY)
    configs = {c: _config(*c) for shapes in space.values() for c in shapes}
    wrong = wrong or {}

    def prune(_configs, named_args, **kwargs):
        args = {**named_args, **kwargs}  # positional and keyword arguments
        q, mask = tensor_of(args["Q"]), args["Mask"]
        kept = space_configs(space, shared_memory, args["BLOCK_E"], args["BLOCK_EV"], q.element_size(),
                             0 if mask is None else mask.element_size(), shared_memory_limit(q.device),
                             wrong.get((args["MASK_KIND"], q.element_size() == 4), ()), args["HAS_DROPOUT"],
                             mask_vector_buffers(args["MASK_ROWS_BROADCAST"], args["TMA"], args["HAS_DROPOUT"]))
        if meta is not None:
            return [_config(*c, **meta(c, args)) for c in (kept if _AUTOTUNE else kept[:1])]
        return [configs[c] if c in configs else _config(*c) for c in (kept if _AUTOTUNE else kept[:1])]

    return triton.autotune(configs=list(configs.values()), key=TUNING_KEY,
                           prune_configs_by={"early_config_prune": prune})


# ---- kernel arguments --------------------------------------------------------------------------


def _check_qkv(q, k, v):
    assert q.dim() == k.dim() == v.dim() == 4, "q, k, v: 4-D (B, H, L, E), (B, Hkv, S, E), (B, Hkv, S, Ev)"
    B, H, _, E = q.shape
    _, Hkv, S, _ = k.shape
    assert k.shape[0] == v.shape[0] == B and v.shape[1] == Hkv and v.shape[2] == S and k.shape[3] == E, (
        f"mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    assert Hkv > 0 and H % Hkv == 0, f"H = {H} must be a multiple of Hkv = {Hkv}"
    assert q.dtype in KERNEL_DTYPES and k.dtype == v.dtype == q.dtype, "q, k, v: one dtype, fp32, fp16 or bf16"
    assert q.device == k.device == v.device, "q, k, v must be on one device"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "q, k, v need a contiguous last dim"
    assert max(E, v.shape[3]) <= MAX_HEAD_DIM, f"head dims above {MAX_HEAD_DIM} are not supported"


def mask_rows_broadcast(mask_strides, L: int) -> bool:
    """MASK_ROWS_BROADCAST of a launch: whether every query row reads the same mask entries, from the
    strides (b, h, l, s) of the mask broadcast to (B, H, L, S): a 0 row stride (key padding, (B, 1, 1, S)
    or (B, H, 1, S)), or one row. Then the kernels load a vector of keys instead of a tile (module
    docstring, "Masks")."""
    return mask_strides[2] == 0 or L == 1


def _mask_args(mask, shape):
    """(mask broadcast to ``shape`` = (B, H, L, S) without copying, its 4 strides, MASK_KIND)."""
    if mask is None:
        return None, (0, 0, 0, 0), "none"
    assert mask.dim() == 4, "mask must be 4-D, broadcastable to (B, H, L, S)"
    assert mask.dtype == torch.bool or mask.is_floating_point(), f"mask has unsupported dtype {mask.dtype}"
    mask = mask.expand(shape)  # broadcast dims get stride 0
    return mask, mask.stride(), "bool" if mask.dtype == torch.bool else "float"


def dropout_threshold(dropout_p: float) -> int:
    """The 16-bit drop threshold of dropout_p in [0, 1) (dropout_keep), as csrc/attention/philox.h's
    dropout_threshold computes it for the CUDA kernels: dropout_p 2^16 (exact in double) rounded to the
    nearest integer, ties to even, at most 2^16 - 1."""
    return min(round(dropout_p * 65536), 65535)


def _seed_arg(seed, dropout_p, device):
    """The seed tensor the kernels read, on their device; None without dropout."""
    if dropout_p == 0.0:
        return None
    assert seed is not None and seed.dtype == torch.int64 and seed.numel() == 1, (
        "dropout needs the seed as an int64 tensor of one element")
    # A seed on another device (the CPU) is copied; the functional API draws it on the inputs' device,
    # which CUDA graphs need (see the module docstring).
    return seed.to(device)


def _head_block(d: int) -> int:
    # tl.dot needs every dimension >= 16; other head dims are padded to a power of 2 with masked loads.
    return max(16, next_power_of_2(d))


def tile_offsets_fit(row_strides, S, mask_col_stride):
    """Whether the int32 offsets within a tile cannot overflow: MAX_BLOCK rows of each row stride, the
    Philox counters' rows * ceil(S / 8) + key groups (dropout_keep), and the mask's keys * its column
    stride."""
    return MAX_BLOCK * max(max(abs(s) for s in row_strides), S) + S * (abs(mask_col_stride) + 1) < 2**31


def kernel_args(q, k, v, mask, seed, scale, is_causal, dropout_p, tma=None, **tensors):
    """Checks, then the keyword arguments shared by every attention kernel (see the module docstring), with
    ``tensors``, the launch's other (B, heads, rows, head dim) tensors by argument name (O; DO, DQ, DK,
    DV). These and q, k, v are passed as TMA descriptors where ``tma`` (default: use_tma of them all)."""
    _check_qkv(q, k, v)
    assert 0.0 <= dropout_p < 1.0, f"dropout_p must be in [0, 1), got {dropout_p}"
    B, H, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    mask, mask_strides, mask_kind = _mask_args(mask, (B, H, L, S))
    strides = (q.stride()[:3], k.stride()[:3], v.stride()[:3], mask_strides)
    assert tile_offsets_fit([t[2] for t in strides], S, mask_strides[3]), "strides or S too large for int32 offsets"
    # torch's fp32 matmul policy (see attention_fwd.py's docstring); 16-bit operands ignore it.
    precision = "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    tensors = dict(Q=q, K=k, V=v, **tensors)
    if tma is None:
        tma = use_tma(*tensors.values())
    if tma:
        tensors = {name: descriptor(t) for name, t in tensors.items()}
    return dict(
        tensors, Mask=mask, Seed=_seed_arg(seed, dropout_p, q.device), strides=strides,
        sizes=(H, H // Hkv, L, S), scale_log2=scale * LOG2E.value, dropout_p=dropout_p,
        keep_threshold=dropout_threshold(dropout_p),
        seq_buckets=(seq_bucket(L), seq_bucket(S)), dtype_bytes=q.element_size(), TMA=tma,
        E=E, EV=Ev, BLOCK_E=_head_block(E), BLOCK_EV=_head_block(Ev),
        SCALE_SIGN=(scale > 0) - (scale < 0), MASK_KIND=mask_kind,
        MASK_ROWS_BROADCAST=mask is not None and mask_rows_broadcast(mask_strides, L), IS_CAUSAL=bool(is_causal),
        HAS_DROPOUT=dropout_p > 0.0,
        PRECISION=precision if q.dtype == torch.float32 else "tf32",
    )


# ---- jit pieces --------------------------------------------------------------------------------


@triton.jit
def held_signed(t, SCALE_SIGN: tl.constexpr):
    """A tile a program holds across its loop (q, or k in the dK/dV kernels) times sign(scale), once per
    program, exact in any dtype: its scores x = q . k then have the sign of scale * q . k, and their
    base-2 logits are x * logit_scale(scale_log2) with a factor > 0 (see masked_scores). A constexpr,
    not a multiply by a runtime sign: compiled for sm_90a, the multiplied q tile stayed in registers as
    the wgmma operand instead of going to shared memory (forward, bf16, head dim 128: 182 -> 221
    registers a thread; dQ 140 -> 170; dK/dV 157 -> 180)."""
    if SCALE_SIGN == 1:
        signed = t
    elif SCALE_SIGN == -1:
        signed = -t
    else:
        signed = tl.zeros_like(t)
    return signed


@triton.jit
def logit_scale(scale_log2):
    """|scale| log2(e) > 0: the factor of the signed scores (held_signed) in their logits; log2(e), any
    positive factor, at scale 0, whose scores are 0."""
    return tl.where(scale_log2 == 0, LOG2E, tl.abs(scale_log2))


@triton.jit
def mask_offsets(rows, cols, stride_ml, stride_ms, MASK_ROWS_BROADCAST: tl.constexpr):
    """The int32 offsets of a score tile's mask entries from its first row's (masked_scores' mask_offs),
    from the tile's query rows and keys ``rows``, ``cols`` (indices within the blocks, shaped to
    broadcast to the tile): with MASK_ROWS_BROADCAST the keys' alone, one vector of the keys' shape."""
    if MASK_ROWS_BROADCAST:
        offs = cols * stride_ms
    else:
        offs = rows * stride_ml + cols * stride_ms
    return offs


@triton.jit
def masked_scores(qk, rows, cols, L, S, Mask, mask_off, mask_offs, scale_log2, MASK_KIND: tl.constexpr,
                  MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, CHECK: tl.constexpr):
    """(x, x_scale) of a score tile ``qk`` = q . k (either orientation, held operand signed by held_signed)
    whose base-2 logits, (scale q . k + mask) log2(e), are z = x * x_scale, -inf where masked out.

    Without a float mask, x is qk itself with -inf where masked out (bool mask; CHECK: the causal and
    key-bound checks) and x_scale = logit_scale > 0, which keeps -inf as -inf: the forward takes its
    row max on x and scales it once per row, and each exponent x * x_scale - shift is one FMA, where
    scaling every score first costs a multiply and a subtraction. A float mask must be in the row max,
    so x is then z itself (qk x_scale + mask log2(e), one FMA) and x_scale 1. ``rows``, ``cols``:
    global query and key indices, broadcastable to qk; ``Mask + mask_off + mask_offs``: the tile's mask
    entries (int64 offset of its corner, int32 ones within it: mask_offsets), with MASK_ROWS_BROADCAST
    the vector of its keys, broadcast across the rows as it is used."""
    x = qk
    x_scale = logit_scale(scale_log2)
    if MASK_KIND != "none":
        # Padding rows / columns may lie past the mask's storage: never load them. A row-broadcast mask
        # reads no row but the first (mask_off's), which every launched block has.
        if MASK_ROWS_BROADCAST:
            ok = cols < S
        else:
            ok = (rows < L) & (cols < S)
        m = tl.load(Mask + mask_off + mask_offs, mask=ok, other=0)
        if MASK_KIND == "bool":
            x = tl.where(m != 0, x, float("-inf"))
        else:
            x = x * x_scale + m.to(tl.float32) * LOG2E
            x_scale = 1.0
    if CHECK:
        x = bound_checks(x, rows, cols, S, IS_CAUSAL)
    return x, x_scale


@triton.jit
def bound_checks(s, rows, cols, S, IS_CAUSAL: tl.constexpr):
    """``s`` with -inf at keys past S and, causal, at keys after their query."""
    keep = cols < S
    if IS_CAUSAL:
        keep = keep & (cols <= rows)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def load_seed(Seed, HAS_DROPOUT: tl.constexpr):
    """The Philox seed (0 without dropout, when Seed is None)."""
    # One return: compiled, code after a constexpr branch's return is still typed against it.
    if HAS_DROPOUT:
        seed = tl.load(Seed)
    else:
        seed = 0
    return seed


# Rounds of the dropout draw's Philox-4x32 (tl.randint4x's default is 10): FlashAttention-2's 7, which
# pass BigCrush; csrc/attention/philox.h kRounds (the CUDA kernels' draw) says why and must be the same.
PHILOX_ROUNDS = tl.constexpr(7)


@triton.jit
def dropout_keep(seed, first_row, rows, start_n, S, keep_threshold, BLOCK_N: tl.constexpr):
    """Keep mask (len(rows), BLOCK_N) of the rows first_row + rows (first_row: int64 scalar, rows: the
    int32 range 0, 1, ...) of the flat (B H L, S) score matrix and its keys start_n + [0, BLOCK_N)
    (start_n and BLOCK_N multiples of 8). Element (r, j) is kept iff 16-bit value j % 8 of the words of
    Philox counter r * ceil(S / 8) + j // 8 is >= keep_threshold, value 2i being word i's low half and
    2i + 1 its high half (csrc/attention/philox.h): one tl.randint4x (PHILOX_ROUNDS rounds) serves 8 keys
    of a row."""
    S8 = (S + 7) // 8
    groups = tl.arange(0, BLOCK_N // 8)
    w0, w1, w2, w3 = tl.randint4x(seed, (first_row * S8 + start_n // 8) + (rows[:, None] * S8 + groups[None, :]),
                                  PHILOX_ROUNDS)
    # A low half is >= t iff its word << 16 is >= t << 16, a high half iff the word itself is (t < 2^16),
    # so no half is extracted (the CUDA kernels' keep_group compares both halves of a word at once).
    # join(join(join(x0, x2), join(x1, x3)), join(join(w0, w2), join(w1, w3)))[r, k, a, b, c], with
    # x_i = w_i << 16, is half c of word 2a + b, which row-major is key 8k + 4a + 2b + c.
    lows = tl.join(tl.join(w0 << 16, w2 << 16), tl.join(w1 << 16, w3 << 16))
    values = tl.join(lows, tl.join(tl.join(w0, w2), tl.join(w1, w3)))
    return tl.reshape(values, (rows.shape[0], BLOCK_N)) >= (keep_threshold.to(tl.uint32) << 16)


@triton.jit
def key_blocks(start_m, S, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(full_end, end) for the query block at start_m: key blocks starting before full_end need no checks
    (all their keys < S and, causal, <= every query of the block); those in [full_end, end) do.

    end is at least 1, so the loop over the blocks visibly runs at least once: where the compiler must
    allow for none, it copies the accumulator's initial value into the registers of the loop's last
    wgmma on that path, before the wait that ends it, and ptxas then serializes every wgmma of the
    kernel (warning C7515; seen with mask tiles, Triton 3.6 and 3.8). For S = 0 the one block is all
    keys past S: checked, loaded as 0, scored -inf, it adds nothing."""
    if IS_CAUSAL:
        # Block [n, n + BLOCK_N) is below the diagonal of queries >= start_m iff n + BLOCK_N <= start_m + 1.
        return tl.minimum(S, start_m + 1) // BLOCK_N * BLOCK_N, tl.maximum(tl.minimum(S, start_m + BLOCK_M), 1)
    return S // BLOCK_N * BLOCK_N, tl.maximum(S, 1)


@triton.jit
def head_rows(T, offset, b, h, TMA: tl.constexpr):
    """Head ``h`` of batch ``b`` of a (B, heads, rows, head dim) tensor, as load_rows and store_rows take
    it: (T's descriptor, b, h) with TMA, else (T advanced by ``offset``, the head's int64 offset, b, h)."""
    if TMA:
        rows = (T, b, h)
    else:
        rows = (T + offset, b, h)
    return rows


@triton.jit
def load_rows(head, start, n, row_stride, offs, D: tl.constexpr, TMA: tl.constexpr, BLOCK: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """The (BLOCK, BLOCK_D) tile of rows start + [0, BLOCK) of ``head`` (head_rows), 0 at rows >= n and
    columns >= D: one TMA copy, or a masked load at the int32 offsets ``offs`` (rows x row_stride + columns)
    from the row start (int64)."""
    T, b, h = head
    if TMA:
        tile = T.load([b, h, start, 0]).reshape(BLOCK, BLOCK_D)
    else:
        ok = ((start + tl.arange(0, BLOCK)) < n)[:, None] & (tl.arange(0, BLOCK_D) < D)[None, :]
        # tl.cast, not .to(): the interpreter's loop variables are Python ints
        tile = tl.load(T + tl.cast(start, tl.int64) * row_stride + offs, mask=ok, other=0.0)
    return tile


@triton.jit
def store_rows(head, start, n, row_stride, offs, tile, D: tl.constexpr, TMA: tl.constexpr, BLOCK: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Store ``tile`` in the rows start + [0, BLOCK) of ``head``, converted to its dtype, as load_rows
    loads them: rows >= n and columns >= D are left out."""
    T, b, h = head
    if TMA:
        T.store([b, h, start, 0], tile.to(T.dtype).reshape(1, 1, BLOCK, BLOCK_D))
    else:
        ok = ((start + tl.arange(0, BLOCK)) < n)[:, None] & (tl.arange(0, BLOCK_D) < D)[None, :]
        tl.store(T + tl.cast(start, tl.int64) * row_stride + offs, tile.to(T.dtype.element_ty), mask=ok)


@triton.jit
def kv_heads(K, V, strides, b, kv, TMA: tl.constexpr):
    """Head kv of batch b of K and V (head_rows)."""
    b64, kv64 = b.to(tl.int64), kv.to(tl.int64)
    return (head_rows(K, b64 * strides[1][0] + kv64 * strides[1][1], b, kv, TMA),
            head_rows(V, b64 * strides[2][0] + kv64 * strides[2][1], b, kv, TMA))


@triton.jit
def score_block(tile, Mask, start_n, full_end, rows, offs_m, strides, sizes, scale_log2, E: tl.constexpr,
                EV: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, MASK_KIND: tl.constexpr,
                MASK_ROWS_BROADCAST: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """One step of the forward's and the dQ kernel's loops over key blocks: the masked scores (x, x_scale
    of masked_scores) of the query block (``tile`` of query_block, which holds the offset of its first
    row in Mask) against the keys from start_n, and the k tile (each loop loads the v tile, load_v, where
    it needs it). Blocks from ``full_end`` on (key_blocks) get the key-bound and causal checks.

    One loop walks every block and branches on start_n for the checks (as Triton's fused-attention
    tutorial does), rather than a loop over the unchecked blocks and another over the checked ones:
    with two loops, the accumulator that the first one hands the second reaches it also through the
    path where the first runs no iteration (its initial value copied into the registers of the
    first's in-flight wgmma), and ptxas (sm_90a, Triton 3.6 and 3.8) then serializes every wgmma of
    the kernel (warning C7515): each waits for the one before, the k-steps of one product included
    (benchmarks/notes/attention.md). The loads are bounded by S on every block instead: a predicate
    per row of the tile (TMA: its own bound)."""
    q, k_head, _, k_offs, _, _, mask_base = tile
    L, S = sizes[2], sizes[3]
    cols = start_n + tl.arange(0, BLOCK_N)
    k = load_rows(k_head, start_n, S, strides[1][2], k_offs, E, TMA, BLOCK_N, BLOCK_E)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    # The mask offsets (and dropout_keep's Philox counters) within a tile are formed in the loop, not
    # held in registers across it: those (BLOCK_M, BLOCK_N) int32 tiles would cost as much as the scores.
    mask_offs = mask_offsets(rows[:, None], cols[None, :], strides[3][2], strides[3][3], MASK_ROWS_BROADCAST)
    x, x_scale = masked_scores(qk, offs_m[:, None], cols[None, :], L, S, Mask, mask_base, mask_offs, scale_log2,
                               MASK_KIND, MASK_ROWS_BROADCAST, IS_CAUSAL, CHECK=False)
    if start_n >= full_end:
        x = bound_checks(x, offs_m[:, None], cols[None, :], S, IS_CAUSAL)
    return x, x_scale, k


@triton.jit
def load_v(tile, start_n, strides, sizes, EV: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_EV: tl.constexpr):
    """The v tile of the keys from start_n of a query block's loop (score_block)."""
    return load_rows(tile[2], start_n, sizes[3], strides[2][2], tile[4], EV, TMA, BLOCK_N, BLOCK_EV)


@triton.jit
def query_block(Q, K, V, Seed, strides, sizes, E: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
                SCALE_SIGN: tl.constexpr, HAS_DROPOUT: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """What a program over one (batch-head, query block) starts from, in the forward and the dQ kernel:
    its block start, its (batch, head) and their flat index; the in-block rows and their global indices;
    the Philox seed; and ``tile``: the q tile (held_signed), the kv head's K and V (kv_heads), the k / v
    tile offsets, the block's first row in the flat (B H L, S) scores (dropout_keep's first_row) and the
    int64 offset of its first row in the mask (0 strides without one). An offset, not Mask advanced:
    Triton 3.6 cannot return a None Mask in a tuple."""
    H, group, L, S = sizes
    start_m, bh = program_block(L, BLOCK_M)
    b = bh // H
    h = bh % H
    # int64 for every (batch, head, block start) offset: B * H * L * E and the rows of a transposed
    # (B, L, H, E) view overflow int32; the offsets within a tile stay int32.
    b64, h64, m64 = b.to(tl.int64), h.to(tl.int64), start_m.to(tl.int64)
    k_head, v_head = kv_heads(K, V, strides, b, h // group, TMA)
    mask_base = b64 * strides[3][0] + h64 * strides[3][1] + m64 * strides[3][2]
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    q = load_rows(head_rows(Q, b64 * strides[0][0] + h64 * strides[0][1], b, h, TMA), start_m, L, strides[0][2],
                  rows[:, None] * strides[0][2] + offs_e[None, :], E, TMA, BLOCK_M, BLOCK_E)
    q = held_signed(q, SCALE_SIGN)
    k_offs = offs_n[:, None] * strides[1][2] + offs_e[None, :]
    v_offs = offs_n[:, None] * strides[2][2] + offs_ev[None, :]
    rng_row = bh.to(tl.int64) * L + start_m  # the block's first row in the flat (B H L, S) scores
    tile = (q, k_head, v_head, k_offs, v_offs, rng_row, mask_base)
    return start_m, (b, h, bh), rows, offs_m, load_seed(Seed, HAS_DROPOUT), tile
