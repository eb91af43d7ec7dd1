"""attn_implementation="fasttx" and fasttx.patch on Hugging Face transformers models built from tiny
configs with random weights (no download): logits and every parameter gradient against the stock
model (eager attention), masks, GQA, encoder-decoder cross-attention, dropout, sliding window,
unsupported features, optimizer steps, torch.compile, generate(), and the lazy registration."""

import copy
import logging
import pickle
import subprocess
import sys

import pytest
import torch

import fasttx
from fasttx import functional
from fasttx.integrations import hf_transformers
from fasttx.testing import TOLERANCE, rel_error

from ..conftest import DEVICE

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, BATCH = 64, 10, 2
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _config(name, **overrides):
    configs = {
        "llama": lambda: transformers.LlamaConfig(**SIZES, num_key_value_heads=4, max_position_embeddings=64),
        "qwen2": lambda: transformers.Qwen2Config(**SIZES, num_key_value_heads=2, max_position_embeddings=64),
        "mistral": lambda: transformers.MistralConfig(**SIZES, num_key_value_heads=2, max_position_embeddings=64,
                                                      sliding_window=4),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4),
        "bert": lambda: transformers.BertConfig(**SIZES, max_position_embeddings=64),
        "vit": lambda: transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, image_size=16, patch_size=4, num_labels=5),
        "bart": lambda: transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                                encoder_attention_heads=4, decoder_attention_heads=4,
                                                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
    }
    config = configs[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _model_class(name):
    return {"bert": transformers.AutoModelForMaskedLM, "vit": transformers.AutoModelForImageClassification,
            "bart": transformers.AutoModelForSeq2SeqLM}.get(name, transformers.AutoModelForCausalLM)


def _pair(name, attn="eager", **overrides):
    """(stock model with ``attn``, the same weights with attn_implementation="fasttx"), in eval mode
    (GPT-2 and BERT default to dropout; gradients flow all the same)."""
    model_class = _model_class(name)
    stock = model_class.from_config(_config(name, **overrides), attn_implementation=attn)
    fast = model_class.from_config(_config(name, **overrides), attn_implementation="fasttx")
    fast.load_state_dict(stock.state_dict())
    return stock.eval(), fast.eval()


def _inputs(name, padded=True):
    """Model inputs and the bool (B, L) of positions whose outputs count (not padding)."""
    if name == "vit":
        return {"pixel_values": torch.randn(BATCH, 3, 16, 16)}, None
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    valid = torch.ones(BATCH, SEQ, dtype=torch.bool)
    if padded:  # the second sequence 3 shorter: left padding for causal LMs, right for BERT and BART's encoder
        valid[1, slice(0, 3) if name not in ("bert", "bart") else slice(SEQ - 3, SEQ)] = False
    inputs = {"input_ids": tokens, "attention_mask": valid.long()}
    if name == "bart":  # a shorter decoder input (cross-attention: L != S), unpadded: all its logits count
        inputs["decoder_input_ids"] = torch.randint(0, VOCAB, (BATCH, SEQ - 3))
        valid = torch.ones(BATCH, SEQ - 3, dtype=torch.bool)
    return inputs, valid


def _loss_and_logits(model, inputs, valid):
    logits = model(**inputs).logits
    kept = logits if valid is None else logits[valid]  # padded positions' outputs are undefined
    return (kept.float() * torch.linspace(-1, 1, kept.shape[-1], device=kept.device)).sum(), kept


def _assert_same_logits_and_grads(stock, fast, inputs, valid, rtol=1e-4, atol=1e-5, run_fast=None):
    """``run_fast``: what runs ``fast``'s forward (a compiled ``fast``), default ``fast``."""
    loss_s, logits_s = _loss_and_logits(stock, inputs, valid)
    loss_f, logits_f = _loss_and_logits(fast if run_fast is None else run_fast, inputs, valid)
    torch.testing.assert_close(logits_f, logits_s, rtol=rtol, atol=atol)
    loss_s.backward()
    loss_f.backward()
    fast_params = dict(fast.named_parameters())
    for name, param in stock.named_parameters():
        assert fast_params[name].grad is not None, name
        torch.testing.assert_close(fast_params[name].grad, param.grad, rtol=rtol, atol=atol, msg=name)


@pytest.fixture
def calls(monkeypatch):
    """The keyword arguments of every fasttx.scaled_dot_product_attention call the models make."""
    seen = []
    original = functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        seen.append(dict(kwargs, query=query.shape, key=key.shape))
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(hf_transformers.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert", "vit"])
def test_fp32_logits_and_gradients_match_stock(name, calls):
    stock, fast = _pair(name)
    inputs, valid = _inputs(name)
    with fasttx.use_backend("torch"):
        _assert_same_logits_and_grads(stock, fast, inputs, valid)
    assert len(calls) == 2  # one per layer: the fasttx attention ran
    if name == "qwen2":  # grouped-query attention: 2 key/value heads, never repeated
        assert all(c["enable_gqa"] and c["key"][1] == 2 and c["query"][1] == 4 for c in calls)
    mask = calls[0]["attn_mask"]
    if name == "vit":
        assert mask is None and not calls[0]["is_causal"]
    else:  # padding: transformers' SDPA mask builder, a bool (B, 1, L, S) mask with True = attend
        assert mask.dtype == torch.bool and mask.shape == (BATCH, 1, SEQ, SEQ) and not calls[0]["is_causal"]


def test_encoder_decoder_self_and_cross_attention(calls):
    """BART: the encoder's self-attention over a padded batch, the decoder's causal self-attention and its
    cross-attention over the padded encoder output (7 queries, 10 keys): logits and every gradient as the
    stock model's."""
    stock, fast = _pair("bart")
    inputs, valid = _inputs("bart")
    with fasttx.use_backend("torch"):
        _assert_same_logits_and_grads(stock, fast, inputs, valid)
    # Per layer: the encoder's (its key-padding mask as a bool (B, 1, L, L)), then the decoder's causal
    # self-attention (no mask: is_causal) and its cross-attention (the encoder's padding, (B, 1, 7, 10)).
    kinds = [(tuple(c["query"][2:3] + c["key"][2:3]), c["is_causal"],
              None if c["attn_mask"] is None else (c["attn_mask"].dtype, tuple(c["attn_mask"].shape))) for c in calls]
    encoder = ((SEQ, SEQ), False, (torch.bool, (BATCH, 1, SEQ, SEQ)))
    decoder = [((SEQ - 3, SEQ - 3), True, None), ((SEQ - 3, SEQ), False, (torch.bool, (BATCH, 1, SEQ - 3, SEQ)))]
    assert kinds == [encoder, encoder, *decoder, *decoder]
    assert not calls[-1]["attn_mask"][1, :, :, SEQ - 3:].any()  # the padded encoder positions, masked out


def test_causal_without_padding_uses_the_kernels_causal_masking(calls):
    stock, fast = _pair("llama", attn="sdpa")
    inputs, _ = _inputs("llama", padded=False)
    _assert_same_logits_and_grads(stock, fast, inputs, None)
    assert all(c["attn_mask"] is None and c["is_causal"] for c in calls)


def test_sliding_window_is_held_by_the_mask():
    stock, fast = _pair("mistral")  # window 4 < 10 tokens
    inputs, valid = _inputs("mistral")
    _assert_same_logits_and_grads(stock, fast, inputs, valid)
    full_attention = transformers.AutoModelForCausalLM.from_config(_config("mistral", sliding_window=None))
    full_attention.load_state_dict(stock.state_dict())
    assert not torch.allclose(full_attention(**inputs).logits[valid], fast(**inputs).logits[valid])


def test_dropout_and_scaling_reach_the_kernel(calls):
    _, fast = _pair("llama", attention_dropout=0.5)
    inputs, _ = _inputs("llama")
    fast.eval()
    first = fast(**inputs).logits
    fast.train()
    dropped = fast(**inputs).logits
    assert [c["dropout_p"] for c in calls] == [0.0, 0.0, 0.5, 0.5]
    assert all(c["scale"] == 8 ** -0.5 for c in calls)  # the model's scaling, head dim 8
    assert not torch.allclose(first, dropped) and torch.isfinite(dropped).all()


def test_patch_switches_a_built_model_and_converts_its_norms():
    stock, _ = _pair("qwen2", attn="sdpa")
    model = copy.deepcopy(stock)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fasttx.patch(model, backend="torch")
    assert model.config._attn_implementation == "fasttx"
    assert model.fasttx_patched == {"Qwen2Attention": 2, "Qwen2RMSNorm": 5}
    attentions = [m for m in model.modules() if type(m).__name__ == "Qwen2Attention"]
    assert all(a.__dict__["_fasttx_backend"] == "torch" for a in attentions)
    norm = model.model.norm
    assert isinstance(norm, transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm) and "backend=torch" in repr(norm)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    inputs, valid = _inputs("qwen2")
    _assert_same_logits_and_grads(stock, model, inputs, valid)
    reloaded = pickle.loads(pickle.dumps(model))  # torch.save(model) pickles the converted classes by name
    assert type(reloaded.model.norm) is type(norm) and reloaded.fasttx_patched == model.fasttx_patched


def test_optimizer_steps_give_the_same_losses():
    stock, fast = _pair("llama")
    fasttx.patch(fast, backend="torch")  # the norms too
    inputs, _ = _inputs("llama", padded=False)  # (left-padded rows have undefined logits, which the loss would see)
    labels = inputs["input_ids"]
    losses = {}
    for label, model in (("stock", stock), ("fasttx", fast)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses[label] = []
        for _ in range(3):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[label].append(loss.item())
    torch.testing.assert_close(losses["fasttx"], losses["stock"], rtol=1e-5, atol=1e-6)
    assert losses["stock"][-1] < losses["stock"][0]


def test_generate_gives_the_stock_tokens():
    stock, fast = _pair("llama", attn="sdpa")
    fasttx.patch(fast, backend="torch")
    inputs, _ = _inputs("llama")
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(fast.generate(**inputs, **options), stock.generate(**inputs, **options))


def test_torch_compile_fullgraph():
    stock, fast = _pair("llama", num_hidden_layers=1)
    fasttx.patch(fast, backend="torch")
    inputs, valid = _inputs("llama")
    _assert_same_logits_and_grads(stock, fast, inputs, valid, run_fast=torch.compile(fast, fullgraph=True))


@pytest.mark.parametrize("name", ["llama", "bert", "bart"])
def test_fp16_triton_kernels(name):
    """fp16 on the Triton kernels (on DEVICE: the interpreter on CPU): the error of the logits and of
    every parameter gradient against the fp32 model (on CPU) is at most about that of the stock model
    run in fp16 on DEVICE (FlashAttention's rule: twice, plus one rounding)."""
    reference, fast = _pair(name, num_hidden_layers=1)
    stock_half = copy.deepcopy(reference).half().to(DEVICE)
    fasttx.patch(fast.half().to(DEVICE), backend="triton")
    inputs, valid = _inputs(name)
    results = {}
    for label, model in (("reference", reference), ("stock", stock_half), ("fasttx", fast)):
        device = "cpu" if label == "reference" else DEVICE
        loss, logits = _loss_and_logits(model, {k: v.to(device) for k, v in inputs.items()}, valid.to(device))
        loss.backward()
        results[label] = {"logits": logits, **{n: p.grad for n, p in model.named_parameters()}}
    assert fasttx.backends.last_used["attention"] == "triton"
    for what, expected in results["reference"].items():
        errors = {label: rel_error(results[label][what], expected) for label in ("stock", "fasttx")}
        assert errors["fasttx"] <= 2 * errors["stock"] + TOLERANCE[torch.float16], (what, errors)



@pytest.mark.parametrize("softcap, feature", [(20.0, "soft-capping"), (None, "_supports_sdpa = False")])
def test_unsupported_feature_errors_or_falls_back_once(softcap, feature, caplog, monkeypatch):
    """Gemma2 asks for logit soft-capping; without it, a model class that declines transformers' SDPA
    path: an explicit backend names the reason; auto runs the model's eager attention and says so once."""
    if softcap is None:
        # Gemma2 declines SDPA in transformers 5.24 but takes it in 5.17: make it decline on every
        # version, and forget the answers _declines_sdpa cached.
        monkeypatch.setattr(transformers.models.gemma2.modeling_gemma2.Gemma2PreTrainedModel, "_supports_sdpa", False)
        monkeypatch.setattr(hf_transformers, "_declines", {})
    config = transformers.Gemma2Config(**SIZES, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                                       attn_logit_softcapping=softcap)
    stock = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    fast = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="fasttx")
    fast.load_state_dict(stock.state_dict())
    inputs, valid = _inputs("gemma2")
    with fasttx.use_backend("torch"), pytest.raises(ValueError, match=feature):
        fast(**inputs)
    with caplog.at_level(logging.WARNING, logger="fasttx"):
        torch.testing.assert_close(fast(**inputs).logits[valid], stock(**inputs).logits[valid])
        fast(**inputs)
    assert sum(feature in r.getMessage() for r in caplog.records) == 1


def test_autocast_takes_what_sdpa_takes():
    """Under autocast transformers' rotary embeddings give fp32 queries and keys beside values in the
    autocast dtype (the Linear's): fasttx casts them as torch's SDPA does, the "sdpa" model's logits
    and gradients."""
    results = []
    inputs, valid = _inputs("llama")
    for model in _pair("llama", attn="sdpa"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, logits = _loss_and_logits(model, inputs, valid)
        loss.backward()
        results.append({"logits": logits, **{n: p.grad for n, p in model.named_parameters()}})
    stock, fast = results
    assert fast["logits"].dtype == stock["logits"].dtype == torch.bfloat16
    for what, expected in stock.items():
        assert rel_error(fast[what], expected) <= TOLERANCE[torch.bfloat16], what


def test_output_attentions_is_refused():
    _, fast = _pair("llama")
    with fasttx.use_backend("torch"), pytest.raises(ValueError, match="output_attentions"):
        fast(**_inputs("llama")[0], output_attentions=True)


def test_registration_is_lazy_and_follows_either_import_order(monkeypatch):
    """import fasttx does not import transformers; importing transformers afterwards registers
    "fasttx" (the import hook); installing the hooks with transformers already imported registers now."""
    code = ("import sys, fasttx; assert 'transformers' not in sys.modules\n"
            "from transformers.modeling_utils import AttentionInterface\n"
            "from transformers.masking_utils import AttentionMaskInterface\n"
            "assert 'fasttx' in AttentionInterface._global_mapping\n"
            "assert 'fasttx' in AttentionMaskInterface._global_mapping\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    for registry in (AttentionInterface, AttentionMaskInterface):
        monkeypatch.delitem(registry._global_mapping, "fasttx")
    fasttx.integrations.install_import_hooks()
    assert AttentionInterface._global_mapping["fasttx"] is hf_transformers.attention_forward
    assert "fasttx" in AttentionMaskInterface._global_mapping
