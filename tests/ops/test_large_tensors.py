"""Norms and softmax on tensors past 2^31 elements, whose row offsets need int64: the rows that start
past element 2^31 against the float64 reference, forward and input gradient (each row's own). GPU runs
only: each tensor takes 4 GB, and the interpreter would take hours. (Attention's views past 2^31
elements are tested in the interpreter, tests/ops/test_attention_launch.py.)"""

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx.testing import assert_close

from ..conftest import DEVICE, runnable_backends

pytestmark = pytest.mark.skipif(DEVICE != "cuda", reason="tensors of 2^31 elements: 4 GB each, GPU runs only")
HIDDEN = 1024
ROWS = 2**31 // HIDDEN + 4  # the last 4 rows start past element 2^31
TAIL = 8


def tail_check(fn, reference, dtype=torch.float16):
    """fn's output and input gradient on a (ROWS, HIDDEN) input, over its last TAIL rows."""
    x = torch.randn(ROWS, HIDDEN, device=DEVICE, dtype=dtype, requires_grad=True)
    out = fn(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    x_tail = x.detach()[-TAIL:].double().requires_grad_()
    ref = reference(x_tail)
    ref.backward(dy[-TAIL:].double())
    assert_close(out.detach()[-TAIL:], ref, dtype, "output")
    assert_close(x.grad[-TAIL:], x_tail.grad, dtype, "grad input")


@pytest.mark.parametrize("backend", [b for b in runnable_backends(op="layer_norm") if b != "torch"])
def test_layer_norm_past_2_31_elements(backend):
    w, b = torch.randn(HIDDEN, device=DEVICE), torch.randn(HIDDEN, device=DEVICE)
    tail_check(lambda x: fasttx.layer_norm(x, (HIDDEN,), w.half(), b.half(), backend=backend),
               lambda x: F.layer_norm(x, (HIDDEN,), w.half().double(), b.half().double()))


@pytest.mark.parametrize("backend", [b for b in runnable_backends(op="layer_norm") if b != "torch"])
def test_rms_norm_past_2_31_elements(backend):
    w = torch.randn(HIDDEN, device=DEVICE)
    tail_check(lambda x: fasttx.rms_norm(x, (HIDDEN,), w.half(), eps=1e-6, backend=backend),
               lambda x: F.rms_norm(x, (HIDDEN,), w.half().double(), eps=1e-6))


@pytest.mark.parametrize("backend", [b for b in runnable_backends(op="softmax") if b != "torch"])
def test_softmax_past_2_31_elements(backend):
    tail_check(lambda x: fasttx.softmax(x, -1, backend=backend), lambda x: F.softmax(x, -1))
