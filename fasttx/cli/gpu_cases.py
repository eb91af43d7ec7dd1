"""Op calls that ``make gpu-check`` runs through one backend, forward and backward, and checks against
the float64 reference (fasttx.testing): shared by its autotune stage (gpu_autotune.py) and the
program that compute-sanitizer runs (gpu_sanitize.py).

A case is a name and a function ``make(device) -> (inputs, call)``: fresh random inputs (never zeros)
and ``call(backend, *inputs) -> output``. ``check`` runs it through ``backend`` and through the
reference on float64 copies of the inputs, and returns the largest relative error of the output and
of every input gradient.
"""

import contextlib
import dataclasses
import zlib

import torch

from .. import functional, reference
from ..functional.attention import cuda_sm90_kernels
from .._extension import cuda_clusters
from ..testing import rel_error


@dataclasses.dataclass
class OpCase:
    name: str
    dtype: torch.dtype
    make: object  # (device) -> (inputs, call)
    checked: bool = True  # False: dropout draws differ from the reference's; only run, not compared
    # (float64 inputs, float64 grad_out) -> per result (output, then each input gradient) the size of
    # the terms it is a difference of (fasttx.testing.rel_error's scale); None: 0 for all
    scales: object = None
    # () -> the context a backend's forward and backward both run in (the attention cases: the sm_90a
    # switch, read by the extension at each call, so the backward must see it too)
    around: object = contextlib.nullcontext


EPS = 1e-5


def _randn(*shape, dtype, device, grad=True):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(grad)


def norm_case(op, rows, hidden, dtype, weight=True, bias=True, clusters=True):
    """layer_norm or rms_norm over (rows, hidden), with or without weight (and, layer_norm, bias).
    ``clusters=False``: the CUDA kernels' long rows walked by one block even on sm_90 (cuda_clusters)."""
    names = [n for n, present in (("weight", weight), ("bias", bias and op == "layer_norm")) if present]

    def make(device):
        x = _randn(rows, hidden, dtype=dtype, device=device)
        params = [_randn(hidden, dtype=dtype, device=device) for _ in names]

        def call(impl, x, *p):
            return getattr(impl, op)(x, (hidden,), **dict(zip(names, p)), eps=EPS)
        return [x, *params], call

    def scales(x, *params, grad_out):
        return [0.0, norm_input_grad_scale(op, x, params[0] if weight else None, grad_out)] + [0.0] * len(params)

    flags = "" if clusters else " no clusters"
    return OpCase(f"{op} {rows}x{hidden} {_short(dtype)} {'+'.join(names) or 'no params'}{flags}", dtype, make,
                  scales=scales, around=lambda: cuda_clusters(clusters))


def norm_input_grad_scale(op, x, weight, grad_out, eps=EPS):
    """||dy * weight * rstd|| (float64): the size of the terms a norm's input gradient is a difference of."""
    centered = x - x.mean(-1, keepdim=True) if op == "layer_norm" else x
    rstd = (centered.square().mean(-1, keepdim=True) + eps).rsqrt()
    return ((grad_out if weight is None else grad_out * weight) * rstd).norm().item()


def softmax_case(rows, cols, dtype, mask=None, is_causal=False, scale=0.7, clusters=True):
    """fasttx.softmax over (2, rows, cols) scores: mask None, "bool" or "float" (key padding, (2, 1, cols)).
    ``clusters=False``: the CUDA kernels' long rows walked by one block even on sm_90 (cuda_clusters)."""
    def make(device):
        x = _randn(2, rows, cols, dtype=dtype, device=device)
        m = None
        if mask == "bool":
            m = torch.rand(2, 1, cols, device=device) > 0.3
        elif mask == "float":
            m = torch.randn(2, 1, cols, device=device, dtype=dtype)

        def call(impl, x):
            return impl.softmax(x, -1, scale=scale, mask=m, is_causal=is_causal)
        return [x], call

    flags = " ".join(f for f in (mask and f"{mask}-mask", is_causal and "causal", not clusters and "no clusters")
                     if f)
    return OpCase(f"softmax 2x{rows}x{cols} {_short(dtype)} {flags}".rstrip(), dtype, make,
                  around=lambda: cuda_clusters(clusters))


