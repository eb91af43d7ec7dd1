"""The CUDA LayerNorm / RMSNorm kernels (csrc/layer_norm), run on the CPU: tests/rowwise_emulator compiles
the real kernel source for the host, one fiber per GPU thread, with barriers and emulated
warp shuffles (tests/cuda_emulator/cta.h). This test plays the binding (layer_norm_api.cpp): it
allocates the outputs and the dw/db workspace, asks norm_bwd_num_partials for its size and launches
through norm_fwd_launch / norm_bwd_launch, and compares every output and gradient with the float64
reference. Every tensor sits between NaN guards, which must survive (no write past a tensor) and
would poison any result read from past one. It checks indexing, the row layouts, reductions, the
persistent row loop and the partial-sum reduction, long rows split over a cluster (forward and
backward) on a device that launches clusters; not timing, registers or real races."""

import contextlib
import ctypes

import pytest
import torch

from fasttx.testing import TOLERANCE, rel_error

from fasttx._extension import cuda_clusters

from .cuda_emulator import DTYPE_CODE, Guarded, call, cluster_device, compile_emulator
from .ops.test_layer_norm import input_grad_scale, make_inputs, run_reference, weight_grad_scale


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return compile_emulator(tmp_path_factory, "rowwise_emulator", "norm.cpp")


def emulated_norm(emulator, op, x, weight, bias, dy, eps, resident_blocks, offset=0):
    """Forward then backward through the emulated launchers, as layer_norm_api.cpp calls them:
    (y, mean or None, rstd, dx, dweight or None, dbias or None), and the largest cluster each of the
    two launched (1: plain launches only)."""
    is_rms = op == "rms_norm"
    rows, cols = x.shape
    tensors = []

    def guarded(shape, dtype, fill=None):
        t = Guarded(shape, dtype, offset, fill)
        tensors.append(t)
        return t.tensor

    address = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    x = guarded((rows, cols), x.dtype, x)
    weight = None if weight is None else guarded((cols,), weight.dtype, weight)
    bias = None if bias is None else guarded((cols,), bias.dtype, bias)
    param_dtype = weight.dtype if weight is not None else bias.dtype if bias is not None else x.dtype
    y = guarded((rows, cols), x.dtype)
    mean = None if is_rms else guarded((rows,), torch.float32)
    rstd = guarded((rows,), torch.float32)
    base = dict(is_rms=int(is_rms), input_dtype=DTYPE_CODE[x.dtype], rows=rows, cols=cols)
    call(emulator.emu_norm_fwd, dict(base, param_dtype=DTYPE_CODE[param_dtype], x=x.data_ptr(),
                                     weight=address(weight), bias=address(bias), y=y.data_ptr(),
                                     mean=address(mean), rstd=rstd.data_ptr(), eps=eps))
    clusters = [emulator.emu_largest_cluster_launched()]

    # The backward's parameter dtype is the weight's (layer_norm_api.cpp), dbias included.
    param_dtype = weight.dtype if weight is not None else x.dtype
    dy = guarded((rows, cols), x.dtype, dy)
    dx = guarded((rows, cols), x.dtype)
    dweight = None if weight is None else guarded((cols,), param_dtype)
    dbias = guarded((cols,), param_dtype) if bias is not None else None
    fields = dict(base, param_dtype=DTYPE_CODE[param_dtype], dy=dy.data_ptr(), x=x.data_ptr(),
                  weight=address(weight), mean=address(mean), rstd=rstd.data_ptr(), dx=dx.data_ptr(),
                  dweight=address(dweight), dbias=address(dbias), num_partials=0, dweight_partials=0,
                  dbias_partials=0)
    emulator.emu_set_resident_blocks(resident_blocks)
    num_partials = ctypes.c_int(0)
    call(emulator.emu_norm_bwd_num_partials, fields, ctypes.byref(num_partials))
    g = num_partials.value
    assert g >= 1
    # Fresh workspaces, as the binding allocates them: aligned whatever the tensors' offset.
    partials = {}
    for name, present in (("dweight_partials", dweight is not None), ("dbias_partials", dbias is not None)):
        if present:
            t = Guarded((g, cols), torch.float32)
            tensors.append(t)
            partials[name] = t.tensor.data_ptr()
    call(emulator.emu_norm_bwd, dict(fields, num_partials=g, **partials))
    clusters.append(emulator.emu_largest_cluster_launched())
    for i, t in enumerate(tensors):
        t.check_guards(f"tensor {i}")
    return (y, mean, rstd, dx, dweight, dbias), tuple(clusters)


