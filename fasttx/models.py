"""Small Transformer models built from plain torch.nn layers, for ``python -m fasttx profile | train``.

Every model is what a user writes with torch.nn (pre-norm nn.TransformerEncoderLayer with
batch_first=True, nn.LayerNorm, nn.Embedding); the fasttx variant is the same model after
``fasttx.patch`` (see ``patched_copy``), so the commands measure exactly what a user gets.
Each model's ``forward(inputs, targets)`` returns the training loss, and ``example_batch``
draws a synthetic batch of the right kind for profiling.

``hf:llama``, ``hf:qwen2`` and ``hf:gpt2`` are Hugging Face transformers causal LMs built from a
config with random weights (no download), stock attention "sdpa"; their fasttx variant is again
``fasttx.patch``, which switches them to attn_implementation "fasttx" and converts their RMSNorms.
``tv:vit`` is torchvision's VisionTransformer, likewise from its constructor with random weights.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

HF_MODELS = ("hf:llama", "hf:qwen2", "hf:gpt2")
MODELS = ("gpt", "encoder", "vit-like", *HF_MODELS, "tv:vit")
VIT_PATCH = 16  # pixels per patch side, as ViT-B/16
VIT_CLASSES = 1000
MASK_FRACTION = 0.15  # encoder: share of tokens to predict, as BERT


def _check_heads(d_model, n_heads):
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({n_heads})")


class Body(nn.Module):
    """Learned positions, pre-norm Transformer layers, final LayerNorm: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model, n_layers, n_heads, seq_len, causal, dropout=0.0):
        super().__init__()
        _check_heads(d_model, n_heads)
        self.pos = nn.Embedding(seq_len, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.causal = causal
        # torch wants the mask itself alongside is_causal=True (it then runs SDPA's causal path).
        mask = nn.Transformer.generate_square_subsequent_mask(seq_len) if causal else None
        self.register_buffer("mask", mask, persistent=False)
        self.activation_checkpointing = False
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x):
        length = x.shape[1]
        x = x + self.pos.weight[:length]
        mask = self.mask[:length, :length] if self.causal else None
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, mask, None, self.causal, use_reentrant=False)
            else:
                x = layer(x, src_mask=mask, is_causal=self.causal)
        return self.norm(x)


class LanguageModel(nn.Module):
    """Token embeddings -> Body -> head tied to the embeddings. causal=True: a GPT trained on the
    next token; causal=False: a bidirectional encoder trained on masked tokens."""

    def __init__(self, vocab_size, d_model, n_layers, n_heads, seq_len, causal, dropout=0.0):
        super().__init__()
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)  # N(0, 1) would give huge logits through the tied head
        self.body = Body(d_model, n_layers, n_heads, seq_len, causal, dropout)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens, targets):
        logits = self.head(self.body(self.embed(tokens)))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def example_batch(self, batch_size, generator):
        device = self.embed.weight.device
        tokens = torch.randint(0, self.vocab_size, (batch_size, self.seq_len + 1), generator=generator)
        if self.body.causal:
            return tokens[:, :-1].to(device), tokens[:, 1:].to(device)
        tokens = tokens[:, :-1]
        masked = torch.rand(tokens.shape, generator=generator) < MASK_FRACTION
        inputs = tokens.masked_fill(masked, 0)  # token 0 stands for [MASK]
        return inputs.to(device), tokens.masked_fill(~masked, -100).to(device)


def _image_size(model, patches):
    """The side in pixels of square images cut into ``patches`` 16x16 patches (a square number)."""
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{model} needs seq (the number of patches) to be a square, got {patches}")
    return side * VIT_PATCH


def _image_batch(image_size, batch_size, generator, device):
    """Random images and class labels."""
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, VIT_CLASSES, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


class VisionModel(nn.Module):
    """ViT-like classifier: 16x16 patches -> Body (bidirectional) -> mean pool -> class logits."""

    def __init__(self, d_model, n_layers, n_heads, seq_len, dropout=0.0):
        super().__init__()
        self.image_size = _image_size("vit-like", seq_len)
        self.patch = nn.Conv2d(3, d_model, VIT_PATCH, stride=VIT_PATCH)
        self.body = Body(d_model, n_layers, n_heads, seq_len, causal=False, dropout=dropout)
        self.head = nn.Linear(d_model, VIT_CLASSES)

    def forward(self, images, labels):
        x = self.patch(images).flatten(2).transpose(1, 2)
        return F.cross_entropy(self.head(self.body(x).mean(1)).float(), labels)

    def example_batch(self, batch_size, generator):
        return _image_batch(self.image_size, batch_size, generator, self.head.weight.device)


