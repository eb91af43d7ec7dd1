"""fasttx.patch on torchvision models built from small configs with random weights: a VisionTransformer
(nn.MultiheadAttention with batch_first, nn.LayerNorm) and a Swin Transformer (nn.LayerNorm over
channels-last feature maps, windowed attention of its own that stays torchvision's). Output and every
parameter gradient against the stock model in fp32, inference in eval mode on both sides of the size up
to which torch's fused inference kernel runs, fp16 on the Triton kernels, torch.compile."""

import copy

import pytest
import torch

import fasttx
from fasttx.nn import MultiheadAttention
from fasttx.nn._backend import TORCH_INFERENCE_KERNEL_MAX_ELEMENTS

from .model_checks import assert_half_within_twice_stock, assert_matches_stock

models = pytest.importorskip("torchvision.models")

IMAGE = 16


def _vit(layers=2):
    torch.manual_seed(0)
    return models.VisionTransformer(image_size=IMAGE, patch_size=4, num_layers=layers, num_heads=4, hidden_dim=32,
                                    mlp_dim=64, num_classes=5)


def _swin():
    """Without stochastic depth, whose random draws would differ between the two models."""
    torch.manual_seed(0)
    return models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                  window_size=[2, 2], stochastic_depth_prob=0.0, num_classes=5)


def test_vit_matches_stock():
    stock = _vit()
    fast = fasttx.patch(copy.deepcopy(stock), backend="torch")
    # 2 encoder blocks x (MHA, 2 LayerNorms), the encoder's final LayerNorm.
    assert fast.fasttx_patched == {"MultiheadAttention": 2, "LayerNorm": 5}
    assert isinstance(fast.encoder.layers[0].self_attention, MultiheadAttention)
    assert fast.state_dict().keys() == stock.state_dict().keys()
    assert_matches_stock(fast, stock, torch.randn(2, 3, IMAGE, IMAGE))


@pytest.mark.parametrize("batch", [2, 64], ids=["small: torch's fused kernel", "large: fasttx's path"])
def test_vit_inference(batch):
    """Eval mode without grad, where torch.nn's MultiheadAttention runs its fused kernel: fasttx hands a
    small input to the same kernel and runs its own path past TORCH_INFERENCE_KERNEL_MAX_ELEMENTS
    tokens x features; both equal the stock model."""
    stock = _vit().eval()
    fast = fasttx.patch(copy.deepcopy(stock), backend="torch")
    images = torch.randn(batch, 3, IMAGE, IMAGE)
    tokens = (IMAGE // 4) ** 2 + 1  # patches and the class token
    assert (batch * tokens * 32 > TORCH_INFERENCE_KERNEL_MAX_ELEMENTS) == (batch == 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), stock(images), rtol=1e-4, atol=1e-5)


def test_swin_matches_stock():
    stock = _swin()
    fast = fasttx.patch(copy.deepcopy(stock), backend="torch")
    # Per stage a block's 2 norms, the patch merging's norm after stage 1, the final norm.
    assert fast.fasttx_patched == {"LayerNorm": 7}
    assert_matches_stock(fast, stock, torch.randn(2, 3, IMAGE, IMAGE))


@pytest.mark.parametrize("build,ops", [(_vit, ("attention", "layer_norm")), (_swin, ("layer_norm",))],
                         ids=["vit", "swin"])
def test_fp16_triton_kernels(build, ops):
    """Output and every parameter gradient in fp16 on the Triton kernels, within FlashAttention's rule."""
    for op in ops:
        fasttx.backends.last_used.pop(op, None)
    assert_half_within_twice_stock(build(), torch.randn(2, 3, IMAGE, IMAGE), "triton")
    assert all(fasttx.backends.last_used.get(op) == "triton" for op in ops)


def test_vit_torch_compile_fullgraph():
    reference = _vit(layers=1)
    compiled_model = fasttx.patch(copy.deepcopy(reference), backend="torch")
    assert_matches_stock(compiled_model, reference, torch.randn(2, 3, IMAGE, IMAGE),
                         run=torch.compile(compiled_model, fullgraph=True))
