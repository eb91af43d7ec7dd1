"""fasttx as one of torch's flash-attention implementations (torch.nn.attention's registry).

Where torch has ``torch.nn.attention.register_flash_attention_impl``, ``import fasttx`` registers the
name "fasttx" (nothing else: the registry's rule is that providers never activate themselves). After

    torch.nn.attention.activate_flash_attention_impl("fasttx")

the CUDA kernels of ``aten::_scaled_dot_product_flash_attention`` and its backward are fasttx's
(Triton) kernels until ``torch.nn.attention.restore_flash_attention_impl()``. That covers exactly the
``F.scaled_dot_product_attention`` calls torch routes to its FLASH_ATTENTION backend: CUDA fp16/bf16
tensors, no attn_mask, equal q/k/v head dims up to 256, causal or not, dropout, scale, enable_gqa where
torch's flash takes it. Calls torch sends to its other backends (efficient, cuDNN, math: masks, fp32,
CPU tensors) never reach fasttx; ``torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)`` forces
the flash route. Dropout draws fasttx's own Philox stream (seeded from torch's default generator), so
the kept positions differ from torch's flash kernel for the same seed; the distribution is the same.
"""

import torch

from .. import _ops, backends
from ..functional.attention import kernel_limitation

NAME = "fasttx"
_FORWARD = "_scaled_dot_product_flash_attention"
_BACKWARD = "_scaled_dot_product_flash_attention_backward"


def available():
    """Whether this torch has the flash-attention implementation registry."""
    return hasattr(torch.nn.attention, "register_flash_attention_impl")


def register():
    """Offer "fasttx" to torch.nn.attention.activate_flash_attention_impl (where torch has it)."""
    if available():
        torch.nn.attention.register_flash_attention_impl(NAME, register_fn=activate)


class _Handle:
    """What torch keeps while fasttx is the active flash implementation; remove() restores torch's."""

    def __init__(self, library):
        self.library = library

    def remove(self):
        if self.library is not None:
            self.library._destroy()
            self.library = None


def activate():
    """The register_fn torch calls on activate_flash_attention_impl("fasttx")."""
    library = torch.library.Library("aten", "IMPL", "CUDA")
    library.impl(_FORWARD, flash_forward, "CUDA")
    library.impl(_BACKWARD, flash_backward, "CUDA")
    return _Handle(library)


def _kernel_backend(query, value):
    # The default backend (fasttx.use_backend, FASTTX_BACKEND) picks the kernel; "torch" has none.
    chosen = backends.resolve("attention", "auto", query)
    why_not = "no fasttx attention kernel runs here" if chosen == "torch" else kernel_limitation(chosen, query,
                                                                                               value, None)
    if why_not is not None:
        raise RuntimeError(f"fasttx flash attention (activated with torch.nn.attention."
                           f"activate_flash_attention_impl): cannot run this call: {why_not}")
    return chosen


def flash_forward(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    """aten::_scaled_dot_product_flash_attention on fasttx's kernels (same outputs; see the schema)."""
    if return_debug_mask:
        raise RuntimeError("fasttx flash attention: return_debug_mask=True is not supported")
    backend = _kernel_backend(query, value)
    seed = torch.randint(0, 2**62, (), dtype=torch.int64) if dropout_p > 0 else torch.zeros((), dtype=torch.int64)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    out, lse = _ops.op("attention", "fwd", backend)(query, key, value, None, scale, is_causal, dropout_p, seed)
    # The backward gets the seed back through torch's philox_seed slot ((2,) uint64, as torch's meta).
    rng_state = torch.stack([seed, torch.zeros_like(seed)]).view(torch.uint64)
    return (out, lse, None, None, query.shape[2], key.shape[2], rng_state, torch.zeros((), dtype=torch.uint64),
            torch.empty(0, dtype=query.dtype, device=query.device))


def flash_backward(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
                   is_causal, philox_seed, philox_offset, *, scale=None):
    """aten::_scaled_dot_product_flash_attention_backward on fasttx's kernels."""
    backend = _kernel_backend(query, value)
    seed = philox_seed.view(torch.int64)[0]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    return _ops.op("attention", "bwd", backend)(grad_out, query, key, value, out, logsumexp, None, scale, is_causal,
                                                dropout_p, seed)
