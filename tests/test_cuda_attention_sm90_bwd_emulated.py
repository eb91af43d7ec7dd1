"""The sm_90a attention dK/dV kernel (csrc/attention/sm90/attention_bwd_sm90.cuh), run on the CPU:
tests/attention_emulator/emulator_sm90_bwd.cpp compiles the real kernel source and the real head-dim-128
backward launch code (D kernel, dK/dV, the sm_80 dQ kernel) for the host, with the emulated TMA,
mbarriers and wgmma of tests/attention_emulator/attention/sm90/primitives_sm90.cuh (checked against
an independent statement of the layouts by tests/test_cuda_attention_sm90_emulated.py). The backward
runs from the float64 reference's O and lse; dQ, dK and dV are compared with the float64 reference.
The sm_90a kernel runs where the launch code picks it: FASTTX_ATTENTION_SM90=1 (the switch set by
cuda_sm90_forward) and a supported call, which each test asserts. What only a GPU shows is out of
reach here (see the forward's emulated tests)."""

import ctypes
import math

import pytest
import torch

from fasttx import reference
from fasttx.functional.attention import cuda_sm90_forward
from fasttx.testing import TOLERANCE, rel_error

from .ops.test_attention import gradient_scales
from .cuda_emulator import compile_emulator, marshal
from .test_cuda_attention_emulated import _fields, reference_lse

E = 128  # the one head dim of the sm_90a kernel


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lib = compile_emulator(tmp_path_factory, "attention_emulator", "emulator_sm90_bwd.cpp")
    lib.emu_attention_bwd_sm90.restype = ctypes.c_char_p
    return lib


def run_backward(emulator, q, k, v, dout, scale, is_causal, sm90=True):
    """dq, dk, dv from the emulated head-dim-128 backward, launched as attention_bwd_launch would with
    the sm_90a switch on or off, from the reference's O (rounded to q's dtype) and lse (with no key:
    O = 0, lse = +inf); and whether the sm_90a dK/dV kernel ran."""
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
    with cuda_sm90_forward(sm90):
        error = emulator.emu_attention_bwd_sm90(*marshal(fields, [q, k, v, dout, o, lse, delta]),
                                                ctypes.byref(launched))
    if error is not None:
        raise ValueError(f"emu_attention_bwd_sm90: {error.decode()}")
    return grads, bool(launched.value)


def check(emulator, B, H, Hkv, L, S, dtype=torch.bfloat16, is_causal=False, transposed=False, scale=None,
          sm90=True):
    shape = lambda heads, n: (B, n, heads, E) if transposed else (B, heads, n, E)  # noqa: E731
    tr = (lambda t: t.transpose(1, 2)) if transposed else (lambda t: t)  # noqa: E731
    q, k, v = (tr(torch.randn(shape(h, n)).to(dtype)) for h, n in ((H, L), (Hkv, S), (Hkv, S)))
    dout = torch.randn(B, H, L, E).to(dtype)
    scale = 1 / math.sqrt(E) if scale is None else scale
    grads, launched = run_backward(emulator, q, k, v, dout, scale, is_causal, sm90)
    assert launched == sm90

    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    reference.scaled_dot_product_attention(*leaves, None, 0.0, is_causal, scale, enable_gqa=True).backward(
        dout.double())
    scales = gradient_scales(q, k, v, dout, scale=scale, is_causal=is_causal, enable_gqa=True)
    for name, ours, leaf, sc in zip(("dq", "dk", "dv"), grads, leaves, scales):
        err = rel_error(ours, leaf.grad, sc)
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g}"


# L, S not multiples of the 64-query tile or the 128-key block; one row; one key.
@pytest.mark.parametrize("L,S", [(1, 1), (1, 200), (130, 7), (70, 300)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sequence_lengths(emulator, L, S, dtype):
    check(emulator, 1, 1, 1, L, S, dtype)


# Diagonal tiles at every offset of the 64-query tiles against the 128-key blocks; L < S leaves the
# last key blocks with no query (their dK, dV rows: zeros, written).
@pytest.mark.parametrize("L,S", [(200, 200), (70, 300), (260, 130)], ids=str)
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


def test_switched_off_runs_the_sm80_kernel(emulator):
    check(emulator, 1, 2, 1, 70, 130, torch.float16, is_causal=True, sm90=False)


def test_no_keys_is_left_to_the_sm80_kernels(emulator):
    """S = 0 (which the binding does not launch: dq = 0 there): the sm_90a kernel declines, the launch
    code's dQ kernel writes zeros."""
    q, k = torch.randn(1, 2, 70, E).bfloat16(), torch.randn(1, 2, 0, E).bfloat16()
    (dq, _, _), launched = run_backward(emulator, q, k, k, torch.randn_like(q), 0.125, False)
    assert not launched and (dq == 0).all()
