"""Attention: fasttx vs torch's SDPA with each backend it has here, forward and forward+backward.

Baselines, measured in the same run: torch SDPA letting torch choose (first: speed-ups are
against it), each of its backends forced (flash, efficient, cudnn, math; those that cannot run a
case are left out), and torch.compile of the math formula.

FLOPs, the standard count for B batches, H heads, L = S tokens, head dim E:
  forward  4 * B * H * L * S * E            (two matrix products of 2 * L * S * E each)
  backward 2.5 x forward                    (five matrix products; recomputing QK^T included)
both halved when causal. TFLOP/s = FLOPs / time; % of peak against a bf16 GEMM measured in the
same run. Shapes keep B * L = 16384 tokens.
"""

import math

import torch
import torch.nn.functional as F

from .. import backends, functional, reference
from ..functional import attention
from .common import Case

OPS = ("attention",)
# (seq, heads, head dim); batch = 16384 // seq
GPU_SHAPES = [(seq, heads, dim) for seq in (512, 1024, 2048, 4096, 8192, 16384) for heads, dim in ((16, 128), (32, 64))]
CPU_SHAPES = [(64, 2, 32)]
TOKENS = 16384


def _math(q, k, v, is_causal):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def _sdpa_providers(device_type, sample, is_causal):
    """torch SDPA, auto and each backend forced, keeping those that run ``sample`` here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    providers = {"torch sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def forced(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

        try:
            forced(*sample)
        except RuntimeError:  # this backend cannot run this case (dtype, head dim, device)
            continue
        providers[f"torch sdpa {name.split('_')[0].lower()}"] = forced
    return providers


def cases(op, dtype, device_type, shapes):
    for seq, heads, head_dim in shapes:
        batch = max(TOKENS // seq, 1) if device_type == "cuda" else 1
        q, k, v = (torch.randn(batch, heads, seq, head_dim, dtype=dtype, device=device_type, requires_grad=True)
                   for _ in range(3))
        for is_causal in (False, True):
            providers = _sdpa_providers(device_type, (q, k, v), is_causal)
            if device_type == "cuda":
                providers["torch.compile math"] = torch.compile(lambda q, k, v, c=is_causal: _math(q, k, v, c))
            for b in backends.BACKENDS:
                # Also skips what a backend's kernels reject (CUDA attention: fp32, other head dims).
                if (backends.unavailable_reason(b, device_type, dtype, op) is None
                        and attention._kernel_limitation(b, q, v, None) is None):
                    providers[f"fasttx {b}"] = lambda q, k, v, b=b, c=is_causal: functional.scaled_dot_product_attention(
                        q, k, v, is_causal=c, backend=b)
            fwd_flops = 4 * batch * heads * seq * seq * head_dim / (2 if is_causal else 1)
            label = {"batch": batch, "seq": seq, "heads": heads, "head_dim": head_dim, "causal": is_causal}
            ref = lambda q, k, v, c=is_causal: reference.scaled_dot_product_attention(q, k, v, is_causal=c)  # noqa: E731
            yield Case(label, [q, k, v], providers, ref, (fwd_flops, 3.5 * fwd_flops), unit="TFLOP/s")
