"""The sm_90a attention forward (csrc/attention/sm90) on a GPU: with FASTTX_ATTENTION_SM90=1 (its switch
until a GPU run validates it; every test here sets it), backend="cuda" at head dim 128 without mask or
dropout takes it on sm_90 devices (attention_launch.cpp); its output, and the gradients the
sm_80 backward computes from its lse, against the float64 reference. Elsewhere the same calls run the
sm_80 forward, so the tests still hold; on an sm_90 device the profiler shows which kernel ran.
On the CPU machine the CPU checks are tests/test_cuda_attention_sm90_emulated.py."""

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


@pytest.mark.skipif(not _on_sm90(), reason="the sm_90a kernel runs on sm_90 devices only")
@pytest.mark.parametrize("switch", ["1", None])
def test_sm90_device_runs_the_sm90a_kernel_only_when_switched_on(switch, monkeypatch):
    if switch is None:
        monkeypatch.delenv("FASTTX_ATTENTION_SM90")
    q, k, v = attention_inputs(1, 2, 2, 256, 256, 128, dtype=torch.bfloat16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fasttx.scaled_dot_product_attention(q, k, v, backend="cuda")
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert any("attention_fwd_sm90_kernel" in n for n in names) == (switch == "1"), names
    assert any("attention_fwd_kernel" in n for n in names) == (switch is None), names