def check(emulator, op, rows, cols, dtype, param_dtype=None, with_weight=True, with_bias=True, resident_blocks=3,
          offset=0, ramp=0.0):
    """Emulated forward and backward against the float64 reference (the tolerances and gradient scales
    of tests/ops/test_layer_norm.py), and the saved statistics against their definitions. ramp: added
    to each row, rising from 0 to it along the row (parts of a row with different means). Returns the
    largest cluster the forward and the backward launched."""
    param_dtype = param_dtype or dtype
    with_bias = with_bias and op == "layer_norm"
    eps = 1e-5
    x, weight, bias = make_inputs((rows, cols), (cols,), dtype, param_dtype, with_weight, with_bias)
    x = (x.float() + torch.linspace(0, ramp, cols)).to(dtype)
    dy = torch.randn_like(x)
    (y, mean, rstd, dx, dw, db), clusters = emulated_norm(emulator, op, x, weight, bias, dy, eps, resident_blocks,
                                                          offset)

    leaves = [None if t is None else t.double().requires_grad_() for t in (x, weight, bias)]
    ref = run_reference(op, leaves[0], (cols,), *leaves[1:], eps=eps)
    ref.backward(dy.double())
    x64, dy64 = x.double(), dy.double()
    scales = (0.0, input_grad_scale(op, x64, None if weight is None else weight.double(), dy64, eps),
              weight_grad_scale(op, x64, dy64, eps), 0.0)
    tol = TOLERANCE[dtype]
    refs = (ref, *(None if leaf is None else leaf.grad for leaf in leaves))
    for name, ours, theirs, scale in zip(("output", "dx", "dweight", "dbias"), (y, dx, dw, db), refs, scales):
        if theirs is None:
            assert ours is None, f"{name} computed without its tensor"
            continue
        err = rel_error(ours, theirs, scale)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g}"
    centered = x64 if op == "rms_norm" else x64 - x64.mean(-1, keepdim=True)
    rstd64 = (centered.square().mean(-1) + eps).rsqrt()
    assert rel_error(rstd, rstd64) <= TOLERANCE[torch.float32], "rstd"
    if mean is not None:
        assert (mean.double() - x64.mean(-1)).abs().max() <= 1e-5 * (1 + x64.abs().max()), "mean"
    return clusters


# (rows, cols): 1 column, odd N, both sides of the backward's layout thresholds (BwdLayout: a warp per
# row up to 512, four rows a block; two rows of 2 warps a block up to 1024; up to 16 warps a row).
SHAPES = [(1, 1), (3, 7), (9, 500), (37, 1000), (6, 1025), (3, 4097)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_forward_and_gradients(emulator, op, dtype, shape):
    check(emulator, op, *shape, dtype)


@pytest.mark.parametrize("shape", [(2, 8192), (3, 8193)], ids=str)
@pytest.mark.parametrize("op,dtype", [("layer_norm", torch.float32), ("rms_norm", torch.bfloat16)], ids=str)
def test_single_chunk_limit(emulator, op, dtype, shape):
    """The widest rows the persistent backward takes (16 warps, dw and db in registers), and one column
    more: the chunk-walking kernel, dw and db in its shared memory. (512 emulated threads a block: the
    costliest shapes here, hence two of the six dtype and op pairs.)"""
    check(emulator, op, *shape, dtype)


@pytest.mark.parametrize("op,with_weight,with_bias", [
    ("layer_norm", False, False), ("layer_norm", True, False), ("layer_norm", False, True),
    ("rms_norm", False, False),
])
def test_optional_parameters(emulator, op, with_weight, with_bias):
    check(emulator, op, 33, 300, torch.float32, with_weight=with_weight, with_bias=with_bias)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_half_input_fp32_parameters(emulator, op):
    check(emulator, op, 21, 777, torch.bfloat16, param_dtype=torch.float32)


@pytest.mark.parametrize("shape", [(9, 1000), (2, 9000)], ids=str)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_misaligned_storage(emulator, op, shape):
    """Every tensor one element past a 16-byte boundary: the element-wise path."""
    check(emulator, op, *shape, torch.float16, offset=1)


@pytest.mark.parametrize("rows,resident_blocks", [(1, 1), (50, 1), (50, 2), (203, 5), (203, 64)])
def test_persistent_row_loop(emulator, rows, resident_blocks):
    """The backward's grid is one wave of persistent blocks (norm_bwd_num_partials): one block walking
    every row, a few walking many, more blocks than row groups; the last row group partly past M."""
    check(emulator, "layer_norm", rows, 520, torch.float32, resident_blocks=resident_blocks)


def test_long_rows(emulator):
    """Three chunks a row."""
    check(emulator, "layer_norm", 1, 16500, torch.bfloat16)


@contextlib.contextmanager
def shared_limit(emulator, limit):
    """The emulated device's dynamic shared memory a block (dynamic_shared_limit) set to ``limit``
    bytes inside the block, an H100's 227 KB after it; the largest dynamic shared memory a launch asked
    for is reset on entry."""
    emulator.emu_set_shared_limit(limit)
    emulator.emu_largest_shared_launched()
    try:
        yield
    finally:
        emulator.emu_set_shared_limit(227 * 1024)


# (op, rows, cols, dtype, param dtype, weight, bias, resident blocks): rows longer than a chunk, not
# split, whose dw, db accumulators fit the block's shared memory: persistent blocks walking 1, 2 and 5
# rows, one block walking them all, both row sums' dtypes; dw alone (RMSNorm, LayerNorm without bias),
# db alone; an unaligned row length (the element-wise path, fp16).
SHARED_CASES = [("layer_norm", 10, 8200, torch.float32, None, True, True, 3),
                ("layer_norm", 5, 12000, torch.bfloat16, torch.float32, True, True, 1),
                ("layer_norm", 2, 9001, torch.float16, None, True, True, 4),
                ("rms_norm", 6, 16392, torch.bfloat16, None, True, False, 2),
                ("layer_norm", 3, 8500, torch.float32, None, True, False, 2),
                ("layer_norm", 3, 8500, torch.float32, None, False, True, 2)]


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-{str(c[3])[6:]}-w{c[5]:d}b{c[6]:d}")
def test_long_rows_parameter_sums_in_shared_memory(emulator, case):
    """Rows past a chunk, where no cluster split runs (no clusters here): G persistent blocks walk the
    rows, adding dw and db into fp32 accumulators for the whole row in their dynamic shared memory (8N
    bytes for both, rounded up to whole 16-byte vectors: poisoned with NaN before each block, so every
    column must be zeroed first), each written to its workspace row. Forward and gradients against
    float64, and the launch asked for exactly those bytes."""
    op, rows, cols, dtype, param_dtype, with_weight, with_bias, resident_blocks = case
    with shared_limit(emulator, 227 * 1024):
        check(emulator, op, rows, cols, dtype, param_dtype, with_weight, with_bias, resident_blocks=resident_blocks,
              ramp=8.0)
        vec = 16 // dtype.itemsize
        padded_cols = -(-cols // vec) * vec
        assert emulator.emu_largest_shared_launched() == (with_weight + with_bias) * padded_cols * 4


@pytest.mark.parametrize("op,cols,limit", [("layer_norm", 16392, 16392 * 8 - 4), ("rms_norm", 8200, 8200 * 4 - 16),
                                           ("layer_norm", 20000, 0)])
def test_long_rows_parameter_sums_that_do_not_fit(emulator, op, cols, limit):
    """Where the accumulators would not fit (sm_86 / sm_89's 99 KB a block, or a row too long), a block
    takes a row and norm_bwd_param_kernel reads x and dy again for dw and db: no dynamic shared memory."""
    with shared_limit(emulator, limit):
        check(emulator, op, 3, cols, torch.bfloat16, resident_blocks=2)
        assert emulator.emu_largest_shared_launched() == 0


# (op, rows, cols, dtype, param dtype, weight, bias): rows of 2, 3 and 16 chunks of 8192 (the forward's
# and the backward's chunk), the last part of one; fp32, 16-bit, 16-bit with fp32 parameters; without
# parameters. The rows rise along their length (ramp 8): each block's part has its own mean, which
# Chan's merge must weigh in.
SPLIT_CASES = [("layer_norm", 2, 16392, torch.bfloat16, None, True, True),
                   ("layer_norm", 1, 20000, torch.float32, None, True, False),
                   ("layer_norm", 1, 16 * 8192, torch.float16, torch.float32, True, True),
                   ("rms_norm", 2, 24576, torch.bfloat16, None, True, False),
                   ("rms_norm", 1, 16400, torch.float32, None, False, False)]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-{str(c[3])[6:]}")
def test_rows_split_over_a_cluster(emulator, case):
    """On a device with clusters, a vector-aligned row longer than a chunk (8192 elements) is split over
    a cluster of ceil(N / 8192) CTAs, a chunk each. Forward: their statistics merged through each
    other's shared memory (mean and rstd written once, by the first). Backward: their row sums combined
    the same way, one persistent cluster walking both rows, each CTA's dw, db partial sums its chunk's
    columns. Forward and gradients against float64, and both passes were cluster launches."""
    op, rows, cols, dtype, param_dtype, with_weight, with_bias = case
    with cluster_device(emulator):
        clusters = check(emulator, op, rows, cols, dtype, param_dtype, with_weight, with_bias, ramp=8.0)
    assert clusters == (-(-cols // 8192),) * 2


@pytest.mark.parametrize("rows,resident_blocks", [(9, 6), (10, 6), (3, 64)])
def test_split_rows_persistent_clusters(emulator, rows, resident_blocks):
    """The split backward's grid is one wave of persistent clusters (resident_clusters: here the
    resident blocks in clusters of two), at most one per kMinRowsPerGroup rows: three clusters walking
    three rows each; three walking four, three and three (the loop's bound is the cluster's, the same
    for its CTAs); one walking all three rows."""
    with cluster_device(emulator):
        clusters = check(emulator, "layer_norm", rows, 12000, torch.bfloat16, resident_blocks=resident_blocks,
                         ramp=8.0)
    assert clusters == (2, 2)


@pytest.mark.parametrize("offset,switch", [(1, True), (0, False)], ids=["misaligned", "switched off"])
def test_rows_walked_where_not_split(emulator, offset, switch):
    """Misaligned rows (no split instance) and FASTTX_CUDA_CLUSTERS=0 walk their chunks on a device
    with clusters too, forward and backward."""
    with cluster_device(emulator), cuda_clusters(switch):
        clusters = check(emulator, "layer_norm", 2, 16400, torch.float16, offset=offset)
    assert clusters == (1, 1)


def test_parameter_gradients_are_deterministic(emulator):
    x, weight, bias = make_inputs((70, 520), (520,), torch.float32, torch.float32, True, True)
    dy = torch.randn_like(x)
    runs = [emulated_norm(emulator, "layer_norm", x, weight, bias, dy, 1e-5, 3)[0] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs) if a is not None)


def test_params_are_set_by_field_name(emulator):
    """A missing or unknown field fails loudly, launching nothing."""
    fields = dict(is_rms=1, input_dtype=0, param_dtype=0, rows=1, cols=4, x=0, weight=0, bias=0, y=0, mean=0,
                  rstd=0, eps=1e-5)
    for message, given in {"field 'eps' not given": {k: v for k, v in fields.items() if k != "eps"},
                           "unknown field 'dy'": {**fields, "dy": 0}}.items():
        with pytest.raises(ValueError, match=message):
            call(emulator.emu_norm_fwd, given)
