"""LayerNorm and RMSNorm (one kernel file per backend holds both): forward, every gradient and the
saved statistics against the float64 reference, for every backend that runs here."""

import math
import os
import pathlib
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx import _ops, reference
from fasttx._extension import cuda_clusters
from fasttx.testing import TOLERANCE, assert_close, rel_error

from ..conftest import DEVICE, runnable_backends

BACKENDS = runnable_backends(op="layer_norm")  # rms_norm ships with it in every backend
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OPS = ["layer_norm", "rms_norm"]
# (rows, hidden): 1 row / 1 column, odd sizes, both sides of the kernels' layout thresholds
# (warp / block per row at 1024, one chunk at 8192), rows past the single-block limits, and short rows
# that share a Triton forward program (64 rows of 16, 4 of 100, 2 of 300 columns a program).
SHAPES = [(1, 1), (3, 7), (257, 1000), (4, 1024), (4, 1025), (5, 4097), (3, 8192), (3, 8193), (2, 20000),
          (64, 16), (12, 100), (6, 300)]


def run(op, x, normalized_shape, weight, bias, backend, eps=1e-5):
    if op == "layer_norm":
        return fasttx.layer_norm(x, normalized_shape, weight, bias, eps, backend=backend)
    return fasttx.rms_norm(x, normalized_shape, weight, eps, backend=backend)


def run_reference(op, x, normalized_shape, weight, bias, eps=1e-5):
    if op == "layer_norm":
        return reference.layer_norm(x, normalized_shape, weight, bias, eps)
    return reference.rms_norm(x, normalized_shape, weight, eps)


def input_grad_scale(op, x64, weight64, dy64, eps=1e-5):
    """||g * rstd||, g = dy * weight: the size of the terms the input gradient is a difference of."""
    centered = x64 - x64.mean(-1, keepdim=True) if op == "layer_norm" else x64
    rstd = (centered.square().mean(-1, keepdim=True) + eps).rsqrt()
    g = dy64 * weight64 if weight64 is not None else dy64
    return (g * rstd).norm().item()


def weight_grad_scale(op, x64, dy64, eps=1e-5):
    """||dy * x * rstd||: LayerNorm's weight gradient sums dy * (x - mean) * rstd, and x - mean
    cancels (to exactly 0 with one column), so its rounding is judged against the uncentred terms
    (torch's native kernel computes x * rstd - mean * rstd). RMSNorm's has no cancellation: 0."""
    if op != "layer_norm":
        return 0.0
    centered = x64 - x64.mean(-1, keepdim=True)
    rstd = (centered.square().mean(-1, keepdim=True) + eps).rsqrt()
    return (dy64 * x64 * rstd).norm().item()


def forward_backward(fn, op, tensors, normalized_shape, dy, convert=lambda t: t):
    """Output and input/parameter gradients of ``fn`` on fresh leaves made from ``tensors``."""
    leaves = [None if t is None else convert(t.detach()).requires_grad_() for t in tensors]
    out = fn(op, leaves[0], normalized_shape, *leaves[1:])
    out.backward(convert(dy))
    return out, [None if leaf is None else leaf.grad for leaf in leaves]


def make_inputs(shape, normalized_shape, dtype, param_dtype, with_weight, with_bias):
    x = torch.randn(shape, dtype=dtype, device=DEVICE) * 2 + 0.5  # mean and variance not 0 / 1
    weight = 1 + 0.5 * torch.randn(normalized_shape, dtype=param_dtype, device=DEVICE) if with_weight else None
    bias = 0.5 * torch.randn(normalized_shape, dtype=param_dtype, device=DEVICE) if with_bias else None
    return x, weight, bias


