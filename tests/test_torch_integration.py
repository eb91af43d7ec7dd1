"""The custom ops under torch.library.opcheck, torch.compile(fullgraph=True) and autocast."""

import functools

import pytest
import torch

import fasttx
from fasttx import _ops
from fasttx.testing import assert_close

from .conftest import DEVICE, runnable_backends

KERNEL_BACKENDS = [b for b in runnable_backends(op="softmax") if b != "torch"]  # Block uses every op


def _attention_kind(backend):
    """(dtype, E, Ev) of the attention samples: the CUDA kernels take fp16 / bf16 with E == Ev in
    32, 64, 96, 128, 256; the others get fp32 and unequal head dims."""
    return (torch.float16, 32, 32) if backend == "cuda" else (torch.float32, 16, 8)


def _samples(op, requires_grad, backend):
    if op == "attention":
        dtype, e, ev = _attention_kind(backend)
        q = torch.randn(2, 2, 5, e, device=DEVICE, dtype=dtype, requires_grad=requires_grad)
        k = torch.randn(2, 1, 7, e, device=DEVICE, dtype=dtype, requires_grad=requires_grad)
        v = torch.randn(2, 1, 7, ev, device=DEVICE, dtype=dtype, requires_grad=requires_grad)
        key_padding = torch.rand(2, 1, 1, 7, device=DEVICE) > 0.3
        bias = torch.randn(1, 1, 5, 7, device=DEVICE, dtype=dtype)
        seed = torch.tensor(1234, dtype=torch.int64)
        return [(q, k, v, None, 0.25, False, 0.0, None), (q, k, v, key_padding, 0.25, False, 0.0, None),
                (q, k, v, bias, 0.5, False, 0.2, seed), (q, k, v, None, 0.25, True, 0.0, None)]
    if op == "softmax":
        x = torch.randn(2, 3, 4, 33, device=DEVICE, requires_grad=requires_grad)
        key_padding = (torch.rand(2, 1, 1, 33, device=DEVICE) > 0.3).expand(2, 3, 4, 33)
        bias = torch.randn(4, 33, device=DEVICE, requires_grad=requires_grad).expand(2, 3, 4, 33)
        return [(x, None, 1.0, False, torch.float32), (x, key_padding, 0.5, True, torch.float32),
                (x, bias, 2.0, False, torch.float16)]
    x = torch.randn(5, 33, device=DEVICE, requires_grad=requires_grad)
    w = torch.randn(33, device=DEVICE, requires_grad=requires_grad)
    b = torch.randn(33, device=DEVICE, requires_grad=requires_grad)
    if op == "layer_norm":
        return [(x, w, b, 1e-5), (x, None, None, 1e-5), (x, None, b, 1e-3)]
    return [(x, w, 1e-5), (x, None, 1e-6)]


@pytest.mark.parametrize("op,backend", [
    (op, b) for op in ("layer_norm", "rms_norm", "softmax", "attention") for b in runnable_backends(op=op) if b != "torch"
])
def test_opcheck(op, backend):
    fwd, bwd = _ops.op(op, "fwd", backend), _ops.op(op, "bwd", backend)
    for requires_grad in (False, True):
        for args in _samples(op, requires_grad, backend):
            torch.library.opcheck(fwd, args)
    for args in _samples(op, False, backend):
        x, weight = args[0], args[1]
        outputs = fwd(*args)
        dy = torch.randn_like(x)
        if op == "attention":
            out, lse = outputs
            torch.library.opcheck(bwd, (torch.randn_like(out), *args[:3], out, lse, *args[3:]))
        elif op == "softmax":
            torch.library.opcheck(bwd, (outputs, dy, args[2], x.dtype))
        elif op == "layer_norm":
            torch.library.opcheck(bwd, (dy, x, weight, outputs[1], outputs[2], args[2] is not None))
        else:
            torch.library.opcheck(bwd, (dy, x, weight, outputs[1]))


