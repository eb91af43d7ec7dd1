"""``attn_implementation="fasttx"`` for Hugging Face transformers models.

transformers models that support selectable attention call, per layer,
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, attention_mask,
dropout=, scaling=, is_causal=, **features)`` with (B, H, L, E) query and (B, Hkv, S, E) key/value,
and expect ((B, L, H, Ev) output, weights). ``attention_forward`` below answers with
``fasttx.scaled_dot_product_attention``: grouped-query heads without repeating K/V (enable_gqa),
dropout, the model's scaling, weights None. The mask comes from transformers' own SDPA mask builder,
registered for "fasttx" in AttentionMaskInterface: a bool (B, 1, L, S) mask, True = attend, that holds
padding, packed-sequence and sliding-window structure, or None for plain causal (the kernel's
is_causal then skips masked blocks) or no mask. Without that registration transformers would build no
mask at all for an unknown implementation and padding would be silently ignored.

Features the kernels do not have (``softcap``, attention sinks ``s_aux``, T5's ``position_bias``,
``output_attentions``), and any call from a model whose class declines transformers' own SDPA path
(``_supports_sdpa = False``): an explicit backend raises a ValueError naming the feature; "auto" runs
the model's own eager attention for those layers instead and says so once.
"""

import logging
import sys

import torch

from .. import backends, functional

logger = logging.getLogger("fasttx")
NAME = "fasttx"
_warned = set()


def register_attention():
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, attention_forward)


def register_mask():
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register(NAME, sdpa_mask)


_declines = {}  # attention module class -> whether its modeling file has a model with _supports_sdpa False


def _declines_sdpa(attention_class):
    """fasttx serves the calls transformers' SDPA path serves; a model class that turns that path
    down (``_supports_sdpa = False``: soft-capping, sinks, other score tricks) is not served either."""
    if attention_class not in _declines:
        namespace = getattr(sys.modules.get(attention_class.__module__), "__dict__", {})
        pretrained = _pretrained_model_class()
        _declines[attention_class] = pretrained is not None and any(
            isinstance(value, type) and issubclass(value, pretrained) and value.__module__ == attention_class.__module__
            and value.__dict__.get("_supports_sdpa") is False for value in list(namespace.values()))
    return _declines[attention_class]


def _unsupported_feature(module, query, key, attention_mask, kwargs):
    """The feature this call asks for that fasttx's attention does not have, or None."""
    for name, what in (("softcap", "logit soft-capping (softcap)"), ("s_aux", "attention sinks (s_aux)"),
                       ("position_bias", "a learned position bias (position_bias)")):
        if kwargs.get(name) is not None:
            return what
    if kwargs.get("output_attentions"):
        return "returning the attention weights (output_attentions=True)"
    if _declines_sdpa(type(module)):
        return (f"attention that its model turns down for transformers' SDPA path (_supports_sdpa = False "
                f"in {type(module).__module__})")
    window = kwargs.get("sliding_window")
    if window is not None and attention_mask is None and key.shape[-2] > window:
        # transformers puts the window in the mask; without one it would be silently ignored here.
        return f"a sliding window ({window} keys) with no attention mask to hold it"
    return None


def _eager_fallback(module, feature):
    """The model's own eager attention (transformers' convention: ``eager_attention_forward`` in the
    module's modeling file), announced once per model class and feature."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"fasttx attention: {type(module).__name__} asks for {feature}, which fasttx does "
                         f"not support, and its module has no eager_attention_forward to fall back to; "
                         f"use attn_implementation='eager'")
    if (type(module), feature) not in _warned:
        _warned.add((type(module), feature))
        logger.warning("fasttx attention: %s asks for %s, which fasttx does not support; backend 'auto' runs "
                       "the model's eager attention for it", type(module).__name__, feature)
    return eager


def _additive_mask(query, key, attention_mask, is_causal):
    """The float mask transformers' eager attention adds to the scores (it builds no causal mask
    itself), from the SDPA-style bool mask (True = attend) or the causal flag."""
    if is_causal:  # no mask and as many queries as keys (else transformers gives a mask)
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
        attention_mask = attention_mask[None, None]  # (B, H, L, S) as the eager attention slices it
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    return torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~attention_mask,
                                                                              torch.finfo(query.dtype).min)


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """transformers' attention-function signature on fasttx.scaled_dot_product_attention; see the
    module docstring. The backend is the one ``fasttx.patch`` gave the module, else the default."""
    backend = module.__dict__.get("_fasttx_backend", "auto")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA path: causal only without a mask (the mask then holds it) and for more than
    # one query (one decoding query sees every cached key). The shape test first keeps compile happy.
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    feature = _unsupported_feature(module, query, key, attention_mask, kwargs)
    if feature is not None:
        if backends.requested(backend) != "auto":
            raise ValueError(f"fasttx attention: {type(module).__name__} asks for {feature}, which fasttx's "
                             f"attention (backend={backends.requested(backend)!r}) does not support; use "
                             f"backend 'auto' (falls back to the model's eager attention) or another "
                             f"attn_implementation")
        eager = _eager_fallback(module, feature)
        return eager(module, query, key, value, _additive_mask(query, key, attention_mask, is_causal),
                     dropout=dropout, scaling=scaling, **kwargs)
    out = functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=bool(is_causal), scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1], backend=backend)
    return out.transpose(1, 2).contiguous(), None


def _pretrained_model_class():
    module = sys.modules.get("transformers.modeling_utils")
    return None if module is None else module.PreTrainedModel


def switch_attention(model, backend):
    """Switch every transformers model inside ``model`` to attn_implementation "fasttx" and give its
    attention modules (those with transformers' ``is_causal`` attribute) ``backend``. Returns
    {attention class name: count}; models that cannot switch (no AttentionInterface support) are
    logged and left as they are."""
    pretrained = _pretrained_model_class()
    if pretrained is None:  # transformers not imported: model holds no transformers model
        return {}
    switched = []
    for module in model.modules():
        if not isinstance(module, pretrained) or any(module.config is config for config in switched):
            continue
        if not module._can_set_attn_implementation():
            logger.warning("fasttx.patch: %s does not support selectable attention (transformers' "
                           "AttentionInterface); its attention is left as it is", type(module).__name__)
            continue
        if module.config._attn_implementation != NAME:
            module.set_attn_implementation(NAME)
        switched += [m.config for m in module.modules() if isinstance(m, pretrained)]
    counts = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "is_causal") and any(config is c for c in switched) and not isinstance(module, pretrained):
            module.__dict__["_fasttx_backend"] = backend
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts
