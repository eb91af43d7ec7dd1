"""The sm_90a attention dK/dV and dQ kernels (csrc/attention/sm90/attention_{bwd,dq}_sm90.cuh), run on
the CPU: tests/attention_emulator/emulator_sm90_bwd.cpp compiles the real kernel source and the real
head-dim-128 backward launch code (D kernel, dK/dV, dQ) for the host, with the emulated TMA,
mbarriers and wgmma of tests/attention_emulator/attention/sm90/primitives_sm90.cuh (checked against
an independent statement of the layouts by tests/test_cuda_attention_sm90_emulated.py). The backward
runs from the float64 reference's O and lse; dQ, dK and dV are compared with the float64 reference.
The sm_90a kernels run where the launch code picks them: FASTTX_ATTENTION_SM90=1 (the switch set by
cuda_sm90_kernels) and a supported call; each test asserts which ran (the emulator reports every
launch). What only a GPU shows is out of
reach here (see the forward's emulated tests)."""

import ctypes
import math

import pytest
import torch

from fasttx import reference
from fasttx.functional.attention import cuda_sm90_kernels
from fasttx.testing import TOLERANCE, rel_error

from .ops.test_attention import gradient_scales
from .cuda_emulator import compile_emulator, marshal
from .test_cuda_attention_emulated import _fields, reference_lse

E = 128  # the one head dim of the sm_90a kernels
KV, DQ = 1, 2  # the emulator's report: which sm_90a kernels ran


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lib = compile_emulator(tmp_path_factory, "attention_emulator", "emulator_sm90_bwd.cpp")
    lib.emu_attention_bwd_sm90.restype = ctypes.c_char_p
    return lib


def run_backward(emulator, q, k, v, dout, scale, is_causal, sm90=True):
    """dq, dk, dv from the emulated head-dim-128 backward, launched as attention_bwd_launch would with
    the sm_90a switch on or off, from the reference's O (rounded to q's dtype) and lse (with no key:
    O = 0, lse = +inf); and which sm_90a kernels ran (KV | DQ)."""
    B, H, L, _ = q.shape
    if k.shape[2] > 0:
        o = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), None, 0.0, is_causal, scale,
                                                   enable_gqa=True).to(q.dtype)
        lse = reference_lse(q, k, None, scale, is_causal).float()
    else:
        o, lse = torch.zeros_like(q), torch.full((B, H, L), float("inf"))
    delta = torch.full((B, H, L), float("nan"))
    grads = [torch.full_like(t, float("nan"), memory_format=torch.contiguous_format) for t in (q, k, v)]
    fields = _fields(True, q, k, v, None, scale, is_causal, 0.0, torch.zeros(1, dtype=torch.int64), o, lse, dout,
                     delta, grads)
    launched = ctypes.c_int(-1)
    with cuda_sm90_kernels(sm90):
        error = emulator.emu_attention_bwd_sm90(*marshal(fields, [q, k, v, dout, o, lse, delta]),
                                                ctypes.byref(launched))
    if error is not None:
        raise ValueError(f"emu_attention_bwd_sm90: {error.decode()}")
    return grads, launched.value


def check(emulator, B, H, Hkv, L, S, dtype=torch.bfloat16, is_causal=False, transposed=False, scale=None,
          sm90=True, bias=0.0):
    """bias: added to q, subtracted from k (so that every score lies far below 0 when large)."""
    shape = lambda heads, n: (B, n, heads, E) if transposed else (B, heads, n, E)  # noqa: E731
    tr = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t)  # noqa: E731
    q, k, v = (tr((torch.randn(shape(h, n)) + b).to(dtype)) for h, n, b in ((H, L, bias), (Hkv, S, -bias), (Hkv, S, 0)))
    dout = torch.randn(B, H, L, E).to(dtype)
    scale = 1 / math.sqrt(E) if scale is None else scale
    grads, launched = run_backward(emulator, q, k, v, dout, scale, is_causal, sm90)
    assert launched == (KV | DQ if sm90 else 0)

    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    reference.scaled_dot_product_attention(*leaves, None, 0.0, is_causal, scale, enable_gqa=True).backward(
        dout.double())
    scales = gradient_scales(q, k, v, dout, scale=scale, is_causal=is_causal, enable_gqa=True)
    for name, ours, leaf, sc in zip(("dq", "dk", "dv"), grads, leaves, scales):
        err = rel_error(ours, leaf.grad, sc)
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g}"


# L, S not multiples of the tiles (dK/dV: 64-query tiles, 128-key blocks; dQ: 128-row CTAs, 64-key
# blocks); one row; one key; several dQ CTAs and key blocks.
@pytest.mark.parametrize("L,S", [(1, 1), (1, 200), (130, 7), (70, 300), (300, 129)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sequence_lengths(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype)


# Diagonal tiles at every offset of the 64-query tiles against the 128-key blocks (dK/dV) and of the
# 128-row CTAs against the 64-key blocks (dQ: a CTA's first warpgroup sees blocks wholly past its
# diagonal); L < S leaves the last key blocks with no query (their dK, dV rows: zeros, written), L > S
# rows past the last key.
@pytest.mark.parametrize("L,S", [(200, 200), (70, 300), (260, 130), (1, 65), (300, 100)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_causal(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype, is_causal=True)


def test_grouped_query_attention_and_transposed_views(emulator):
    """Two query heads a kv head summed in one CTA's registers, (B, L, H, E) views read by TMA through
    their strides, B = 2."""
    check(emulator, 2, 4, 2, 70, 150, torch.float16, transposed=True)


def test_grouped_query_attention_causal(emulator):
    check(emulator, 1, 3, 1, 100, 140, torch.bfloat16, is_causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0])
def test_any_scale(emulator, scale):
    """Unlike the sm_90a forward, the backward takes every scale (it reads lse, no row maxima)."""
    check(emulator, 1, 2, 2, 70, 130, torch.bfloat16, scale=scale)


def test_scores_far_below_zero(emulator):
    """Every score about -115 after scaling, lse about -160 in base 2: a padding key (loaded as 0,
    scoring 0) must get P = 0 from the element checks, not 2^(0 - lse) = inf (S = 100: the second
    64-key block of dQ and the first 128-key block of dK/dV have padding keys)."""
    check(emulator, 1, 1, 1, 70, 100, torch.bfloat16, scale=0.1, bias=3.0)
    check(emulator, 1, 1, 1, 70, 100, torch.float16, is_causal=True, scale=0.1, bias=3.0)


def test_switched_off_runs_the_sm80_kernel(emulator):
    check(emulator, 1, 2, 1, 70, 130, torch.float16, is_causal=True, sm90=False)


def test_no_keys_is_left_to_the_sm80_kernels(emulator):
    """S = 0 (which the binding does not launch: dq = 0 there): the sm_90a kernels decline, the launch
    code's sm_80 dQ kernel writes zeros."""
    q, k = torch.randn(1, 2, 70, E).bfloat16(), torch.randn(1, 2, 0, E).bfloat16()
    (dq, _, _), launched = run_backward(emulator, q, k, k, torch.randn_like(q), 0.125, False)
    assert launched == 0 and (dq == 0).all()
