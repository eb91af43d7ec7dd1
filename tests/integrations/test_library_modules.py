"""fasttx.patch on library modules listed by class: each listed norm class against the stock module
(forward, gradients, output dtype, state_dict), and a timm ViT against the stock one (logits, every
parameter gradient, fp16 on the Triton kernels, torch.compile)."""

import copy
import importlib

import pytest
import torch

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

