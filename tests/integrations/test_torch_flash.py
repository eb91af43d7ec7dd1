"""fasttx in torch's flash-attention implementation registry (torch.nn.attention), where torch has it.

On CPU the flash route (CUDA-only kernels of aten::_scaled_dot_product_flash_attention) cannot run, so
here: the registration (offered, never active by itself), activation and restore as seen in the
dispatcher's CUDA entry, and the registered forward/backward kernels called directly on CPU tensors
(Triton interpreter) against float64 torch. With a GPU, F.scaled_dot_product_attention forced onto the
flash backend must run them and match."""

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx.integrations import torch_flash
from fasttx.testing import TOLERANCE, rel_error

from ..conftest import DEVICE, runnable_backends

pytestmark = pytest.mark.skipif(not torch_flash.available(),
                                reason=f"torch {torch.__version__} has no flash-attention implementation registry")
attention = torch.nn.attention


def _cuda_kernel_of_flash_forward():
    dump = torch._C._dispatch_dump("aten::_scaled_dot_product_flash_attention")
    return next(line for line in dump.splitlines() if line.startswith("CUDA:"))


@pytest.fixture
def activated():
    attention.activate_flash_attention_impl("fasttx")
    yield
    attention.restore_flash_attention_impl()


def test_offered_but_never_active_by_itself():
    assert "fasttx" in attention.list_flash_attention_impls()
    assert attention.current_flash_attention_impl() != "fasttx"
    assert "torch_flash.py" not in _cuda_kernel_of_flash_forward()


def test_activate_and_restore_switch_the_dispatcher_entry():
    attention.activate_flash_attention_impl("fasttx")
    try:
        assert attention.current_flash_attention_impl() == "fasttx"
        assert "fasttx/integrations/torch_flash.py" in _cuda_kernel_of_flash_forward()
    finally:
        attention.restore_flash_attention_impl()
    assert attention.current_flash_attention_impl() is None
    assert "torch_flash.py" not in _cuda_kernel_of_flash_forward()


def _reference(q, k, v, grad, is_causal, scale):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q64, k64, v64, is_causal=is_causal, scale=scale,
                                         enable_gqa=k.shape[1] != q.shape[1])
    out.backward(grad.double())
    return out, q64.grad, k64.grad, v64.grad



@pytest.mark.skipif("triton" not in runnable_backends(op="attention"), reason="no Triton attention here")
@pytest.mark.parametrize("is_causal, kv_heads, scale", [(False, 4, None), (True, 2, 0.3)])
def test_registered_kernels_compute_torch_flash_attention(is_causal, kv_heads, scale):
    q = torch.randn(2, 4, 13, 16, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(2, kv_heads, 13, 16, dtype=torch.float16, device=DEVICE) for _ in range(2))
    with fasttx.use_backend("triton"):
        out, lse, _, _, max_q, max_k, rng, offset, debug = torch_flash.flash_forward(q, k, v, 0.0, is_causal,
                                                                                     scale=scale)
        grad = torch.randn_like(out)
        grads = torch_flash.flash_backward(grad, q, k, v, out, lse, None, None, max_q, max_k, 0.0, is_causal, rng,
                                           offset, scale=scale)
    assert lse.shape == (2, 4, 13) and lse.dtype == torch.float32 and (max_q, max_k) == (13, 13)
    assert rng.shape == (2,) and rng.dtype == torch.uint64 and debug.numel() == 0
    for fast, expected in zip((out, *grads), _reference(q, k, v, grad, is_causal, scale)):
        assert rel_error(fast, expected) <= 2 * TOLERANCE[torch.float16]


def test_needs_a_kernel_backend():
    q = torch.randn(1, 2, 4, 8, dtype=torch.float16)
    with fasttx.use_backend("torch"), pytest.raises(RuntimeError, match="activate_flash_attention_impl"):
        torch_flash.flash_forward(q, q, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash route runs CUDA tensors only")
def test_sdpa_flash_route_runs_fasttx_on_cuda(activated, monkeypatch):
    ran = []
    for name in ("flash_forward", "flash_backward"):
        original = getattr(torch_flash, name)
        monkeypatch.setattr(torch_flash, name, lambda *a, _f=original, _n=name, **kw: ran.append(_n) or _f(*a, **kw))
    attention.activate_flash_attention_impl("fasttx")  # again: the library binds the patched functions
    q, k, v = (torch.randn(2, 4, 128, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True) for _ in range(3))
    with attention.sdpa_kernel(attention.SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert ran == ["flash_forward", "flash_backward"]
    for fast, expected in zip((out, q.grad, k.grad, v.grad), _reference(q, k, v, grad, True, None)):
        assert rel_error(fast, expected) <= 2 * TOLERANCE[torch.bfloat16]