def attention_case(batch, heads, queries, keys, head_dim, dtype, mask=None, is_causal=False, kv_heads=None,
                   dropout_p=0.0, sm90=False, deterministic=True):
    """scaled_dot_product_attention on (batch, heads, queries|keys, head_dim); mask None, "bool" or
    "float" of shape (batch, 1, queries, keys). With dropout the kernels' keep mask is not the
    reference's, so such a case is run (forward and backward) but not compared. ``sm90``: forward and
    backward run with FASTTX_ATTENTION_SM90=1, the switch of the CUDA sm_90a forward, dK/dV and dQ kernels
    (csrc/attention/sm90/attention_sm90.h).
    ``deterministic=False``: fasttx's opt-in backward (atomic dQ: Triton's, and the sm_90a kernels'); the
    reference takes no such flag."""
    kv_heads = kv_heads or heads

    def make(device):
        q = _randn(batch, heads, queries, head_dim, dtype=dtype, device=device)
        k, v = (_randn(batch, kv_heads, keys, head_dim, dtype=dtype, device=device) for _ in range(2))
        m = None
        if mask == "bool":
            m = torch.rand(batch, 1, queries, keys, device=device) > 0.2
        elif mask == "float":
            m = torch.randn(batch, 1, queries, keys, device=device, dtype=dtype)

        def call(impl, q, k, v):
            flag = {} if deterministic or impl is reference else {"deterministic": False}
            return impl.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, dropout_p=dropout_p,
                                                     enable_gqa=kv_heads != heads, **flag)
        return [q, k, v], call

    flags = " ".join(f for f in (mask and f"{mask}-mask", is_causal and "causal", kv_heads != heads and "gqa",
                                 dropout_p and f"dropout {dropout_p}", sm90 and "sm_90a",
                                 not deterministic and "atomic dQ") if f)
    return OpCase(f"attention {batch}x{heads}x{queries}x{keys} E={head_dim} {_short(dtype)} {flags}".rstrip(),
                  dtype, make, checked=dropout_p == 0, around=lambda: cuda_sm90_kernels(sm90))


def _short(dtype):
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


class _Backend:
    """fasttx.functional with ``backend`` bound, in the call signature of fasttx.reference."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, op):
        fn = getattr(functional, op)
        return lambda *args, **kwargs: fn(*args, **kwargs, backend=self.backend)


def prepare(case, device):
    """(run, expected): ``run(backend)`` returns [output, *input gradients] of one fresh forward and
    backward through ``backend``; ``expected`` is the same from the float64 reference."""
    seed = zlib.crc32(case.name.encode())  # a different, reproducible draw per case
    torch.manual_seed(seed)
    inputs, call = case.make(device)
    grad_out = None

    def results(impl, tensors):
        nonlocal grad_out
        torch.manual_seed(seed)  # every run of a case draws the same dropout mask
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
        out = call(impl, *leaves)
        if grad_out is None:
            grad_out = torch.randn(out.shape, device=out.device, dtype=torch.float32)
        needing = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out, needing, grad_out.to(out.dtype))
        return [out.detach(), *grads]

    def as_reference(t):
        return t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t

    inputs64 = [as_reference(t) for t in inputs]
    expected = results(reference, inputs64)
    scales = case.scales(*[t.detach() for t in inputs64], grad_out=grad_out.double()) if case.scales else None

    def run(backend):
        with case.around():
            return results(_Backend(backend), inputs)
    return run, (expected, scales)


def max_error(got, expected):
    """The largest relative error over the output and the input gradients (NaN if any is not finite);
    ``expected`` as returned by ``prepare``."""
    results, scales = expected
    return max(rel_error(a, b, scale) for a, b, scale in zip(got, results, scales or [0.0] * len(results)))
