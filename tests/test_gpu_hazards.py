"""What only a compiled kernel on a GPU can get wrong (issue 13, part 2), checked on the GPU: grid limits,
re-specialisation, the autotuner's key, shared memory, CUDA-graph replay of dropout, 64-bit indexing.

The Triton interpreter and the CUDA attention emulator run on the CPU, where none of these shows, so
every test here needs a CUDA device: ``make gpu-check`` runs this file as its "hazards" stage (one
process, one test at a time: the largest holds up to about 50 GiB). Each test runs for every kernel
backend that has the op; a test whose tensors do not fit in the free GPU memory says so and is skipped.
"""

import time

import pytest
import torch

import fasttx
from fasttx import backends, reference
from fasttx.cli.gpu_cases import norm_input_grad_scale
from fasttx.testing import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs it)")
KERNEL_BACKENDS = ["triton", "cuda"]
GiB = 2**30


def _require(backend, op, gib=0):
    reason = backends.unavailable_reason(backend, "cuda", torch.bfloat16, op)
    if reason is not None:
        pytest.skip(f"backend {backend}: {reason}")
    free = torch.cuda.mem_get_info()[0]
    if free < gib * GiB:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / GiB:.0f} GiB free")


def _attention_inputs(batch, heads, queries, keys, head_dim, dtype=torch.bfloat16):
    return [torch.randn(batch, heads, n, head_dim, device="cuda", dtype=dtype, requires_grad=True)
            for n in (queries, keys, keys)]


def _check_attention_rows(q, k, v, out, grads, dy, rows, what, **kwargs):
    """Output and dq of the batch / query ``rows`` (an index into (B, H, L)) against float64; dk and
    dv finite (they sum over every query)."""
    q64, k64, v64 = (t.detach()[rows[:2]].double().requires_grad_() for t in (q, k, v))
    q64 = q64.detach()[..., rows[2], :].requires_grad_()
    out64 = reference.scaled_dot_product_attention(q64, k64, v64, **kwargs)
    dq64, = torch.autograd.grad(out64, [q64], dy[rows].double())
    assert_close(out[rows], out64, q.dtype, f"{what}: output")
    assert_close(grads[0][rows], dq64, q.dtype, f"{what}: dq")
    assert all(torch.isfinite(g).all() for g in grads[1:]), f"{what}: dk or dv not finite"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_attention_batch_times_heads_beyond_grid_dim_limit(backend):
    """B * H = 65552 > 65535, CUDA's cap on grid dims 1 and 2: the launch must not put B * H there."""
    _require(backend, "attention", gib=4)
    q, k, v = _attention_inputs(4097, 16, 32, 32, 64)
    out = fasttx.scaled_dot_product_attention(q, k, v, backend=backend)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v], dy)
    for b in (0, 4096):  # the first batch and the last, whose programs lie past the cap
        _check_attention_rows(q, k, v, out, grads, dy, (slice(b, b + 1), slice(None), slice(None)), f"batch {b}")


def test_dropout_seed_does_not_respecialize():
    """The Philox seed changes every call; as a plain int argument Triton re-specialises the kernel
    when it is divisible by 16, a compile of seconds about one call in 16. 64 calls must all be fast."""
    _require("triton", "attention")
    q, k, v = _attention_inputs(2, 4, 128, 128, 64)
    fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.1, backend="triton").sum().backward()  # compile
    slowest = 0.0
    for _ in range(64):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.1, backend="triton").sum().backward()
        torch.cuda.synchronize()
        slowest = max(slowest, time.perf_counter() - begin)
    assert slowest < 1.0, f"a dropout call took {slowest:.2f} s: the kernel was compiled again for a new seed"


def test_attention_autotune_key_tells_sequence_lengths_apart():
    """The tile the autotuner picks at one sequence length must not be kept for every other: calls at
    L = S = 128 and 8192 must be tuned under different keys of every attention autotuner."""
    _require("triton", "attention", gib=2)
    from fasttx.cli.gpu_autotune import autotuners

    tuners = {name: t for name, t in autotuners().items() if name.startswith("attention")}
    for tuner in tuners.values():
        tuner.cache.clear()  # earlier tests may have tuned one of these lengths already
    for seq in (128, 8192):
        q, k, v = _attention_inputs(1, 2, seq, seq, 64)
        fasttx.scaled_dot_product_attention(q, k, v, backend="triton").sum().backward()
    keys = {name: len(t.cache) for name, t in tuners.items()}
    assert tuners and all(n == 2 for n in keys.values()), f"autotune keys per kernel for two sequence lengths: {keys}"


