"""fasttx.patch(model): turn torch.nn modules into their fasttx drop-ins, in place."""

import logging

import torch

from .integrations import convert_library_modules
from .nn._backend import convert

logger = logging.getLogger("fasttx")


def patch(model, backend="auto"):
    """Turn every torch.nn MultiheadAttention, LayerNorm, RMSNorm, Softmax, Transformer,
    TransformerEncoder/Decoder and TransformerEncoderLayer/DecoderLayer inside ``model`` (``model``
    itself included) into the fasttx module, in place: the same objects holding the same parameter
    tensors (device, dtype, requires_grad, train/eval mode kept; optimizers need no change), running
    the fasttx kernels with ``backend``. Whole Transformer layers are converted, not only their
    attention, since torch's encoder-layer fast path would otherwise bypass it in eval mode.
    Subclasses of those torch.nn types keep their own class (and forward).

    Library models too (see fasttx.integrations): a transformers model switches to
    attn_implementation "fasttx"; listed norm classes (transformers' Llama-style RMSNorms,
    T5LayerNorm, timm's LayerNorm) and timm's ViT Attention run on fasttx, keeping their class as a
    base, their parameters and state_dict.

    Returns ``model``; what was converted, {class name: count}, is logged (logger
    "fasttx", INFO) and kept as ``model.fasttx_patched``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fasttx.patch: model must be a torch.nn.Module, got {type(model).__name__}")
    converted = convert(model, backend)
    converted.update(convert_library_modules(model, backend))
    logger.info("fasttx.patch: converted %s", ", ".join(f"{n} {name}" for name, n in sorted(converted.items()))
                or "nothing")
    model.fasttx_patched = converted
    return model