class Block(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.norm1 = fasttx.nn.LayerNorm(48, backend=backend)
        self.proj = torch.nn.Linear(48, 48)
        self.norm2 = fasttx.nn.RMSNorm(48, backend=backend)
        self.backend = backend

    def forward(self, x):
        h = self.norm2(torch.relu(self.proj(self.norm1(x))) + x)
        keep = torch.arange(h.shape[-1], device=h.device) % 5 != 0
        return fasttx.softmax(h, -1, scale=0.5, mask=keep, backend=self.backend) * h


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_compile_fullgraph(backend, compiler):
    torch._dynamo.reset()
    model = Block(backend).to(DEVICE)
    x = torch.randn(6, 7, 48, device=DEVICE, requires_grad=True)
    expected = model(x)
    expected.sum().backward()
    expected_grads = [x.grad] + [p.grad for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    out = compiled(x)
    out.sum().backward()
    assert_close(out, expected, torch.float32, "compiled output")
    for got, want in zip([x.grad] + [p.grad for p in model.parameters()], expected_grads):
        assert_close(got, want, torch.float32, "compiled gradient")


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", [b for b in runnable_backends(op="attention") if b != "torch"])
def test_compile_fullgraph_attention(backend, compiler):
    torch._dynamo.reset()
    dtype, e, _ = _attention_kind(backend)

    def attend(q, k, v, key_padding):
        q = q.view(2, 9, 4, e).transpose(1, 2)  # (B, L, H*E) projections as a module makes them
        k, v = (t.view(2, 11, 2, e).transpose(1, 2) for t in (k, v))
        out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=key_padding, enable_gqa=True, backend=backend)
        return out.transpose(1, 2).reshape(2, 9, 4 * e)

    q = torch.randn(2, 9, 4 * e, device=DEVICE, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(2, 11, 2 * e, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    key_padding = torch.rand(2, 1, 1, 11, device=DEVICE) > 0.2
    expected = attend(q, k, v, key_padding)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    out = torch.compile(attend, fullgraph=True, backend=compiler)(q, k, v, key_padding)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert_close(out, expected, dtype, "compiled output")
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, dtype, "compiled gradient")


@pytest.mark.parametrize("backend", runnable_backends(op="layer_norm"))
def test_autocast(backend):
    """Under autocast the Linear runs in the low dtype; the norm keeps its input's dtype (fp32
    statistics inside) instead of upcasting as torch does, and reads the fp32 parameters."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    low = torch.float16 if device_type == "cuda" else torch.bfloat16

    def make(backend):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(48, 48), fasttx.nn.LayerNorm(48, backend=backend),
            torch.nn.Linear(48, 48), fasttx.nn.RMSNorm(48, backend=backend),
        ).to(DEVICE)

    model = make(backend)
    x = torch.randn(4, 48, device=DEVICE)
    with torch.autocast(device_type, dtype=low):
        out = model(x)
    assert out.dtype == low
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    reference = make("torch")
    with torch.autocast(device_type, dtype=low):
        assert_close(out, reference(x), low, "autocast output")


@pytest.mark.parametrize("mask", [None, "float"])
@pytest.mark.parametrize("backend", runnable_backends(op="attention"))
def test_attention_under_autocast_casts_as_torch_does(backend, mask):
    """torch's autocast runs its SDPA in the low dtype (it is on the lower-precision list), casting
    every floating argument: fp32 queries and keys (as transformers' rotary embeddings make them)
    beside values already in the low dtype, which outside autocast is a dtype error. fasttx's
    attention casts the same: output in the low dtype, each gradient in its argument's dtype.
    float16 on CPU too: the Triton interpreter's bf16 dots are wrong (see tests/ops/test_attention.py)."""
    device_type, low = ("cuda" if DEVICE == "cuda" else "cpu"), torch.float16
    q = torch.randn(2, 4, 9, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 4, 11, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(2, 4, 11, 32, device=DEVICE, dtype=low, requires_grad=True)
    attn_mask = None if mask is None else torch.randn(9, 11, device=DEVICE)
    with pytest.raises(TypeError, match="value must have query's dtype"):
        fasttx.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, backend=backend)
    dy = torch.randn(2, 4, 9, 32, device=DEVICE, dtype=low)
    results = []
    for attention in (functools.partial(fasttx.scaled_dot_product_attention, backend=backend),
                      torch.nn.functional.scaled_dot_product_attention):
        with torch.autocast(device_type, dtype=low):
            out = attention(q, k, v, attn_mask=attn_mask)
        results.append((out, torch.autograd.grad(out, (q, k, v), dy)))
    (out, grads), (expected, expected_grads) = results
    assert out.dtype == expected.dtype == low
    assert_close(out, expected, low, "autocast output")
    for got, want, leaf in zip(grads, expected_grads, (q, k, v)):
        assert got.dtype == want.dtype == leaf.dtype
        assert_close(got, want, low, "autocast gradient")
