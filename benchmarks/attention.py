"""Attention: fasttx vs torch's SDPA with each backend it has here, and flash-attn when installed.

Baselines, measured in the same run: torch SDPA letting torch choose, each of its backends forced
(flash, efficient, cudnn, math; those that cannot run a case are left out), torch.compile of the
math formula, and flash-attn's flash_attn_func (fp16/bf16 on CUDA). flash-attn takes (B, L, H, E):
it gets transposed views of the same (B, H, L, E) tensors, last dim contiguous, so no copy is timed.

FLOPs, the standard count for B batches, H heads, L = S tokens, head dim E:
  forward  4 * B * H * L * S * E            (two matrix products of 2 * L * S * E each)
  backward 2.5 x forward                    (five matrix products; recomputing QK^T included)
both halved when causal. TFLOP/s = FLOPs / time; % of peak against a bf16 GEMM measured in the
same run. On GPU shapes keep B * L = 16384 tokens.

Per shape four cases (VARIANTS): no mask, causal, a key-padding mask ((B, 1, 1, S) bool, 1/8 to 1/2
of a batch's keys padded: key_padding_mask), the commonest mask in training, for which the Triton
kernels have a specialization (MASK_ROWS_BROADCAST) and the CUDA ones read the mask through its
broadcast strides, and dropout 0.1. The FLOPs are the unmasked count in all four (padded keys and
dropped scores included: every kernel here computes them), so a variant's TFLOP/s against the
unmasked case's is what the mask or the dropout costs. No torch.compile baseline in either, no
flash-attn with the mask (flash_attn_func takes none); torch SDPA's forced backends run them where
they can. Dropout draws random numbers no two providers share: that case is not compared with the
reference, only checked finite (common.Case.checked; the kernels' dropout is tested in tests/).

"fasttx triton (deterministic=False)" is the Triton kernels with the opt-in backward (atomic dQ: five
matrix products where the default runs seven, not bitwise reproducible); its forward is the default's.
Its FLOPs are the same standard count, so its TFLOP/s compare with every other provider's directly.
gpu-check's targets judge "fasttx triton", the deterministic default.

"fasttx triton (pointers)", on sm_90 devices, is the Triton kernels on their pointer path
(FASTTX_TRITON_TMA=0): what they ran before TMA descriptors, and still run elsewhere, beside "fasttx
triton" (TMA on sm_90) in the same run, to measure what the descriptors change.

"fasttx triton (P V in step)", on sm_90 devices, is the Triton forward with its previous loop schedule
(FASTTX_TRITON_DEFER_PV=0: each key block's P V after its own softmax, no product in flight under the
softmax; attention_fwd.py's docstring, "Schedule"), to measure what the deferred P V changes; its
backward is the default's (the schedule is the forward's only).

"fasttx cuda (sm_90a)", on sm_90 devices, is backend cuda with FASTTX_ATTENTION_SM90=1: the sm_90a
kernels (csrc/attention/sm90; the forward and the backward at head dims 64, 96, 128, 256; masks
and dropout included) where "fasttx cuda" runs the sm_80 ones, which stay the default until a GPU
run has validated the new kernels. "fasttx cuda (sm_90a, deterministic=False)" is the same with the
opt-in backward whose dK/dV kernel also adds dQ with atomics (five products, no dQ kernel; head dims
64, 96, 128), beside it in the same run. "fasttx cuda (sm_90a, 128-key blocks)", at E = 128 without
causality, mask or dropout, is "fasttx cuda (sm_90a)" with FASTTX_ATTENTION_SM90_KEYS=128: its forward on
the 128-key tile instead of FlashAttention-3's 176-key one (its backward the same as the other's), to
measure what the wider tile changes. "fasttx cuda (sm_90a, dQ without turns)", in the cases without mask
or dropout, is "fasttx cuda (sm_90a)" with FASTTX_ATTENTION_SM90_DQ_TURNS=0: the dQ kernel's two consumer
warpgroups issuing their wgmma without taking turns (its forward the same as the other's), to measure what
the turns change in the backward.

These switches are set around the provider's checking and every timed pass (common.around), so its
backward, which autograd runs outside the forward call, sees them too.
"""

import contextlib
import math

import torch
import torch.nn.functional as F

from .. import functional, reference
from ..functional.attention import cuda_sm90_dq_turns, cuda_sm90_keys, cuda_sm90_kernels, kernel_limitation
from .common import Case, External, compiled, external_providers, fasttx_providers

OPS = ("attention",)
SHAPE = "SEQxHEADSxHEAD_DIM"
PRESETS = {
    "quick": [(16, 1, 16), (48, 1, 16)],
    "full": [(seq, heads, dim) for heads, dim in ((16, 128), (32, 64)) for seq in (512, 1024, 2048, 4096, 8192, 16384)],
}
PLOT = ("seq", ("heads", "head_dim", "causal", "mask", "dropout"))  # x axis; the label keys shared by a line's points
TOKENS = 16384


