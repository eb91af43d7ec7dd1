"""The sm_90a attention kernels (csrc/attention/sm90) on a GPU: with FASTTX_ATTENTION_SM90=1 (their switch
until a GPU run validates them; every test here sets it), backend="cuda" at head dim 128 without mask or
dropout takes the sm_90a forward and, in the backward, the sm_90a dK/dV and dQ kernels (after the sm_80
D kernel) on sm_90 devices (attention_launch.cpp, attention_launch.cuh); output and gradients against
the float64 reference. Elsewhere the same calls run the sm_80 kernels, so the tests still hold; on an
sm_90 device the profiler shows which kernels ran. On the CPU machine the CPU checks are
tests/test_cuda_attention_sm90_emulated.py and tests/test_cuda_attention_sm90_bwd_emulated.py."""

import pytest
import torch

import fasttx

from .conftest import DEVICE, runnable_backends
from .ops.test_attention import attention_inputs, check

pytestmark = pytest.mark.skipif("cuda" not in runnable_backends(op="attention"),
                                reason="needs a CUDA device and the extension (backend='cuda')")


@pytest.fixture(autouse=True)
def sm90_switched_on(monkeypatch):
    monkeypatch.setenv("FASTTX_ATTENTION_SM90", "1")


def _on_sm90():
    return DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("queries,keys", [(1, 1), (130, 7), (200, 300), (1000, 1000)], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_forward_and_gradients(dtype, is_causal, queries, keys):
    check(*attention_inputs(2, 4, 2, queries, keys, 128, dtype=dtype), "cuda", is_causal=is_causal)


def test_transposed_views():
    q, k, v = (torch.randn(2, n, 4, 128, device=DEVICE).bfloat16().transpose(1, 2) for n in (150, 260, 260))
    check(q, k, v, "cuda")


def test_gradients_grouped_query_attention_causal_long():
    """Four query heads a kv head summed in one dK/dV CTA, many 64-query tiles through the 2-stage ring,
    L < S: key blocks past the last query see none (zero dK, dV); dQ CTAs of up to 15 causal 64-key
    blocks through its 3-stage ring."""
    check(*attention_inputs(2, 8, 2, 1500, 1700, 128, dtype=torch.bfloat16), "cuda", is_causal=True)


def _kernels_run(backward):
    """The names of the CUDA kernels one head-dim-128 bf16 call (and its backward) runs."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 2, 2, 256, 256, 128, dtype=torch.bfloat16))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="cuda")
        if backward:
            out.backward(torch.randn_like(out))
        torch.cuda.synchronize()
    return [e.name for e in prof.events()]


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
@pytest.mark.parametrize("switch", ["1", None])
def test_sm90_device_runs_the_sm90a_kernel_only_when_switched_on(switch, monkeypatch):
    if switch is None:
        monkeypatch.delenv("FASTTX_ATTENTION_SM90")
    names = _kernels_run(backward=False)
    assert any("attention_fwd_sm90_kernel" in n for n in names) == (switch == "1"), names
    assert any("attention_fwd_kernel" in n for n in names) == (switch is None), names


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernels run on sm_90 devices only")
@pytest.mark.parametrize("switch", ["1", None])
def test_sm90_device_runs_the_sm90a_backward_kernels_only_when_switched_on(switch, monkeypatch):
    if switch is None:
        monkeypatch.delenv("FASTTX_ATTENTION_SM90")
    names = _kernels_run(backward=True)
    assert any("attention_bwd_kv_sm90_kernel" in n for n in names) == (switch == "1"), names
    assert any("attention_bwd_kv_kernel" in n for n in names) == (switch is None), names
    assert any("attention_bwd_q_sm90_kernel" in n for n in names) == (switch == "1"), names
    assert any("attention_bwd_q_kernel" in n for n in names) == (switch is None), names
    assert any("attention_bwd_delta_kernel" in n for n in names), names