def check_against_float64(op, x, normalized_shape, weight, bias, backend, tol_dtype):
    """Output and the gradient of every input vs the float64 reference on the same values."""
    bias = bias if op == "layer_norm" else None  # RMSNorm has none
    run_backend = lambda *args: run(*args, backend=backend)  # noqa: E731
    dy = torch.randn_like(x)
    tensors = (x, weight, bias)
    out, grads = forward_backward(run_backend, op, tensors, normalized_shape, dy)
    out64, grads64 = forward_backward(run_reference, op, tensors, normalized_shape, dy, torch.Tensor.double)
    assert out.dtype == x.dtype
    assert_close(out, out64, tol_dtype, "output")
    hidden = math.prod(normalized_shape)
    rows = lambda t: t.double().reshape(-1, hidden)  # noqa: E731
    scales = (input_grad_scale(op, rows(x), None if weight is None else weight.double().reshape(-1), rows(dy)),
              weight_grad_scale(op, rows(x), rows(dy)), 0.0)
    for name, tensor, grad, grad64, scale in zip(("input", "weight", "bias"), tensors, grads, grads64, scales):
        if tensor is not None:
            assert grad is not None and grad.dtype == tensor.dtype, f"grad of {name}"
            assert_close(grad, grad64, tol_dtype, f"grad of {name}", scale)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_forward_and_gradients(op, backend, dtype, shape):
    x, weight, bias = make_inputs(shape, shape[-1:], dtype, dtype, True, op == "layer_norm")
    check_against_float64(op, x, shape[-1:], weight, bias, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,with_weight,with_bias", [
    ("layer_norm", False, False), ("layer_norm", True, False), ("layer_norm", False, True),
    ("rms_norm", False, False),
])
def test_optional_parameters(op, backend, with_weight, with_bias):
    x, weight, bias = make_inputs((33, 300), (300,), torch.float32, torch.float32, with_weight, with_bias)
    check_against_float64(op, x, (300,), weight, bias, backend, torch.float32)


@pytest.mark.parametrize("hidden", [65536, 131072])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_large_hidden_size(op, backend, hidden):
    x, weight, bias = make_inputs((2, hidden), (hidden,), torch.float16, torch.float16, True, True)
    check_against_float64(op, x, (hidden,), weight, bias, backend, torch.float16)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the CUDA kernels run on a GPU")
