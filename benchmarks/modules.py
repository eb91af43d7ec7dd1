"""Whole modules: fasttx.nn.MultiheadAttention, TransformerEncoderLayer and LayerNorm vs torch.nn's,
forward and forward+backward, with the same parameters.

Cases: self-attention with need_weights=False (the fused path, what Transformer layers use) and
need_weights=True (weights materialised by both), and cross-attention (S = L / 2) for ``mha``;
a pre-norm GELU encoder layer (dim_feedforward = 4 d_model) with causal self-attention for
``encoder_layer``. Baselines: torch.nn eager (first: speed-ups are against it) and, on GPU,
torch.compile of it.

FLOPs, matrix products only, for batch N, query length L, key length S, width E, FF width F:
  projections  P = 2 * N * E^2 * (2 L + 2 S)     (q and output from L tokens, k and v from S)
  attention    A = 4 * N * L * S * E             (halved when causal)
  feed-forward  F' = 4 * N * L * E * F           (encoder layer only)
  forward = P + A (+ F'); backward = 2 (P + F') + 2.5 A (attention recomputes QK^T).
``layer_norm_module``: nn.LayerNorm(d_model) over batch x seq rows (HEADS unused).
Peak memory is reported per row (GPU: CUDA allocator; CPU: the allocations torch's CPU allocator
reports to the profiler, see common.peak_memory_mb); the targets compare it with torch.nn's.
Shapes keep N * L = 16384 tokens on GPU (seq 2048: batch 8, the issue's target shape); on CPU the
batch is 2 unless a preset shape gives it as a 4th number. ``--preset cpu`` runs the workloads the
CPU path is held to (>= 0.95x torch.nn's speed, <= 1.05x its peak memory): MHA(256, 4) batch 2 x
seq 4096, an encoder layer (256, 4, 1024) batch 8 x seq 512, LayerNorm(1024) over 8192 rows.
On CPU the quadratic-memory MHA cases (need_weights=True, and cross-attention) run up to seq 1024.
"""

import copy

import torch

from .._patch import patch
from ..functional.attention import kernel_limitation
from .common import Case, compiled, fasttx_providers

OPS = ("mha", "encoder_layer", "layer_norm_module")
SHAPE = "SEQxD_MODELxHEADS"  # batch = TOKENS // seq on GPU
PRESETS = {"quick": [(16, 32, 4)], "full": [(seq, 1024, 16) for seq in (512, 1024, 2048, 4096, 8192)],
           # per op: (seq, d_model, heads, batch)
           "cpu": {"mha": [(4096, 256, 4, 2)], "encoder_layer": [(512, 256, 4, 8)],
                   "layer_norm_module": [(1024, 1024, 1, 8)]}}
CPU_QUADRATIC_MAX_SEQ = 1024
PLOT = ("seq", ("d_model", "heads", "attention", "need_weights"))
TOKENS = 16384


def _flops(batch, queries, keys, width, ff_width=0, causal=False):
    projections = 2 * batch * width**2 * (2 * queries + 2 * keys)
    attention = 4 * batch * queries * keys * width / (2 if causal else 1)
    feed_forward = 4 * batch * queries * width * ff_width
    return projections + attention + feed_forward, 2 * (projections + feed_forward) + 2.5 * attention


def _variants(dtype, device_type, fasttx_backends, head_dim, torch_module, call, op="attention"):
    """Providers with torch_module's parameters: torch.nn eager and compiled (GPU), and each fasttx
    backend that runs ``op`` (attention: whose kernels take this head dim and dtype), through
    fasttx.patch of a copy (what a user does); and the float64 reference."""
    providers = {"torch.nn": lambda x: call(torch_module, x)}
    if device_type == "cuda":  # torch.compile on CPU costs minutes of C++ builds for no insight
        providers["torch.nn + torch.compile"] = compiled(lambda x: call(torch_module, x))
    heads_like = torch.empty((1, head_dim), dtype=dtype, device="meta")
    runnable = [b for b in fasttx_backends
                if op != "attention" or kernel_limitation(b, heads_like, heads_like, None) is None]
    providers.update(fasttx_providers(op, device_type, dtype, runnable,
                                      lambda b: lambda x, m=patch(copy.deepcopy(torch_module), b): call(m, x)))
    reference = copy.deepcopy(torch_module).double()
    return providers, lambda x: call(reference, x.double())


def cases(op, dtype, device_type, shapes, fasttx_backends):
    for seq, width, heads, *given_batch in shapes:
        batch = given_batch[0] if given_batch else max(TOKENS // seq, 1) if device_type == "cuda" else 2
        factory = dict(device=device_type, dtype=dtype)
        x = torch.randn(batch, seq, width, requires_grad=True, **factory)
        label = {"batch": batch, "seq": seq, "d_model": width, "heads": heads}
        if op == "mha":
            mha = torch.nn.MultiheadAttention(width, heads, batch_first=True, **factory)
            settings = [("self", False), ("self", True), ("cross", False)]
            if device_type == "cpu" and seq > CPU_QUADRATIC_MAX_SEQ:
                settings = settings[:1]
            for inputs, need_weights in settings:
                def call(module, x, cross=inputs == "cross", need_weights=need_weights):
                    kv = x[:, : x.shape[1] // 2] if cross else x
                    return module(x, kv, kv, need_weights=need_weights)[0]

                keys = seq // 2 if inputs == "cross" else seq
                providers, reference = _variants(dtype, device_type, fasttx_backends, width // heads, mha, call)
                yield Case({**label, "attention": inputs, "need_weights": need_weights}, [x], providers, reference,
                           _flops(batch, seq, keys, width), unit="TFLOP/s", chunk_dim=0)
        elif op == "layer_norm_module":
            norm = torch.nn.LayerNorm(width, **factory)
            with torch.no_grad():  # not torch's initial 1 and 0: a swapped weight and bias would show
                norm.weight.normal_(1, 0.5)
                norm.bias.normal_(0, 0.5)
            providers, reference = _variants(dtype, device_type, fasttx_backends, width // heads, norm,
                                             lambda module, x: module(x), op="layer_norm")
            bytes_moved = x.numel() * x.element_size()
            yield Case({**label, "attention": "none", "need_weights": False}, [x], providers, reference,
                       (2 * bytes_moved, 3 * bytes_moved), chunk_dim=0)
        else:
            layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                                     batch_first=True, norm_first=True, **factory)
            causal = torch.ones(seq, seq, dtype=torch.bool, device=device_type).triu(1)

            def call(module, x):
                return module(x, src_mask=causal, is_causal=True)

            providers, reference = _variants(dtype, device_type, fasttx_backends, width // heads, layer, call)
            yield Case({**label, "attention": "causal self", "need_weights": False}, [x], providers, reference,
                       _flops(batch, seq, seq, width, 4 * width, causal=True), unit="TFLOP/s", chunk_dim=0)
