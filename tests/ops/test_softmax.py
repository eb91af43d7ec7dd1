"""Fused softmax(scale * x + mask): output, input gradient and float-mask gradient against the
float64 reference, for every backend that runs here, every mask kind, causal, any dim."""

import sys

import pytest
import torch

import fasttx
from fasttx import _ops, reference
from fasttx._extension import cuda_clusters
from fasttx.testing import assert_close

from ..conftest import DEVICE, OpRecorder, runnable_backends

BACKENDS = runnable_backends(op="softmax")
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]  # those with fasttx::softmax_{fwd,bwd}_<backend> ops
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LONG_ROW = 262144  # beyond every backend's single-pass limit


def check(x, backend, dim=-1, scale=None, mask=None, is_causal=False, dtype=None, tol_dtype=None):
    """Compare output and gradients (input, float mask) with the float64 reference; return output."""
    mask_needs_grad = mask is not None and mask.is_floating_point()
    leaves = [x.detach().requires_grad_(), mask.detach().requires_grad_() if mask_needs_grad else mask]
    out = fasttx.softmax(leaves[0], dim, scale=scale, mask=leaves[1], is_causal=is_causal, dtype=dtype, backend=backend)
    assert out.shape == x.shape and out.dtype == (dtype or x.dtype)
    dy = torch.randn_like(out)
    out.backward(dy)
    compare_with_reference(x, mask, scale, is_causal, dy, out, leaves[0].grad, leaves[1].grad if mask_needs_grad else None,
                           dim, tol_dtype)
    return out


def compare_with_reference(x, mask, scale, is_causal, dy, out, grad_x, grad_mask, dim=-1, tol_dtype=None):
    """The output and the gradients of softmax(scale * x + mask) for the output gradient dy, against
    the float64 reference: grad_mask for a float mask (None for none or bool)."""
    mask_needs_grad = mask is not None and mask.is_floating_point()
    leaves64 = [x.detach().double().requires_grad_(),
                mask.detach().double().requires_grad_() if mask_needs_grad else mask]
    out64 = reference.softmax(leaves64[0], dim, scale, leaves64[1], is_causal)
    out64.backward(dy.double())
    dtypes = (x.dtype, out.dtype, mask.dtype if mask_needs_grad else x.dtype)
    tol_dtype = tol_dtype or (torch.bfloat16 if torch.bfloat16 in dtypes else
                              torch.float16 if torch.float16 in dtypes else torch.float32)
    assert_close(out, out64, tol_dtype, "output")
    # dz = y * (dy - sum(y * dy)) is a difference of terms of size |y * dy|: judged against them.
    grad_scale = (out64 * dy.double()).norm().item()
    assert_close(grad_x, leaves64[0].grad, tol_dtype, "grad of input", grad_scale * abs(scale or 1.0))
    assert grad_x.dtype == x.dtype
    if mask_needs_grad:
        assert_close(grad_mask, leaves64[1].grad, tol_dtype, "grad of mask", grad_scale)
        assert grad_mask.dtype == mask.dtype


def logits(*shape, dtype=torch.float32):
    return (torch.randn(shape, device=DEVICE) * 3).to(dtype)


