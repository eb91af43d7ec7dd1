"""Backend selection: auto, explicit, use_backend, FASTTX_BACKEND, clear errors, info()."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import fasttx
from fasttx import backends

from .conftest import DEVICE


def test_auto_on_cpu_runs_the_reference():
    fasttx.layer_norm(torch.randn(2, 8), (8,))
    assert backends.last_used["layer_norm"] == "torch"


def test_use_backend_and_environment(monkeypatch):
    with fasttx.use_backend("torch"):
        assert backends.default_backend() == "torch"
        with fasttx.use_backend("triton"):
            assert backends.default_backend() == "triton"
        assert backends.default_backend() == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        with fasttx.use_backend("fast"):
            pass
    monkeypatch.setattr(backends, "_ENVIRONMENT_DEFAULT", "torch")  # what FASTTX_BACKEND=torch gives
    assert backends.default_backend() == "torch"
    with fasttx.use_backend("triton"):
        assert backends.default_backend() == "triton"
        # The block's choice is this thread's: another thread sees the default.
        seen = []
        other = threading.Thread(target=lambda: seen.append(backends.default_backend()))
        other.start()
        other.join()
        assert seen == ["torch"]


def test_use_backend_is_the_backend_of_the_calls_that_ask_for_auto():
    """Inside a use_backend() block, a call with backend="auto" (the default) runs the block's backend,
    named explicitly, so it never falls back; a backend the call names is its own."""
    x = torch.randn(2, 8)  # on the CPU, which the CUDA extension does not run on
    q = x[None, None]
    with fasttx.use_backend("cuda"):
        for call in (lambda: fasttx.layer_norm(x, (8,)), lambda: fasttx.rms_norm(x, (8,)),
                     lambda: fasttx.softmax(x, -1), lambda: fasttx.scaled_dot_product_attention(q, q, q)):
            with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run here: .*got a cpu tensor"):
                call()
        torch.testing.assert_close(fasttx.softmax(x, -1, backend="torch"), torch.softmax(x, -1))
        assert backends.last_used["softmax"] == "torch"
    with fasttx.use_backend("torch"):
        torch.testing.assert_close(fasttx.softmax(x, -1), torch.softmax(x, -1))
        assert backends.last_used["softmax"] == "torch"


def test_environment_is_read_at_import_and_a_bad_value_fails_the_first_call():
    """FASTTX_BACKEND is read once, by ``import fasttx`` (per call it cost a small op ~3 us of host
    time); a value that is not a backend does not break the import, but every call that needs the
    default says what is wrong."""
    code = textwrap.dedent("""
        import torch, fasttx
        from fasttx import backends
        assert backends._ENVIRONMENT_DEFAULT == "gpu"
        try:
            fasttx.layer_norm(torch.randn(2, 8), (8,))
        except ValueError as e:
            print(e)
    """)
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTTX_BACKEND": "gpu"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "FASTTX_BACKEND must be one of ('auto', 'torch', 'triton', 'cuda'), got 'gpu'" in run.stdout


def test_explicit_cuda_on_cpu_tensor_raises():
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run here: .*CUDA tensors, got a cpu tensor"):
        fasttx.layer_norm(torch.randn(2, 8), (8,), backend="cuda")
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run here"):
        fasttx.rms_norm(torch.randn(2, 8), (8,), backend="cuda")


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="only under TRITON_INTERPRET=1"):
        fasttx.layer_norm(torch.randn(2, 8), (8,), backend="triton")


def test_explicit_kernel_backend_rejects_float64():
    with pytest.raises(RuntimeError, match="take float32, float16 or bfloat16 input, got torch.float64"):
        fasttx.layer_norm(torch.randn(2, 8, dtype=torch.float64), (8,), backend="triton")
    # auto falls back to the reference, which computes float64 in float64
    out = fasttx.layer_norm(torch.randn(2, 8, dtype=torch.float64, device=DEVICE), (8,))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_bad_input_errors(op):
    fn = getattr(fasttx, op)
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"normalized_shape \[9\] must equal the trailing dims of input, got input of shape \[4, 8\]"):
        fn(x, (9,))
    with pytest.raises(ValueError, match=r"normalized_shape \[2, 4, 8\] must equal"):
        fn(x, (2, 4, 8))
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(7,\)"):
        fn(x, (8,), torch.ones(7, device=DEVICE))
    with pytest.raises(TypeError, match="input must have a floating-point dtype, got torch.int64"):
        fn(torch.ones(4, 8, dtype=torch.long), (8,))
    with pytest.raises(TypeError, match="input must be a Tensor, got list"):
        fn([[1.0] * 8], (8,))
    with pytest.raises(RuntimeError, match=r"weight must be on the input's device .*, got meta"):
        fn(x, (8,), torch.ones(8, device="meta"))


@pytest.mark.parametrize("call", [
    lambda x: fasttx.layer_norm(x, (9,)),
    lambda x: fasttx.rms_norm(x, ()),
    lambda x: fasttx.layer_norm(x, (8,), None, torch.ones(7, device=DEVICE)),
    lambda x: fasttx.nn.LayerNorm(9, device=DEVICE)(x),
    lambda x: fasttx.nn.RMSNorm(9, device=DEVICE)(x),
    lambda x: fasttx.softmax(x, mask=torch.ones(3, 8, dtype=torch.bool, device=DEVICE)),
    lambda x: fasttx.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None],
                                                  attn_mask=torch.ones(3, 4, dtype=torch.bool, device=DEVICE)),
], ids=["layer_norm", "rms_norm", "bias", "nn.LayerNorm", "nn.RMSNorm", "softmax mask", "attention mask"])
def test_shape_errors_are_catchable_as_what_torch_raises(call):
    """Code written around torch's ops catches RuntimeError for a shape that does not fit: the drop-ins'
    shape errors are that too, and still the ValueError naming the argument."""
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError) as raised:
        call(x)
    assert isinstance(raised.value, RuntimeError) and str(raised.value).startswith("fasttx.")


def test_info_reports_versions_and_backends():
    report = fasttx.info()
    assert report["torch"] == torch.__version__
    (table,) = [v for k, v in report.items() if k.startswith("backends")]
    assert table["torch"] == "available"
    assert set(table) == {"torch", "triton", "cuda"}
    assert all(v == "available" or v.startswith("unavailable: ") for v in table.values())


def test_auto_runs_only_the_kernels_a_gpu_run_validated(monkeypatch):
    """On CUDA tensors with every backend available, auto takes the first kernel AUTO_KERNELS lists for
    the op, else torch; the shipped table lists none yet (the first H200 run measured no kernel faster
    than torch); explicit backends are not affected."""
    import types

    monkeypatch.setattr(backends, "unavailable_reason", lambda *args, **kwargs: None)
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"), is_cuda=True, dtype=torch.float16)
    on_cpu = types.SimpleNamespace(device=torch.device("cpu"), is_cuda=False, dtype=torch.float16)
    ops = set(backends.AUTO_KERNELS)
    assert {"attention", "layer_norm", "rms_norm", "softmax"} <= ops  # every op has its entry
    for op in ops:
        assert backends.resolve(op, "auto", on_gpu) == "torch"
        assert backends.resolve(op, "cuda", on_gpu) == "cuda"
        assert backends.resolve(op, "triton", on_gpu) == "triton"
    monkeypatch.setitem(backends.AUTO_KERNELS, "softmax", ("cuda", "triton"))
    assert backends.resolve("softmax", "auto", on_gpu) == "cuda"
    assert backends.resolve("softmax", "auto", on_cpu) == "torch"
    monkeypatch.setattr(backends, "unavailable_reason", lambda b, *args, **kwargs: "not built" if b == "cuda" else None)
    assert backends.resolve("softmax", "auto", on_gpu) == "triton"
