"""python -m fasttx profile / train with --model hf:...: a transformers causal LM from a config (random
weights), stock (sdpa) against its fasttx-patched copy."""

import json

import pytest

from fasttx import models
from fasttx.cli import main, train

pytest.importorskip("transformers")

SIZE = ["--d-model", "32", "--layers", "1", "--heads", "4", "--seq", "16"]


@pytest.mark.parametrize("model, swapped", [("hf:llama", {"LlamaAttention": 1, "LlamaRMSNorm": 3}),
                                            ("hf:qwen2", {"Qwen2Attention": 1, "Qwen2RMSNorm": 3}),
                                            ("hf:gpt2", {"GPT2Attention": 1, "LayerNorm": 3})])
def test_profile_hf_model(model, swapped, tmp_path):
    main(["profile", "--model", model, *SIZE, "--batch", "2", "--steps", "1", "--warmup", "1", "--profile-steps", "1",
          "--top", "5", "--backend", "torch", "--out", str(tmp_path)])
    summary = json.load(open(tmp_path / "profile.json"))
    assert summary["swapped"] == swapped
    assert all(summary["variants"][v]["step_ms"] > 0 for v in ("torch", "fasttx"))
    assert "transformers (sdpa)" in open(tmp_path / "profile.md").read()


def test_hf_qwen2_uses_grouped_query_attention():
    model = models.build("hf:qwen2", 32, 1, 4, 16)
    assert model.model.config.num_key_value_heads == 2


def test_train_compare_hf_llama(tmp_path):
    args = [*SIZE, "--model", "hf:llama", "--batch-size", "4", "--max-bytes", "100000", "--steps", "4",
            "--warmup", "1", "--eval-batches", "1", "--eval-every", "2", "--activation-checkpointing", "--compare",
            "--backend", "torch", "--quiet", "--out", str(tmp_path)]
    verdict = train.run(train.parse_args(args))
    assert verdict["agree"] and verdict["max_step_difference"] < 1e-4
    summary = json.load(open(tmp_path / "compare.json"))
    assert summary["variants"]["fasttx"]["swapped"] == {"LlamaAttention": 1, "LlamaRMSNorm": 3}