@pytest.mark.parametrize("cols", [1, 3, 1000, 4097], ids=lambda c: f"cols{c}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_row_lengths(backend, dtype, cols):
    check(logits(2, 3, 5 if cols < 1000 else 2, cols, dtype=dtype), backend, scale=0.7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_long_row_online_kernel(backend, dtype):
    # Not fp16: probabilities and gradients of ~1/262144 are subnormal there, a few bits each,
    # whoever computes them; bf16 has the exponent range to hold them.
    check(logits(2, LONG_ROW, dtype=dtype), backend, scale=0.125)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_long_rows_with_masks_online_kernel(backend, kind):
    """The loop path (rows past every single-pass limit, of an odd length) with a mask read block by
    block: masked-out columns in every block, and a row with nothing kept (0, not NaN)."""
    rows, cols = 3, 16411
    keep = torch.rand(rows, cols, device=DEVICE) > 0.3
    keep[1] = False
    mask = keep if kind == "bool" else torch.randn(rows, cols, device=DEVICE).masked_fill(~keep, float("-inf"))
    out = check(logits(rows, cols), backend, scale=0.4, mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the CUDA kernels run on a GPU")
@pytest.mark.parametrize("clusters", [True, False], ids=["clusters", "no clusters"])
@pytest.mark.parametrize("cols,dtype,mask", [(16385, torch.float32, None), (40000, torch.bfloat16, "bool"),
                                             (LONG_ROW, torch.bfloat16, None)], ids=str)
def test_cuda_long_rows_with_and_without_clusters(clusters, cols, dtype, mask):
    """The CUDA kernels' rows past one block's 16384 elements: on sm_90 split over a thread block
    cluster of 2, 3 and 16 blocks (the default), or walked chunk by chunk by one block
    (FASTTX_CUDA_CLUSTERS=0, as on other GPUs, where both cases run the walk); forward and backward."""
    keep = None if mask is None else torch.rand(3, cols, device=DEVICE) > 0.3
    with cuda_clusters(clusters):
        check(logits(3, cols, dtype=dtype) + torch.linspace(0, 20, cols, device=DEVICE).to(dtype), "cuda",
              scale=0.5, mask=keep)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the CUDA kernels run on a GPU")
@pytest.mark.parametrize("clusters", [True, False], ids=["clusters", "no clusters"])
def test_cuda_causal_limits_past_the_first_chunk(clusters):
    """Causal rows 16384 and on keep columns past the first 16384-element chunk: with a split their
    limit falls inside the second block's part (the first block's is whole), forward and backward."""
    queries = keys = 16400
    with cuda_clusters(clusters):
        out = check(logits(1, 1, queries, keys, dtype=torch.bfloat16), "cuda", scale=0.5, is_causal=True)
    assert (out[0, 0, -1] != 0).sum() > 16384  # the last row's kept columns reach into the second chunk


@pytest.mark.parametrize("variant", ["plain", "float_mask", "causal"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_between_the_one_block_limits(backend, variant):
    """Rows past MAX_BLOCK, within MAX_BLOCK_PLAIN_FWD (Triton): the plain forward holds the row in one
    block while its backward, and a masked or causal forward, loop over column blocks."""
    rows, cols = 12, 9001
    mask = torch.randn(rows, cols, device=DEVICE) if variant == "float_mask" else None
    mask = None if mask is None else mask.masked_fill(torch.rand(rows, cols, device=DEVICE) > 0.7, float("-inf"))
    out = check(logits(1, 1, rows, cols), backend, scale=0.4, mask=mask, is_causal=variant == "causal")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["bool_key_padding", "bool_2d", "float_2d_with_-inf", "float_full", "bool_full",
                                  "float64_2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_masks(backend, dtype, kind):
    batch, heads, queries, keys = 3, 2, 6, 37
    x = logits(batch, heads, queries, keys, dtype=dtype)
    if kind == "bool_key_padding":
        mask = torch.rand(batch, 1, 1, keys, device=DEVICE) > 0.3
        mask[1] = False  # a batch element with every key padded: fully masked rows
    elif kind == "bool_2d":
        mask = torch.rand(queries, keys, device=DEVICE) > 0.5
    elif kind == "float_2d_with_-inf":
        mask = torch.randn(queries, keys, device=DEVICE).to(dtype)
        mask[torch.rand(queries, keys, device=DEVICE) > 0.6] = float("-inf")
        mask[2] = float("-inf")  # one fully -inf row: 0, not NaN
    elif kind == "float_full":
        mask = torch.randn(batch, heads, queries, keys, device=DEVICE)
    elif kind == "float64_2d":  # a dtype no kernel reads: converted, and its gradient comes back in float64
        mask = torch.randn(queries, keys, device=DEVICE, dtype=torch.float64)
    else:
        mask = torch.rand(batch, heads, queries, keys, device=DEVICE) > 0.5
    out = check(x, backend, scale=0.3, mask=mask)
    assert torch.isfinite(out).all()


def _above(queries, keys):
    """(L, C) True past the causal limit (top-left aligned: column j > row i)."""
    return torch.arange(keys, device=DEVICE)[None, :] > torch.arange(queries, device=DEVICE)[:, None]


# (A, B, L, C): L < C, L > C, L = C, one row, C not a power of 2 (37: rows not vector-aligned; 48:
# the vector across the limit read whole), several rows a Triton program (16 columns).
CAUSAL_SHAPES = [(2, 3, 5, 9), (2, 3, 9, 5), (1, 2, 7, 7), (1, 1, 1, 40), (1, 2, 40, 37), (2, 1, 24, 48),
                 (2, 2, 32, 16)]


@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal(backend, dtype, shape):
    """Output and input gradient of causal rows; both exactly 0 past the limit."""
    x = logits(*shape, dtype=dtype).requires_grad_()
    out = fasttx.softmax(x, -1, scale=0.5, is_causal=True, backend=backend)
    dy = torch.randn_like(out)
    out.backward(dy)
    compare_with_reference(x, None, 0.5, True, dy, out, x.grad, None)
    above = _above(*shape[-2:])
    assert (out[..., above] == 0).all() and (x.grad[..., above] == 0).all()


@pytest.mark.parametrize("mask_kind", ["bool key padding", "float (L, C)"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_non_contiguous_with_masks(backend, mask_kind):
    """Causal over the last two dims of a transposed (non-contiguous) input, with a mask: the float
    mask's gradient is the backward at scale 1, causal too."""
    x = logits(2, 3, 37, 20).transpose(-1, -2)  # (2, 3, 20, 37)
    mask = (torch.rand(2, 1, 1, 37, device=DEVICE) > 0.3 if mask_kind.startswith("bool")
            else torch.randn(20, 37, device=DEVICE))
    check(x, backend, scale=0.7, mask=mask, is_causal=True)


@pytest.mark.parametrize("shape,dtype", [((2, 3, 9, 5), torch.float32), ((1, 2, 24, 48), torch.bfloat16),
                                         ((1, 1, 40, 37), torch.float16), ((2, 2, 32, 16), torch.float32),
                                         ((1, 1, 3, 16400), torch.float32)], ids=str)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_causal_backward_reads_nothing_past_the_limit(backend, shape, dtype):
    """The causal backward op (as the autograd calls it, on the forward's output) writes exact zeros
    past the limit, and y and dy there do not reach dx: NaN in y, NaN and huge values in dy past the
    limit give bit for bit the dx of the clean inputs. A kernel that read them into its dot product or
    its dx would not. (That it does not load them at all is in the compiled code: kernel_report.md.)"""
    fwd, bwd = _ops.op("softmax", "fwd", backend), _ops.op("softmax", "bwd", backend)
    y = fwd(logits(*shape, dtype=dtype), None, 0.5, True, dtype)
    dy = torch.randn_like(y)
    clean = bwd(y, dy, 0.5, True, dtype)
    above = _above(*shape[-2:]).expand(shape)
    y[above] = float("nan")
    dy[above] = torch.where(torch.rand(int(above.sum()), device=DEVICE) > 0.5, float("nan"),
                            torch.finfo(dtype).max).to(dtype)
    dx = bwd(y, dy, 0.5, True, dtype)
    assert (dx[above] == 0).all() and not dx[above].signbit().any()
    assert torch.equal(dx, clean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_long_rows_online_kernel(backend):
    # Rows beyond every backend's single-pass limit whose kept columns end in the first block: the
    # causal limit ends both the online pass and the loads (rounded up to a vector, not to the block).
    queries, keys = 20, 16400
    out = check(logits(1, 1, queries, keys), backend, scale=0.5, is_causal=True)
    assert (out[..., queries:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_out_logits_are_ignored_even_if_not_finite(backend, dtype):
    # The reference masks with masked_fill: whatever the logit under a masked-out entry, inf or NaN,
    # it does not reach the output. Kernels may read such entries (whole vectors across the causal
    # limit, the bool mask's False entries) but must not use them.
    queries, keys = 20, 37
    x = logits(2, 2, queries, keys, dtype=dtype)
    mask = torch.rand(2, 1, 1, keys, device=DEVICE) > 0.3
    cols = torch.arange(keys, device=DEVICE)
    above = (cols[None, :] > torch.arange(queries, device=DEVICE)[:, None]).expand(x.shape)
    x[above] = torch.where(torch.rand(int(above.sum()), device=DEVICE) > 0.5, float("inf"), float("nan")).to(dtype)
    x[(~mask).expand(x.shape)] = float("nan")
    out = check(x, backend, scale=0.5, mask=mask, is_causal=True)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_short_rows(backend):
    # Triton gives rows this short 64 to a program (a power of two dividing the 256 rows): a program's
    # rows span queries, heads and batch elements, each with its own mask row and causal limit.
    x = logits(2, 4, 32, 16)
    mask = torch.rand(2, 1, 32, 16, device=DEVICE) > 0.3
    check(x, backend, scale=0.5, mask=mask, is_causal=True)
    check(x, backend, mask=torch.randn(32, 16, device=DEVICE))


def test_triton_short_rows_share_programs():
    from fasttx.triton_kernels import softmax as kernels

    # 1024 elements a program at 4 warps, in rows of a power of two dividing the row count.
    assert kernels._launch_config(16, 256) == dict(BLOCK_C=16, SINGLE_BLOCK=True, ROWS=64, num_warps=4)
    assert kernels._launch_config(37, 80) == dict(BLOCK_C=64, SINGLE_BLOCK=True, ROWS=16, num_warps=4)
    assert kernels._launch_config(16, 255)["ROWS"] == 1
    assert kernels._launch_config(1024, 256) == dict(BLOCK_C=1024, SINGLE_BLOCK=True, ROWS=1, num_warps=4)
    assert kernels._launch_config(32768, 256)["ROWS"] == 1


def test_triton_one_block_limits():
    """One block up to 16384 columns for the plain forward, 8192 for the rest (the loop's 4096 beyond)."""
    from fasttx.triton_kernels import softmax as kernels

    for cols, plain, block in [(8192, False, 8192), (8193, False, 4096), (16384, False, 4096), (16384, True, 16384),
                               (16385, True, 4096)]:
        config = kernels._launch_config(cols, 4, plain_forward=plain)
        assert (config["BLOCK_C"], config["SINGLE_BLOCK"]) == (block, block >= cols), (cols, plain)


def test_triton_loop_path_keeps_the_rows_in_flight_within_l2():
    """The loop path's persistent grid on an H200-like device (132 SMs, 50 MB of L2): rows in flight within
    half the L2, one to two programs an SM, never more programs than rows."""
    from unittest import mock

    from fasttx.triton_kernels import utils

    cuda = torch.device("cuda", 0)
    h200 = {"multi_processor_count": 132, "L2_cache_size": 50 * 2**20}
    with mock.patch.object(utils, "_cuda_property", lambda index, name: h200[name]):
        bf16 = 2
        assert utils.l2_resident_programs(4096, 32768 * bf16, cuda) == 2 * 132  # 17 MB in flight
        assert utils.l2_resident_programs(4096, 65536 * bf16, cuda) == 132  # 17 MB; 4 an SM were 68 MB
        assert utils.l2_resident_programs(4096, 262144 * bf16, cuda) == 132  # at least one an SM
        assert utils.l2_resident_programs(10, 65536 * bf16, cuda) == 10
    assert utils.l2_resident_programs(7, 10**6, torch.device("cpu")) == 1


@pytest.mark.parametrize("variant", ["float_mask", "causal"])
def test_triton_loop_path_programs_walk_rows(monkeypatch, variant):
    """Fewer looping programs than rows, not dividing them (3 for 7): each program walks rows pid, pid + 3,
    ..., forward and backward, every row against the reference."""
    if "triton" not in BACKENDS:
        pytest.skip("needs the triton backend")
    from fasttx.triton_kernels import softmax as kernels

    monkeypatch.setattr(kernels, "l2_resident_programs", lambda n_rows, row_bytes, device: min(n_rows, 3))
    rows, cols = 7, 9001
    mask = None
    if variant == "float_mask":
        mask = torch.randn(rows, cols, device=DEVICE).masked_fill(torch.rand(rows, cols, device=DEVICE) > 0.7,
                                                                   float("-inf"))
    out = check(logits(1, 1, rows, cols), "triton", scale=0.4, mask=mask, is_causal=variant == "causal")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_with_key_padding_fully_masking_rows(backend):
    x = logits(2, 2, 6, 8)
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool, device=DEVICE)
    mask[0, ..., :3] = False  # query rows 0-2 of batch 0 keep nothing: causal leaves them keys <= row
    x = x.detach().requires_grad_()
    with torch.autograd.detect_anomaly():  # no NaN on the way either, in forward or backward
        out = fasttx.softmax(x, -1, mask=mask, is_causal=True, backend=backend)
        out.backward(torch.randn_like(out))
    assert (out[0, :, :3] == 0).all() and (x.grad[0, :, :3] == 0).all()
    assert torch.isfinite(x.grad).all()
    check(x, backend, mask=mask, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_do_not_overflow(backend, dtype):
    x = (torch.randn(4, 300, device=DEVICE) * 1e4).to(dtype)
    out = check(x, backend)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_dim_non_contiguous(backend, dim):
    x = logits(5, 6, 7).transpose(0, 2)  # (7, 6, 5), non-contiguous
    mask = torch.rand(7, 1, 5, device=DEVICE) > 0.2
    check(x, backend, dim=dim, scale=1.5, mask=mask)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 0, 4), (2, 3, 0)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend, shape, mask_kind):
    """No rows or no columns, with or without a mask: an empty output and empty gradients, nothing
    launched or reduced over the empty dim (a float mask's rows are read for -inf throughout)."""
    x = logits(*shape).requires_grad_()
    mask = {None: None, "bool": torch.rand(shape, device=DEVICE) > 0.5,
            "float": torch.randn(shape, device=DEVICE).requires_grad_()}[mask_kind]
    out = fasttx.softmax(x, -1, mask=mask, backend=backend)
    assert out.shape == shape and out.dtype == x.dtype
    out.sum().backward()
    assert x.grad.shape == shape
    if mask_kind == "float":
        assert mask.grad.shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_and_zero_dim_inputs(backend):
    check(logits(9), backend)
    check(logits(1), backend)
    scalar = fasttx.softmax(torch.tensor(3.0, device=DEVICE), 0, backend=backend)
    assert scalar.shape == () and scalar.item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_dtype_and_autocast(backend):
    x = logits(4, 50, dtype=torch.bfloat16)
    check(x, backend, dtype=torch.float32, tol_dtype=torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):  # torch's policy: fp32 on CUDA, as-is on CPU
        expected = torch.float32 if DEVICE == "cuda" else torch.bfloat16
        assert fasttx.softmax(x, -1, backend=backend).dtype == torch.softmax(x, -1).dtype == expected
        assert fasttx.softmax(x, -1, dtype=torch.bfloat16, backend=backend).dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_narrower_output_dtype_rounds_the_output_once(backend, dtype):
    """fp32 input, 16-bit ``dtype``: the softmax of the fp32 logits, rounded once to ``dtype`` (within an ulp:
    the fp32 arithmetic may tip a rounding). torch.softmax(x, dtype=...) rounds the logits to ``dtype`` first,
    an error of ~|logit| ulps of the output: at logits of +-20 that fails this by far."""
    x = logits(4, 300) * 5
    got = fasttx.softmax(x, -1, dtype=dtype, backend=backend)
    expected = reference.softmax(x.double(), -1)
    assert got.dtype == dtype
    ulp = torch.finfo(dtype).eps  # relative, at most
    bound = expected.abs() * ulp + torch.finfo(dtype).tiny  # (subnormal outputs, which may flush to 0: absolute)
    excess = (got.double() - expected).abs() - bound
    assert excess.max() <= 0, f"off by more than an ulp of {dtype}: {excess.max():.3g} over"


@pytest.mark.parametrize("autocast", [False, True])
def test_matches_torch_softmax(autocast):
    """Without a scale, mask, causal masking or another output dtype, and where "auto" runs torch, the
    call is torch.softmax's alone: the same ops dispatched, nothing of fasttx's host work around it,
    under autocast too (torch's policy for softmax is fasttx's)."""
    x = logits(3, 4, 10, dtype=torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        for dim, dtype in ((0, None), (1, None), (2, None), (2, torch.bfloat16)):
            with OpRecorder() as ours:
                got = fasttx.softmax(x, dim, dtype=dtype)
            with OpRecorder() as theirs:
                expected = torch.softmax(x, dim, dtype=dtype)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            assert ours.ops == theirs.ops


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_an_fp32_autocast_policy_leaves_float64_input(backend, monkeypatch):
    """torch's autocast policy for softmax (fp32 on CUDA) sets no dtype for float64 input, nor does
    fasttx's: with a mask (fasttx's own path, not torch.softmax), output float64, equal to the
    reference. The policy is made CPU's here, where torch's own leaves softmax as it is."""
    monkeypatch.setattr(sys.modules["fasttx.functional.softmax"], "_AUTOCAST_TO_FP32", (DEVICE,))
    x = logits(3, 9, dtype=torch.float64)
    mask = torch.rand(3, 9, device=DEVICE) > 0.3
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = fasttx.softmax(x, -1, mask=mask, backend=backend)
        assert fasttx.softmax(x.float(), -1, mask=mask, backend=backend).dtype == torch.float32
        assert fasttx.softmax(x.bfloat16(), -1, mask=mask, backend=backend).dtype == torch.float32
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference.softmax(x, -1, None, mask), rtol=1e-12, atol=1e-12)


def test_bad_input_errors():
    x = logits(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask of shape \[3, 5\] must broadcast to input of shape \[2, 3, 4\]"):
        fasttx.softmax(x, mask=torch.ones(3, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match=r"mask of shape \[5, 3, 4\] must broadcast"):
        fasttx.softmax(x, mask=torch.ones(5, 3, 4, device=DEVICE))
    with pytest.raises(TypeError, match="input must have a floating-point dtype, got torch.int64"):
        fasttx.softmax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="mask must be a bool or floating-point Tensor, got torch.int32"):
        fasttx.softmax(x, mask=torch.ones(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(RuntimeError, match=r"mask must be on the input's device .*, got meta"):
        fasttx.softmax(x, mask=torch.ones(4, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="is_causal masks the last two dims"):
        fasttx.softmax(x, 1, is_causal=True)
    with pytest.raises(IndexError, match=r"dim must be in \[-3, 2\]"):
        fasttx.softmax(x, 3)
    with pytest.raises(TypeError, match="dim must be an int, got NoneType"):
        fasttx.softmax(x, None)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        fasttx.softmax(x, dtype=torch.int32)


def test_module_is_a_drop_in():
    ours, theirs = fasttx.nn.Softmax(dim=1), torch.nn.Softmax(dim=1)
    assert isinstance(ours, torch.nn.Softmax)
    assert ours.state_dict() == theirs.state_dict() == {}
    assert repr(ours).startswith("Softmax(dim=1")
    x = logits(3, 4, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.warns(UserWarning, match="Implicit dimension"):
        torch.testing.assert_close(fasttx.nn.Softmax()(x), torch.softmax(x, 0))


@pytest.mark.parametrize("mask_shape", [(2, 1, 4, 1, 6), (3, 1, 1, 6), (2, 3, 1, 5, 1)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_high_rank_input_and_mask_broadcast_patterns(backend, mask_shape):
    x = logits(2, 3, 4, 5, 6)
    mask = torch.randn(mask_shape, device=DEVICE)
    check(x, backend, scale=0.9, mask=mask, is_causal=True)


@pytest.mark.parametrize("tracer", ["compile", "make_fx", "jit.trace"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_torch_backend_traced_where_every_row_kept_zeroes_empty_rows_later(tracer, kind):
    """The torch backend skips reopening and zeroing rows that keep nothing where, on CPU in eager mode,
    it reads that no row is so: never where a graph is recorded, which would keep the skip for a later
    mask that empties a row."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(2, 3, 5, device=DEVICE)
    every_row_kept = torch.rand(2, 1, 5, device=DEVICE) < 0.7
    every_row_kept[..., 0] = True
    some_row_empty = every_row_kept.clone()
    some_row_empty[1] = False
    if kind == "float":
        every_row_kept, some_row_empty = (torch.zeros(m.shape, device=DEVICE).masked_fill(~m, float("-inf"))
                                          for m in (every_row_kept, some_row_empty))

    def masked_softmax(x, mask):
        return fasttx.softmax(x, -1, mask=mask, backend="torch")

    if tracer == "compile":
        traced = torch.compile(masked_softmax, fullgraph=True, backend="aot_eager")
    elif tracer == "make_fx":
        traced = make_fx(masked_softmax)(x, every_row_kept)
    else:
        traced = torch.jit.trace(masked_softmax, (x, every_row_kept), check_trace=False)
    traced(x, every_row_kept)
    out = traced(x, some_row_empty)
    assert (out[1] == 0).all()
    torch.testing.assert_close(out, masked_softmax(x, some_row_empty))


def _row_made(mask, dim, index, value):
    """``mask`` (a copy) with its row ``index`` (of the rows along ``dim``, in row-major order) set to ``value``."""
    mask = mask.clone()
    rows = mask.movedim(dim, -1)  # (a view: the rows along dim are its last dim)
    rows[tuple(torch.unravel_index(torch.tensor(index), rows.shape[:-1]))] = value
    return mask


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("shape,dim", [((7, 33), -1), ((3, 40, 5), 1), ((2, 1, 4, 9), -1), ((1, 1), -1), ((5, 2), -1),
                                       ((600, 64), -1), ((30, 50, 7), 1), ((700, 2), -1)], ids=str)
def test_some_row_all_reads_a_bool_masks_rows_on_the_host(shape, dim, value):
    """native.some_row_all (the host read that lets the torch backend and MultiheadAttention skip the
    empty-row work) against torch's reduction, as lists (small masks) and as bytes: random masks, one row
    made ``value`` throughout at the start, middle or end, a non-contiguous view, and rows whose runs of
    ``value`` cross into the next row (the tail of one and the head of the next make a row's length of it)
    without any row being all of it (the shapes up to (3, 40, 5) are read as lists, the larger as bytes)."""
    from fasttx.functional import native

    def expected(m):
        return bool((m == value).all(dim).any())

    mask = (torch.rand(shape) < 0.8) ^ (not value)  # mostly ``value``: long runs of it
    mask.movedim(dim, -1)[..., 0] = not value  # no row all ``value`` yet
    rows = mask.numel() // shape[dim]
    assert native.some_row_all(mask, value, dim) is False
    for index in {0, rows // 2, rows - 1}:
        assert native.some_row_all(_row_made(mask, dim, index, value), value, dim) is True
    strided = mask.transpose(0, -1)
    assert native.some_row_all(strided, value, dim) is expected(strided)
    made = _row_made(mask, dim, rows - 1, value)  # (in the last row: kept by the slice below)
    sliced = made[1:]  # (a view at a storage offset)
    assert native.some_row_all(sliced, value, dim) is expected(sliced)
    expanded = made.expand(2, *shape)  # (0 strides)
    assert native.some_row_all(expanded, value, dim if dim < 0 else dim + 1) is True
    if shape[dim] > 1 and rows > 1:
        # Rows [not value, value, ...] and [value, not value, value, ...] in turn: the first's tail and the
        # second's head make a row's length of ``value`` across their boundary; no row is all of it.
        crossing = torch.full((rows, shape[dim]), value)
        crossing[0::2, 0] = crossing[1::2, 1] = not value
        crossing = crossing.view(mask.movedim(dim, -1).shape).movedim(-1, dim)
        assert native.some_row_all(crossing, value, dim) is False


def test_some_row_all_edges():
    """No key (a row of no element is all of any value), no row, and tensors it does not read: None."""
    from fasttx.functional import native

    assert native.some_row_all(torch.zeros(3, 0, dtype=torch.bool), False) is True
    assert native.some_row_all(torch.zeros(0, 4, dtype=torch.bool), True) is False
    assert native.some_row_all(torch.zeros(0, 0, dtype=torch.bool), True) is False
    assert native.some_row_all(torch.ones((), dtype=torch.bool), True) is None
    assert native.some_row_all(torch.ones(2, 3, dtype=torch.bool, device="meta"), True) is None
    big = torch.zeros(native.READ_AS_BYTES_MAX + 1, dtype=torch.bool).view(1, -1)
    assert native.some_row_all(big, True) is None
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # (no data: its data_ptr() is 0)
        fake = torch.ones(2, native.READ_AS_LIST_MAX_ELEMENTS, dtype=torch.bool)
    assert native.some_row_all(fake, True) is None