@pytest.mark.parametrize("clusters", [True, False], ids=["split", "walked"])
@pytest.mark.parametrize("shape", [(2, 20000), (2, 131072), (333, 24576)], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_cuda_long_rows(op, shape, clusters):
    """The CUDA kernels' rows past their 8192-element chunk. On sm_90, by default, split over a cluster
    of blocks, a chunk each (333 rows: more than the backward's persistent clusters, each walking
    several); with the split switched off (FASTTX_CUDA_CLUSTERS=0), walked chunk by chunk by one block,
    as on GPUs without clusters: the backward's blocks persistent with dw, db in their shared memory
    where those fit (an H100's 227 KB: 20000 and 24576 columns), a second kernel for dw, db otherwise
    (131072)."""
    x, weight, bias = make_inputs(shape, shape[-1:], torch.bfloat16, torch.bfloat16, True, True)
    with cuda_clusters(clusters):
        check_against_float64(op, x, shape[-1:], weight, bias, "cuda", torch.bfloat16)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the CUDA kernels run on a GPU")
@pytest.mark.parametrize("op,dtype,cols,with_weight,with_bias", [
    ("layer_norm", torch.float32, 10001, True, True), ("layer_norm", torch.float16, 12000, False, True),
    ("layer_norm", torch.bfloat16, 9000, True, False), ("rms_norm", torch.float32, 10001, True, False),
    ("rms_norm", torch.bfloat16, 16384, True, False)], ids=str)
def test_cuda_long_rows_parameter_sums_in_shared_memory(op, dtype, cols, with_weight, with_bias):
    """Rows past 8192 columns walked, not split (FASTTX_CUDA_CLUSTERS=0; an odd row length never splits):
    the backward's persistent blocks keep dw, db in their shared memory, walking several of the 300 rows
    each; one gradient or both, every dtype."""
    x, weight, bias = make_inputs((300, cols), (cols,), dtype, dtype, with_weight, with_bias)
    with cuda_clusters(False):
        check_against_float64(op, x, (cols,), weight, bias, "cuda", dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_misaligned_storage(op, backend):
    """Contiguous rows starting 2 bytes past a 16-byte boundary: no vectorized path may assume
    alignment."""
    rows, hidden = 9, 1000
    storage = torch.randn(rows * hidden + 1, device=DEVICE).to(torch.float16)
    x = storage[1:].view(rows, hidden)
    _, weight, bias = make_inputs((1,), (hidden,), torch.float16, torch.float16, True, True)
    weight = torch.cat([weight.new_ones(1), weight])[1:]
    check_against_float64(op, x, (hidden,), weight, bias, backend, torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_parameter_gradients_are_deterministic(op, backend):
    x, weight, bias = make_inputs((300, 520), (520,), torch.float32, torch.float32, True, True)
    dy = torch.randn_like(x)
    grads = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
        run(op, leaves[0], (520,), *leaves[1:], backend=backend).backward(dy)
        grads.append([t.grad for t in leaves if t.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_half_input_fp32_parameters(op, backend, with_weight):
    """The AMP layout: fp32 parameters, half activations; output in the input's dtype,
    parameter gradients in the parameters' dtype."""
    with_bias = op == "layer_norm"
    x, weight, bias = make_inputs((65, 777), (777,), torch.float16, torch.float32, with_weight, with_bias)
    check_against_float64(op, x, (777,), weight, bias, backend, torch.float16)


@pytest.mark.parametrize("weight_dtype,bias_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_input_mixed_parameters(backend, weight_dtype, bias_dtype):
    """Weight and bias each in the input's dtype or fp32, independently, as fasttx accepts them:
    torch's own layer_norm refuses these on CPU and CUDA alike, so the torch backend (as on CUDA
    with fp32 parameters) normalises in fp32 instead."""
    x, weight, bias = make_inputs((65, 777), (777,), torch.float16, torch.float32, True, True)
    check_against_float64("layer_norm", x, (777,), weight.to(weight_dtype), bias.to(bias_dtype), backend,
                          torch.float16)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "3d_two_normalized_dims"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_and_multidim(op, backend, layout):
    if layout == "transposed":
        x, normalized_shape = torch.randn(96, 40, device=DEVICE).t(), (96,)
    elif layout == "sliced":
        x, normalized_shape = torch.randn(30, 130, device=DEVICE)[::2, 1:129], (128,)
    else:
        x, normalized_shape = torch.randn(4, 6, 5, 9, device=DEVICE).transpose(1, 2), (6, 9)
    assert not x.is_contiguous()
    _, weight, bias = make_inputs((1,), normalized_shape, torch.float32, torch.float32, True, True)
    check_against_float64(op, x, normalized_shape, weight, bias, backend, torch.float32)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_saved_statistics_are_fp32_and_exact(backend):
    x = torch.randn(17, 1500, dtype=torch.bfloat16, device=DEVICE) * 3 + 1
    x64 = x.double()
    _, mean, rstd = _ops.op("layer_norm", "fwd", backend)(x, None, None, 1e-5)
    assert mean.dtype == rstd.dtype == torch.float32
    assert_close(mean, x64.mean(-1), torch.float32, "mean")
    assert_close(rstd, (x64.var(-1, unbiased=False) + 1e-5).rsqrt(), torch.float32, "rstd")
    (_, rms_rstd) = _ops.op("rms_norm", "fwd", backend)(x, None, 1e-5)
    assert_close(rms_rstd, (x64.square().mean(-1) + 1e-5).rsqrt(), torch.float32, "rms rstd")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_rms_norm_default_eps_is_torchs(backend, dtype):
    """eps=None as torch's op takes it, not as its docs say (finfo(input.dtype).eps): fp32's epsilon for
    every dtype computed in fp32, which for half inputs of small scale changes the result entirely."""
    x = (torch.randn(4, 64, device=DEVICE) * 3e-3).to(dtype)  # small: eps matters
    w = torch.randn(64, device=DEVICE).to(dtype)
    out = fasttx.rms_norm(x, (64,), w, backend=backend)
    ref = F.rms_norm(x.float(), (64,), w.float())  # fp32 input: fp32's epsilon, by any reading
    assert rel_error(F.rms_norm(x, (64,), w), ref) <= TOLERANCE[dtype], "torch changed its default eps"
    assert rel_error(out, ref) <= TOLERANCE[dtype]
    docs_eps = F.rms_norm(x.float(), (64,), w.float(), eps=torch.finfo(dtype).eps)
    assert dtype == torch.float32 or rel_error(docs_eps, ref) > 10 * TOLERANCE[dtype]  # the case tells them apart


def test_rms_norm_default_eps_in_float64_is_float64s():
    x = torch.randn(4, 64, dtype=torch.float64, device=DEVICE) * 1e-5
    torch.testing.assert_close(fasttx.rms_norm(x, (64,), backend="torch"), F.rms_norm(x, (64,)), rtol=1e-12, atol=0)
    torch.testing.assert_close(reference.rms_norm(x, (64,)), F.rms_norm(x, (64,)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows(backend):
    x = torch.randn(0, 5, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(16, device=DEVICE, requires_grad=True)
    out = fasttx.layer_norm(x, (16,), w, None, backend=backend)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("input_dtype,param_dtype", [(torch.float32, torch.float64), (torch.float32, torch.float16),
                                                     (torch.float16, torch.bfloat16), (torch.float64, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("param", ["weight", "bias"])
def test_layer_norm_refuses_parameter_dtypes_torch_refuses(param, input_dtype, param_dtype):
    """Parameters in the input's dtype, or fp32 with half input (the AMP layout): anything else
    raises, as F.layer_norm does, on every backend."""
    x = torch.randn(3, 8, device=DEVICE).to(input_dtype)
    params = {param: torch.randn(8, device=DEVICE).to(param_dtype)}
    with pytest.raises(RuntimeError):
        F.layer_norm(x, (8,), **params)
    for backend in BACKENDS:
        with pytest.raises(RuntimeError, match=f"fasttx.layer_norm: {param} must have dtype .*got {param_dtype}"):
            fasttx.layer_norm(x, (8,), **params, backend=backend)


def test_triton_forward_short_rows_share_programs():
    """Rows of < 1024 columns: a forward program normalises a tile of a power of two of them dividing the
    row count, up to 1024 elements (8 a thread, as one row of 1024 at 4 warps); longer rows one a program."""
    from fasttx.triton_kernels import layer_norm as kernels

    assert kernels._fwd_config(64, 16) == dict(BLOCK_N=16, SINGLE_BLOCK=True, ROWS=64, num_warps=4)
    # 12 rows: 4 a program (8 do not divide 12), 512 elements at 2 warps.
    assert kernels._fwd_config(12, 100) == dict(BLOCK_N=128, SINGLE_BLOCK=True, ROWS=4, num_warps=2)
    assert kernels._fwd_config(6, 300) == dict(BLOCK_N=512, SINGLE_BLOCK=True, ROWS=2, num_warps=4)
    assert kernels._fwd_config(257, 16)["ROWS"] == 1  # odd: one row a program
    assert kernels._fwd_config(256, 1024) == dict(BLOCK_N=1024, SINGLE_BLOCK=True, ROWS=1, num_warps=4)
    assert kernels._fwd_config(256, 20000) == dict(BLOCK_N=16384, SINGLE_BLOCK=False, ROWS=1, num_warps=16)


def test_triton_backward_steps_through_short_rows_a_tile_at_a_time():
    """Rows of < 2048 columns: a backward step reduces a [ROWS, BLOCK_N] tile of 2048 elements at 8
    warps (what one row of 2048 is), and a program's rows are a multiple of ROWS."""
    from fasttx.triton_kernels import layer_norm as kernels
    from fasttx.triton_kernels import utils

    def consts(n, dtype=torch.bfloat16):
        x = torch.empty(1, n, dtype=dtype)
        c = kernels._bwd_consts(x, x, None, False, False)
        return c["BLOCK_N"], c["ROWS"], c["num_warps"], c["STAGES"]

    assert consts(512) == (512, 4, 8, 3)
    assert consts(1000) == (1024, 2, 8, 3)
    assert consts(2048) == (2048, 1, 8, 3)
    assert consts(4096) == (4096, 1, 16, 3)
    assert consts(5000) == (8192, 1, 16, 3)
    assert consts(20000) == (2048, 1, 8, 3)
    assert consts(16, torch.float32) == (16, 128, 8, 3)  # fp32: 16 KB a step, two buffers in 64 KB
    with mock.patch.object(utils, "_cuda_property", lambda index, name: {"multi_processor_count": 132}[name]):
        assert utils.persistent_split(16384, torch.device("cuda", 0), 2, row_multiple=4) == (256, 64)
        assert utils.persistent_split(10, torch.device("cuda", 0), 2, row_multiple=4) == (3, 4)
    assert utils.persistent_split(257, torch.device("cpu"), row_multiple=4) == (4, 68)


@pytest.mark.parametrize("regs, warps, shared, expected", [
    (64, 16, 32856, 2),  # the bf16 backward at 4096: registers allow two (64 x 512 x 2 = 64K)
    (90, 16, 16384, 1),  # 90 registers at 16 warps (the two passes' former 8192-column blocks): one an SM
    (62, 8, 57344, 4),  # the two passes' pipelined 2048-column blocks at 16384 (bf16, Triton 3.8): four
    (63, 4, 8232, 8),  # 63 registers round up to 64 a thread (256 a warp): eight 4-warp programs
    (32, 4, 120000, 1),  # shared memory the limit
    (16, 1, 0, 32),  # the hardware's cap on resident programs
])
def test_programs_per_sm(regs, warps, shared, expected):
    """The persistent backward's grid is one wave: the programs an SM holds, from the compiled kernel's
    registers and shared memory (H100 / H200's limits here; the GPU run uses the real kernel's)."""
    from types import SimpleNamespace
    from unittest import mock

    from fasttx.triton_kernels import utils

    kernel = SimpleNamespace(_init_handles=lambda: None, n_regs=regs,
                             metadata=SimpleNamespace(num_warps=warps, shared=shared))
    sm90 = SimpleNamespace(warp_size=32, max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
                           shared_memory_per_multiprocessor=233472)
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device: sm90):
        assert utils.programs_per_sm(kernel, torch.device("cuda", 0)) == expected
    with mock.patch.object(utils, "_cuda_property", lambda index, name: {"multi_processor_count": 132}[name]):
        assert utils.persistent_split(16384, torch.device("cuda", 0), expected) == (
            math.ceil(16384 / math.ceil(16384 / (132 * expected))), math.ceil(16384 / (132 * expected)))


def test_host_twins_of_tritons_helpers_agree_with_them():
    """triton_kernels.utils.cdiv / next_power_of_2 (the launchers' host-side copies of Triton's, ~2 us
    cheaper a call) give Triton's results."""
    import triton

    from fasttx.triton_kernels import utils

    for n in [*range(0, 1100), 4095, 4096, 4097, 2**31 - 1, 2**31, 2**40 + 3]:
        assert utils.next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 128, 1000):
            assert utils.cdiv(n, d) == triton.cdiv(n, d), (n, d)


# Without TRITON_INTERPRET and without a GPU: Triton's driver replaced by one that names sm_90 as the
# target, all that warmup needs to bind and compile (exit status 3: this Triton's internals moved).
_WARMUP_RETURNS_THE_LAUNCHED_KERNEL = r"""
import sys, torch
try:
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
from fasttx.triton_kernels import layer_norm as ln

class Sm90:
    def get_current_target(self): return GPUTarget("cuda", 90, 32)
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0

driver.set_active(Sm90())
M, N = 1000, 1024
x, w, stats = torch.empty(M, N, dtype=torch.bfloat16), torch.empty(N, dtype=torch.bfloat16), torch.empty(M)
consts = ln._bwd_consts(x, x, w, True, False)
before = ln._bwd_kernel_for(x, x, w, stats, stats, x, True, consts)
partial = torch.empty(264, N)
for rows in (1, 16, 63):  # what Triton specialises ints on: == 1, divisible by 16, neither
    launched = ln._norm_bwd_kernel.warmup(x, x, w, stats, stats, x, partial, partial, M, N, rows, grid=(1,), **consts)
    assert launched is before, f"rows_per_program={rows} runs another kernel than the grid was sized for"
"""


def test_backward_grid_is_sized_by_the_kernel_it_launches():
    """The launcher sizes the backward's grid by a kernel compiled before the grid is known (stand-in
    partial buffers, rows_per_program 1): it must be the kernel the launch then runs, whatever its
    rows_per_program. Compiles for sm_90 with Triton's own compiler: no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _WARMUP_RETURNS_THE_LAUNCHED_KERNEL], capture_output=True, text=True,
                          env=env, cwd=pathlib.Path(__file__).parents[2], timeout=600)
    if done.returncode == 3:
        pytest.skip(f"this Triton lacks what the check uses: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-4000:]