@pytest.mark.parametrize("rows", [512, 1], ids=["tile", "key padding"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_float_mask_at_head_dim_128_fits_shared_memory(dtype, rows):
    """A float mask tile adds shared memory to the largest forward configs at E = 128: some config
    must still fit, and the result must be right. A (B, 1, 1, S) key-padding mask takes vectors instead
    (MASK_ROWS_BROADCAST), which lets the pruning keep the 3 stages of (128, 128, 8, 3) for 16-bit
    inputs: that config must launch and be right too (the autotuner times every kept config)."""
    _require("triton", "attention")
    q, k, v = _attention_inputs(2, 4, 512, 512, 128, dtype)
    mask = torch.randn(2, 1, rows, 512, device="cuda", dtype=dtype)
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend="triton")
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v], dy)
    _check_attention_rows(q, k, v, out, grads, dy, (slice(None), slice(None), slice(None)), "float mask",
                          attn_mask=mask.double())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dropout_under_cuda_graph_replay_draws_new_masks(backend):
    """A captured graph replays its kernels with the arguments of the capture: a seed drawn on the
    host then gives every replay the same keep mask. Replays must differ, or capture must be refused
    with an error from fasttx."""
    _require(backend, "attention")
    q, k, v = _attention_inputs(1, 2, 64, 64, 64, torch.float16 if backend == "cuda" else torch.bfloat16)
    q, k, v = (t.detach() for t in (q, k, v))

    def step():
        return fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = step()
    except RuntimeError as e:
        assert "fasttx" in str(e), f"capture failed with an error that is not fasttx's refusal: {e}"
        return
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out), "two replays of captured dropout attention drew the same keep mask"


def _norm_or_softmax(op, x, weight, backend):
    if op == "softmax":
        return fasttx.softmax(x, -1, backend=backend)
    return getattr(fasttx, op)(x, (x.shape[-1],), weight, backend=backend)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "softmax"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_rows_past_2_31_elements(op, backend):
    """(2^19 + 3) x 4096 bf16, 2^31 + 12288 elements: the last rows' offsets overflow int32."""
    _require(backend, "softmax" if op == "softmax" else "layer_norm", gib=24)
    hidden = 4096
    x = torch.randn(2**31 // hidden + 3, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = None if op == "softmax" else torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    out = _norm_or_softmax(op, x, weight, backend)
    dy = torch.randn_like(out)
    dx, = torch.autograd.grad(out, [x], dy)
    for rows in (slice(0, 2), slice(-4, None)):
        x64 = x.detach()[rows].double().requires_grad_()
        w64 = None if weight is None else weight.double()
        out64 = reference.softmax(x64, -1) if op == "softmax" else getattr(reference, op)(x64, (hidden,), w64)
        dx64, = torch.autograd.grad(out64, [x64], dy[rows].double())
        assert_close(out[rows], out64, x.dtype, f"{op} rows {rows}: output")
        scale = 0.0 if op == "softmax" else norm_input_grad_scale(op, x64.detach(), w64, dy[rows].double())
        assert_close(dx[rows], dx64, x.dtype, f"{op} rows {rows}: input gradient", scale)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_attention_transposed_view_past_2_31_elements(backend):
    """q a (B, H, L, E) view of (B, L, H, E) activations with L * H * E = 2^31 + 2^17 per batch: the
    second batch starts past int32 and the last queries' offsets overflow it within the first."""
    _require(backend, "attention", gib=56)
    heads, dim, keys = 16, 128, 64
    queries = 2**31 // (heads * dim) + 64

    def activations(n):
        return torch.randn(2, n, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()

    q, k, v = activations(queries), activations(keys), activations(keys)
    out = fasttx.scaled_dot_product_attention(q, k, v, backend=backend)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v], dy)
    for b in (0, 1):
        _check_attention_rows(q, k, v, out, grads, dy, (slice(b, b + 1), slice(heads - 2, heads), slice(-64, None)),
                              f"batch {b}, last queries")