def _math(q, k, v, is_causal):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def _sdpa_providers(sample, is_causal, mask=None, dropout_p=0.0):
    """torch SDPA, auto and each backend forced, keeping those that run ``sample`` (with ``mask`` and
    ``dropout_p``) here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)

    providers = {"torch sdpa": sdpa}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def forced(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return sdpa(q, k, v)

        try:
            out = forced(*sample)
            torch.autograd.grad(out, sample, torch.ones_like(out))
        except RuntimeError:  # this backend cannot run this case, forward or backward (dtype, head dim, mask, device)
            continue
        providers[f"torch sdpa {name.split('_')[0].lower()}"] = forced
    return providers


def _flash_attn(is_causal, dropout_p=0.0):
    def adapt(f):
        def run(q, k, v):
            t = lambda x: x.transpose(1, 2)  # noqa: E731
            return t(f(t(q), t(k), t(v), dropout_p=dropout_p, causal=is_causal))
        return run

    return External("flash-attn", "flash_attn", "flash_attn_func", adapt, (torch.float16, torch.bfloat16))


def _switched(fn, switch):
    """fn checked and timed inside ``switch()``, forward and backward (common.around)."""
    def run(*args):
        return fn(*args)
    run.around = switch
    return run


def _triton_pointer_path():
    from ..triton_kernels import attention_tma  # Triton only where its kernels run

    return attention_tma.tma_mode("0")


def _triton_pv_in_step():
    from ..triton_kernels import attention_fwd  # Triton only where its kernels run

    return attention_fwd.defer_pv(False)


@contextlib.contextmanager
def _sm90_128_key_blocks():
    with cuda_sm90_kernels(True), cuda_sm90_keys(128):
        yield


@contextlib.contextmanager
def _sm90_dq_without_turns():
    with cuda_sm90_kernels(True), cuda_sm90_dq_turns(False):
        yield


def key_padding_mask(batch, seq, device):
    """(batch, 1, 1, seq) bool, True = keep: batch b's last (b % 4 + 1) * seq / 8 keys padded, so that
    the batches differ (1/8 to 1/2 of their keys padded) as in a padded training batch."""
    padded = (torch.arange(batch, device=device) % 4 + 1) * seq // 8
    return (torch.arange(seq, device=device) < (seq - padded)[:, None]).view(batch, 1, 1, seq)


# (causal, masked, dropout_p) per shape, in run order: the unmasked cases first (the targets' data), then
# a key-padding mask (torch SDPA refuses a mask with is_causal, so masks are not causal), then dropout 0.1
# (issue 17's target: no more than 15% slower than the case without).
VARIANTS = ((False, False, 0.0), (True, False, 0.0), (False, True, 0.0), (False, False, 0.1))


def cases(op, dtype, device_type, shapes, fasttx_backends):
    for seq, heads, head_dim in shapes:
        batch = max(TOKENS // seq, 1) if device_type == "cuda" else 1
        q, k, v = (torch.randn(batch, heads, seq, head_dim, dtype=dtype, device=device_type, requires_grad=True)
                   for _ in range(3))
        for is_causal, masked, dropout_p in VARIANTS:
            mask = key_padding_mask(batch, seq, device_type) if masked else None
            providers = _sdpa_providers((q, k, v), is_causal, mask, dropout_p)
            if device_type == "cuda" and not masked and not dropout_p:
                providers["torch.compile math"] = compiled(lambda q, k, v, c=is_causal: _math(q, k, v, c))
            if not masked:  # flash_attn_func takes no mask
                providers.update(external_providers([_flash_attn(is_causal, dropout_p)], device_type, dtype))
            # Leaves out what a backend's kernels reject (CUDA attention: fp32, other head dims).
            runnable = [b for b in fasttx_backends if kernel_limitation(b, q, v, mask) is None]
            call = dict(attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
            providers.update(fasttx_providers(op, device_type, dtype, runnable, lambda b, call=call: (
                lambda q, k, v: functional.scaled_dot_product_attention(q, k, v, backend=b, **call))))
            if "fasttx triton" in providers:
                providers["fasttx triton (deterministic=False)"] = lambda q, k, v, call=call: (
                    functional.scaled_dot_product_attention(q, k, v, backend="triton", deterministic=False, **call))
            if "fasttx triton" in providers and device_type == "cuda" and \
                    torch.cuda.get_device_capability(q.device)[0] == 9:
                providers["fasttx triton (pointers)"] = _switched(providers["fasttx triton"], _triton_pointer_path)
                providers["fasttx triton (P V in step)"] = _switched(providers["fasttx triton"], _triton_pv_in_step)
            if "fasttx cuda" in providers and torch.cuda.get_device_capability(q.device) == (9, 0):
                providers["fasttx cuda (sm_90a)"] = _switched(providers["fasttx cuda"],
                                                              lambda: cuda_sm90_kernels(True))
                if head_dim == 128 and not (is_causal or masked or dropout_p):
                    providers["fasttx cuda (sm_90a, 128-key blocks)"] = _switched(
                        providers["fasttx cuda"], _sm90_128_key_blocks)
                if not (masked or dropout_p):
                    providers["fasttx cuda (sm_90a, dQ without turns)"] = _switched(
                        providers["fasttx cuda"], _sm90_dq_without_turns)
                providers["fasttx cuda (sm_90a, deterministic=False)"] = _switched(
                    lambda q, k, v, call=call: functional.scaled_dot_product_attention(
                        q, k, v, backend="cuda", deterministic=False, **call),
                    lambda: cuda_sm90_kernels(True))
            fwd_flops = 4 * batch * heads * seq * seq * head_dim / (2 if is_causal else 1)
            label = {"batch": batch, "seq": seq, "heads": heads, "head_dim": head_dim, "causal": is_causal,
                     "mask": "key padding" if masked else "none", "dropout": dropout_p}
            ref = lambda q, k, v, c=is_causal, m=mask: reference.scaled_dot_product_attention(  # noqa: E731
                q, k, v, attn_mask=m, is_causal=c)
            yield Case(label, [q, k, v], providers, ref, (fwd_flops, 2.5 * fwd_flops), unit="TFLOP/s", chunk_dim=1,
                       checked=not dropout_p)