class TorchvisionViT(nn.Module):
    """torchvision's VisionTransformer (nn.MultiheadAttention, nn.LayerNorm, a class token) built from its
    constructor with random weights: 16x16 patches, MLP 4 * d_model; the loss is cross-entropy on its
    class logits."""

    def __init__(self, d_model, n_layers, n_heads, seq_len, dropout=0.0):
        super().__init__()
        try:
            from torchvision.models import VisionTransformer
        except ImportError as error:
            raise ImportError("model tv:vit needs torchvision: pip install torchvision") from error
        _check_heads(d_model, n_heads)
        self.image_size = _image_size("tv:vit", seq_len)
        self.model = VisionTransformer(image_size=self.image_size, patch_size=VIT_PATCH, num_layers=n_layers,
                                       num_heads=n_heads, hidden_dim=d_model, mlp_dim=4 * d_model, dropout=dropout,
                                       attention_dropout=dropout, num_classes=VIT_CLASSES)

    def forward(self, images, labels):
        return F.cross_entropy(self.model(images).float(), labels)

    def example_batch(self, batch_size, generator):
        return _image_batch(self.image_size, batch_size, generator, self.model.heads.head.weight.device)


class HFCausalLM(nn.Module):
    """A transformers causal LM from a config (random weights): next-token loss on its logits.
    llama and qwen2: SwiGLU FFN of 4 * d_model, RoPE, RMSNorm; qwen2 with half as many key/value
    heads as query heads (grouped-query attention) when heads is even; gpt2: GELU FFN 4 * d_model,
    learned positions, LayerNorm."""

    def __init__(self, kind, vocab_size, d_model, n_layers, n_heads, seq_len, dropout=0.0):
        super().__init__()
        try:
            import transformers
        except ImportError as error:
            raise ImportError(f"model hf:{kind} needs transformers: pip install 'fasttx[hf]'") from error
        _check_heads(d_model, n_heads)
        self.vocab_size, self.seq_len = vocab_size, seq_len
        if kind == "gpt2":
            config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=d_model,
                                             n_layer=n_layers, n_head=n_heads, resid_pdrop=dropout,
                                             embd_pdrop=dropout, attn_pdrop=dropout)
        else:
            config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
            kv_heads = n_heads // 2 if kind == "qwen2" and n_heads % 2 == 0 else n_heads
            config = config_class(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
                                  num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                  num_key_value_heads=kv_heads, max_position_embeddings=seq_len,
                                  attention_dropout=dropout)
        self.model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")

    def forward(self, tokens, targets):
        logits = self.model(input_ids=tokens).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def example_batch(self, batch_size, generator):
        tokens = torch.randint(0, self.vocab_size, (batch_size, self.seq_len + 1), generator=generator)
        device = self.model.device
        return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def set_activation_checkpointing(model, enabled):
    """Recompute each Transformer layer in the backward (training only)."""
    if isinstance(model, HFCausalLM):
        # activation_* in newer transformers, gradient_* (deprecated there) before
        prefix = "activation" if hasattr(model.model, "activation_checkpointing_enable") else "gradient"
        if enabled:
            getattr(model.model, f"{prefix}_checkpointing_enable")({"use_reentrant": False})
        else:
            getattr(model.model, f"{prefix}_checkpointing_disable")()
    else:
        model.body.activation_checkpointing = enabled


def build(name, d_model, n_layers, n_heads, seq_len, vocab_size=256, dropout=0.0):
    """One of MODELS: torch.nn layers, (hf:...) a transformers model, or (tv:vit) a torchvision one."""
    if name in HF_MODELS:
        return HFCausalLM(name.removeprefix("hf:"), vocab_size, d_model, n_layers, n_heads, seq_len, dropout)
    if name == "vit-like":
        return VisionModel(d_model, n_layers, n_heads, seq_len, dropout)
    if name == "tv:vit":
        return TorchvisionViT(d_model, n_layers, n_heads, seq_len, dropout)
    if name not in ("gpt", "encoder"):
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return LanguageModel(vocab_size, d_model, n_layers, n_heads, seq_len, name == "gpt", dropout)


def patch_in_place(model, backend):
    """``fasttx.patch(model, backend)``; returns (model, {torch.nn class name: count converted})."""
    import fasttx

    model = fasttx.patch(model, backend=backend)
    return model, model.fasttx_patched


def patched_copy(model, backend):
    """The fasttx variant of ``model``: a copy with the same weights, patched (see patch_in_place)."""
    return patch_in_place(copy.deepcopy(model), backend)
