"""fasttx.patch on library modules listed by class: each listed norm class against the stock module
(forward, gradients, output dtype, state_dict), and a timm ViT against the stock one (logits, every
parameter gradient, fp16 on the Triton kernels, torch.compile)."""

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the global name _forward_on_fasttx_sdpa looks for)

import fasttx
from fasttx import functional
from fasttx.integrations import library_modules
from fasttx.testing import TOLERANCE, rel_error

from ..conftest import runnable_backends
from .model_checks import assert_half_within_twice_stock, assert_matches_stock

pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

NORMS = [key for key, behaviour in library_modules.LIBRARY_MODULES.items()
         if behaviour is not library_modules.SDPAOnFasttx]
HIDDEN = 48


def _norm_class(key):
    module_name, class_name = key
    return getattr(importlib.import_module(module_name), class_name)



DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
          (torch.float32, torch.bfloat16)]


# torch's layer_norm refuses half parameters with fp32 input: no stock LayerNorm result to match there.
@pytest.mark.parametrize("key, input_dtype, weight_dtype", [
    (key, *dtypes) for key in NORMS for dtypes in DTYPES
    if not (key[1] == "LayerNorm" and dtypes == (torch.float32, torch.bfloat16))],
    ids=lambda value: value[1] if isinstance(value, tuple) else str(value).removeprefix("torch."))
@pytest.mark.parametrize("backend", runnable_backends(op="rms_norm"))
def test_listed_norm_matches_the_stock_class(key, input_dtype, weight_dtype, backend):
    stock = _norm_class(key)(HIDDEN, eps=1e-5).to(weight_dtype)
    with torch.no_grad():
        for param in stock.parameters():
            param.copy_(torch.randn_like(param))
    converted = copy.deepcopy(stock)
    assert fasttx.patch(converted, backend=backend).fasttx_patched == {key[1]: 1}
    assert isinstance(converted, type(stock)) and converted.state_dict().keys() == stock.state_dict().keys()
    x = (torch.randn(3, 5, HIDDEN) * 3 + 1).to(input_dtype)
    x_stock, x_fast = (x.clone().requires_grad_() for _ in range(2))
    out_stock, out_fast = stock(x_stock), converted(x_fast)
    assert out_fast.dtype == out_stock.dtype
    grad = torch.randn_like(out_stock)
    out_stock.backward(grad)
    out_fast.backward(grad)
    # Stock rounds twice in half precision (normalised x, then times the weight), fasttx once.
    tolerance = TOLERANCE[torch.float32 if torch.float32 == input_dtype == weight_dtype else torch.bfloat16]
    pairs = [(out_fast, out_stock), (x_fast.grad, x_stock.grad)]
    pairs += [(a.grad, b.grad) for a, b in zip(converted.parameters(), stock.parameters())]
    for fast, expected in pairs:
        assert fast.dtype == expected.dtype and rel_error(fast, expected) <= tolerance


def test_the_listed_classes_exist_in_the_installed_libraries():
    """Every listed transformers and timm class resolves (timm's ViT Attention in one of its two homes),
    so a renamed class shows here rather than as a silently unconverted module."""
    importlib.import_module("timm.models.vision_transformer")
    found = {key: _class_or_none(key) for key in library_modules.LIBRARY_MODULES}
    timm_attention = [key for key, behaviour in library_modules.LIBRARY_MODULES.items()
                      if behaviour is library_modules.SDPAOnFasttx]
    assert [key for key in found if found[key] is None and key not in timm_attention] == []
    assert any(found[key] is not None for key in timm_attention)


def _class_or_none(key):
    try:
        return _norm_class(key)
    except (ImportError, AttributeError):
        return None


def _vit(**overrides):
    options = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5, qk_norm=True)
    return timm.models.vision_transformer.VisionTransformer(**(options | overrides)).eval()


@pytest.fixture
def sdpa_calls(monkeypatch):
    seen = []
    original = functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(library_modules.functional, "scaled_dot_product_attention", spy)
    return seen


def test_timm_vit_matches_stock_with_fasttx_attention_and_norms(sdpa_calls):
    """On CPU with the torch backend fasttx's SDPA is torch's: the attention runs its stock forward as it
    is (no TorchFunctionMode, whose Python dispatch of every op cost 0.87x the stock speed); on a
    kernel backend (the Triton interpreter here) its SDPA call goes to fasttx's."""
    stock = _vit()
    fast = fasttx.patch(copy.deepcopy(stock), backend="torch")
    assert fast.fasttx_patched == {"Attention": 2, "LayerNorm": 9}  # 2 blocks x (2 + q/k norms), final norm
    assert fast.state_dict().keys() == stock.state_dict().keys()
    assert isinstance(fast.blocks[0].attn, type(stock.blocks[0].attn)) and fast.blocks[0].attn.backend == "torch"
    assert_matches_stock(fast, stock, torch.randn(2, 3, 16, 16))
    assert sdpa_calls == [] and fasttx.backends.last_used["attention"] == "torch"
    for block in fast.blocks:
        block.attn.backend = "triton"
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("TRITON_INTERPRET", "1")
        assert_matches_stock(fast, stock, torch.randn(2, 3, 16, 16))
    assert [c["backend"] for c in sdpa_calls] == ["triton", "triton"]


@pytest.fixture
def mode_calls(monkeypatch):
    """The torch functions the TorchFunctionMode fallback sees (none where the forward's own code runs on
    fasttx's SDPA)."""
    seen = []
    original = library_modules._SDPAToFasttx.__torch_function__

    def spy(self, func, *args, **kwargs):
        seen.append(func)
        return original(self, func, *args, **kwargs)

    monkeypatch.setattr(library_modules._SDPAToFasttx, "__torch_function__", spy)
    return seen


def test_timm_attention_runs_its_code_on_fasttx_sdpa_without_the_mode(sdpa_calls, mode_calls, monkeypatch):
    """On a kernel backend the stock forward's code runs with its global F's SDPA made fasttx's: no
    TorchFunctionMode (which sent each of the forward's ~10 torch functions through Python). Where the
    code calls SDPA some other way the mode does it, with the same result."""
    stock = _vit(depth=1)
    fast = fasttx.patch(copy.deepcopy(stock), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    images = torch.randn(2, 3, 16, 16)
    assert_matches_stock(fast, stock, images)
    assert [c["backend"] for c in sdpa_calls] == ["triton"] and mode_calls == []
    monkeypatch.setattr(type(fast.blocks[0].attn), "_forwards_on_fasttx_sdpa", dict.fromkeys(fasttx.backends.CHOICES))
    assert_matches_stock(fast, stock, images)
    assert [c["backend"] for c in sdpa_calls] == ["triton"] * 2
    assert torch.nn.functional.scaled_dot_product_attention in mode_calls and len(mode_calls) > 5


def _sdpa_through_f(q):
    return F.scaled_dot_product_attention(q, q, q)


def _sdpa_through_f_and_qualified(q):
    return F.scaled_dot_product_attention(q, q, q) + torch.nn.functional.scaled_dot_product_attention(q, q, q)


def _sdpa_through_local_f(q):
    F = torch.nn.functional  # noqa: N806 (a local F, which the globals swap would not reach)
    return F.scaled_dot_product_attention(q, q, q)


def test_only_code_calling_sdpa_through_torchs_functional_as_global_f_is_remade():
    remade = library_modules._forward_on_fasttx_sdpa(_sdpa_through_f, "torch")
    assert remade.__code__ is _sdpa_through_f.__code__ and _sdpa_through_f.__globals__["F"] is F
    assert remade.__globals__["F"].scaled_dot_product_attention.__func__ is \
        library_modules._FunctionalOnFasttx.scaled_dot_product_attention
    assert remade.__globals__["F"].softmax is F.softmax
    q = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(remade(q), _sdpa_through_f(q))
    for other in (_sdpa_through_f_and_qualified, _sdpa_through_local_f,
                  type(_sdpa_through_f)(_sdpa_through_f.__code__, {**_sdpa_through_f.__globals__, "F": torch})):
        assert library_modules._forward_on_fasttx_sdpa(other, "torch") is None


def test_timm_vit_on_a_kernel_backend_compiles_fullgraph(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch._dynamo.reset()
    reference = _vit(depth=1)
    compiled_model = fasttx.patch(copy.deepcopy(reference), backend="triton")
    assert_matches_stock(compiled_model, reference, torch.randn(2, 3, 16, 16),
                         run=torch.compile(compiled_model, fullgraph=True, backend="aot_eager"))


def test_timm_unfused_attention_is_switched_to_the_fused_path(sdpa_calls, monkeypatch):
    stock = _vit(depth=1)
    stock.blocks[0].attn.fused_attn = False
    fast = fasttx.patch(copy.deepcopy(stock), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fast(images), stock(images), rtol=1e-4, atol=1e-5)
    assert fast.blocks[0].attn.fused_attn and len(sdpa_calls) == 1


def test_timm_vit_fp16_triton_kernels():
    """Logits and every parameter gradient in fp16 on the Triton kernels, within FlashAttention's rule."""
    assert_half_within_twice_stock(_vit(depth=1), torch.randn(2, 3, 16, 16), "triton")
    assert fasttx.backends.last_used["attention"] == "triton"


def test_timm_vit_torch_compile_fullgraph():
    reference = _vit(depth=1)
    compiled_model = fasttx.patch(copy.deepcopy(reference), backend="torch")
    assert_matches_stock(compiled_model, reference, torch.randn(2, 3, 16, 16),
                         run=torch.compile(compiled_model, fullgraph=True))


@pytest.mark.parametrize("key", [key for key, behaviour in library_modules.LIBRARY_MODULES.items()
                                 if behaviour in (library_modules.LlamaStyleRMSNorm, library_modules.T5StyleRMSNorm)],
                         ids=lambda key: key[1])
def test_listed_rms_norm_runs_its_stock_forward_on_torch(key, monkeypatch):
    """On the torch backend a listed RMSNorm is its stock class's forward, bit for bit; on a kernel
    backend it runs fasttx.rms_norm (the Triton kernels, interpreted on CPU here)."""
    stock = _norm_class(key)(HIDDEN, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        stock.weight.normal_()
    converted = fasttx.patch(copy.deepcopy(stock), backend="auto")
    x = torch.randn(3, 5, HIDDEN, dtype=torch.bfloat16)
    assert torch.equal(converted(x), stock(x))
    calls = []
    monkeypatch.setattr(functional, "rms_norm", lambda *args, **kwargs: calls.append(kwargs["backend"]) or args[0])
    converted(x)
    assert calls == []
    converted.backend = "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    converted(x)
    assert calls == ["triton"]

