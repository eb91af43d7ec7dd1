"""fasttx.scaled_dot_product_attention: the semantics of torch's, on IO-aware flash kernels.

The kernels see (B, H, L, E) queries and (B, Hkv, S, E) / (B, Hkv, S, Ev) keys and values with any
strides but a contiguous last dim (the (B, L, H, E) -> (B, H, L, E) transposed views a multi-head
attention module makes are read in place), all batch dims merged into B; the mask as a 4-D view
broadcastable to (B, H, L, S), read through 0 strides (a key-padding mask (B, 1, 1, S) costs
O(B * S)). Only the output and the fp32 log-sum-exp (B, H, L) are saved for the backward.

Under autocast it casts its arguments as torch's autocast casts them for torch's SDPA (_autocast).

One documented difference from torch: a query row whose keys are all masked out gives output 0
and zero gradients, never NaN. Dropout draws its Philox seed from the inputs' device generator, so
torch.manual_seed makes it reproducible; forward and backward regenerate the same keep mask.
"""

import math
import sys

import torch
import torch.nn.functional as F

from .. import _attention_kernels, _extension, _ops, backends
from . import native
from ._checks import check_mask, check_tensor, merge_leading_dims

MAX_HEAD_DIM = 256  # the kernels hold a head's row of q, k and v in registers
# The CUDA C++ kernels (csrc/attention): fp16 / bf16 tensor cores, compiled per head dim.
CUDA_DTYPES = tuple(getattr(torch, name) for name in _attention_kernels.DTYPES)


def cuda_head_dims():
    """The head dims the CUDA attention kernels of this install take: those fasttx._C was built with
    (FASTTX_ATTENTION_HEAD_DIMS can leave some out), or all of them where it is not imported (a JIT
    build of fasttx._extension compiles all)."""
    built = getattr(sys.modules.get("fasttx._C"), "ATTENTION_HEAD_DIMS", None)
    return _attention_kernels.HEAD_DIMS if built is None else built


# The switch of the CUDA sm_90a kernels, the forward and the backward's dK/dV and dQ kernels
# (csrc/attention/sm90/attention_sm90.h), read by the extension at each call: off until a GPU run has
# validated them.
SM90_SWITCH = "FASTTX_ATTENTION_SM90"


def cuda_sm90_kernels(enabled: bool):
    """Runs the block with the CUDA sm_90a kernels (forward; backward dK/dV and dQ) switched on or off (the
    environment variable SM90_SWITCH set to "1" or unset), restoring what was there before."""
    return _extension.environment(SM90_SWITCH, "1" if enabled else None)


# The sm_90a kernels' variants under comparison, so that the bench times both sides in one GPU run (the
# slower goes once one has): the forward's key blocks at E = 128 without causality, mask or dropout, 176
# (FlashAttention-3's tile) or 128 with SM90_KEYS_SWITCH="128" (csrc/attention/sm90/attention_fwd_sm90.cuh,
# narrow_keys_asked); the dQ kernel's consumers taking turns at their wgmma, or not with SM90_DQ_TURNS_SWITCH="0"
# (attention_dq_sm90.cuh, turns_left_out).
SM90_KEYS_SWITCH = "FASTTX_ATTENTION_SM90_KEYS"
SM90_DQ_TURNS_SWITCH = "FASTTX_ATTENTION_SM90_DQ_TURNS"


def cuda_sm90_keys(keys: int):
    """Runs the block with the sm_90a forward's 176-key tile (keys=176) or the 128-key one (keys=128) where
    it would take the 176-key tile, restoring what was there before."""
    if keys not in (128, 176):
        raise ValueError(f"cuda_sm90_keys: keys must be 128 or 176, got {keys}")
    return _extension.environment(SM90_KEYS_SWITCH, "128" if keys == 128 else None)


def cuda_sm90_dq_turns(enabled: bool):
    """Runs the block with the sm_90a dQ kernel's consumers taking turns at their wgmma (the default) or not,
    restoring what was there before."""
    return _extension.environment(SM90_DQ_TURNS_SWITCH, None if enabled else "0")


def _check_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor("scaled_dot_product_attention", name, t, like=query)
        if t.dim() < 3:
            raise ValueError(f"fasttx.scaled_dot_product_attention: {name} must have at least 3 dims "
                             f"(..., heads, seq, head_dim), got shape {list(t.shape)}")
        if t.dtype != query.dtype:
            raise TypeError(f"fasttx.scaled_dot_product_attention: {name} must have query's dtype "
                            f"{query.dtype}, got {t.dtype}")
    op = "fasttx.scaled_dot_product_attention"
    if not (query.shape[:-3] == key.shape[:-3] == value.shape[:-3]):
        raise ValueError(f"{op}: query, key and value must have the same batch dims, got shapes "
                         f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}")
    if key.shape[-3] != value.shape[-3] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{op}: key and value must have the same heads and sequence length, got shapes "
                         f"{list(key.shape)} and {list(value.shape)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{op}: query and key must have the same head dim E, got {query.shape[-1]} and {key.shape[-1]}")
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if heads != kv_heads and not (enable_gqa and kv_heads > 0 and heads % kv_heads == 0):
        raise ValueError(f"{op}: query has {heads} heads and key/value {kv_heads}: they must be equal, or "
                         f"with enable_gqa=True query's a multiple of key/value's")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a float or None, got {type(scale).__name__}")
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{op}: attn_mask and is_causal cannot both be given (as in torch); "
                             f"put the causal structure in attn_mask")
        target = (*query.shape[:-1], key.shape[-2])
        check_mask("scaled_dot_product_attention", "attn_mask", attn_mask, query, "query's", target,
                   "(..., H, L, S) =")


def kernel_limitation(backend, query, value, attn_mask):
    """Why ``backend``'s kernels cannot run this call (beyond backend availability), or None."""
    if value.shape[-2] == 0:
        return "there are no keys (S = 0)"
    if max(query.shape[-1], value.shape[-1]) > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM} are not supported, got E={query.shape[-1]}, Ev={value.shape[-1]}"
    if backend == "cuda":
        if query.dtype not in CUDA_DTYPES:
            return f"the CUDA attention kernels take float16 or bfloat16 input, got {query.dtype}"
        e, ev = query.shape[-1], value.shape[-1]
        if e != ev or e not in _attention_kernels.HEAD_DIMS:
            return (f"the CUDA attention kernels take head dims E == Ev in {_attention_kernels.HEAD_DIMS}, "
                    f"got E={e}, Ev={ev}")
        built = cuda_head_dims()
        if e not in built:
            return (f"head dim E={e} was left out of this build of fasttx._C (it has ({', '.join(map(str, built))})): "
                    f"rebuild it with {_attention_kernels.BUILD_ENV} unset (all head dims) or listing {e}")
    if attn_mask is not None and attn_mask.requires_grad:
        return "the kernels give no gradient for attn_mask, which requires grad"
    return None


def _autocast(query, key, value, attn_mask):
    """The arguments as torch's autocast hands them to its own SDPA, which is on autocast's
    lower-precision list (CPU and CUDA): every floating-point argument on the autocast device but
    float64, the mask included, in the autocast dtype; their gradients come back in their own dtypes.
    Models rely on it: transformers' rotary embeddings give fp32 queries and keys beside values in the
    autocast dtype."""
    tensors = (query, key, value, attn_mask)
    if not (isinstance(query, torch.Tensor) and torch.is_autocast_enabled(query.device.type)):
        return tensors
    device_type = query.device.type
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.device.type == device_type and t.is_floating_point()
                 and t.dtype != torch.float64 else t for t in tensors)


def _torch_sdpa_as_is(query, key, value, attn_mask, dropout_p, is_causal, scale, backend, deterministic):
    """Whether torch's own SDPA on these very arguments computes what fasttx's would: "torch", or
    "auto" resolving to it, no mask or a CPU call (fasttx's one difference from torch is for rows a
    mask empties, which torch's CPU SDPA gives 0 as well: native.scaled_dot_product_attention), no
    autocast (fasttx casts as torch's autocast would, see _autocast), and what fasttx refuses but
    torch takes ruled out (fewer than 3 dims, broadcast batch dims, dropout_p of 1, a Tensor scale, a mask
    with is_causal, which torch 2.11 takes on CPU).
    Torch's other refusals send the call on to fasttx's checks, which name the argument. Saves ~4 us
    of host time a call (python -m fasttx.benchmarks.host_overhead, the "fasttx torch" column).
    Each ``.shape`` makes a torch.Size and each slice of it another (~0.1-0.2 us apiece on CPU): the
    shapes are read once, and a 4-D call (the common one) compares its one batch dim without slicing."""
    if not ((backend == "auto" or backend == "torch") and type(deterministic) is bool and isinstance(query, torch.Tensor)
            and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)):
        return False
    q_shape, k_shape, v_shape = query.shape, key.shape, value.shape
    dims = len(q_shape)
    if not (dims == len(k_shape) == len(v_shape) >= 3):
        return False
    if dims == 4 and not q_shape[0] == k_shape[0] == v_shape[0]:
        return False
    if dims > 4 and not q_shape[:-3] == k_shape[:-3] == v_shape[:-3]:
        return False
    return (type(dropout_p) in (float, int) and 0.0 <= dropout_p < 1.0 and (scale is None or type(scale) in (float, int))
            and not torch._C._is_any_autocast_enabled() and backends.resolve("attention", backend, query) == "torch"
            and (attn_mask is None or (query.is_cpu and not is_causal)))


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, *, backend="auto", deterministic=True):
    """Attention with the semantics of ``torch.nn.functional.scaled_dot_product_attention``
    (bool attn_mask True = takes part, float added; is_causal top-left aligned; enable_gqa), see
    the module docstring. ``backend``: "auto", "torch", "triton" or "cuda". ``deterministic=False``
    lets the backward add dQ with atomics (5 matrix products instead of 7, fp32 sums in a varying
    order: not bitwise reproducible): the Triton one, and the CUDA C++ one where its sm_90a kernels
    run (FASTTX_ATTENTION_SM90=1 on an sm_90 device, head dims 64, 96, 128);
    torch.use_deterministic_algorithms(True) overrides it. The other CUDA C++ kernels and the torch
    backend are deterministic either way."""
    if _torch_sdpa_as_is(query, key, value, attn_mask, dropout_p, is_causal, scale, backend, deterministic):
        try:
            return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                                  scale=None if scale is None else float(scale), enable_gqa=enable_gqa)
        except (RuntimeError, TypeError, ValueError):
            pass  # the checks below name the argument (and raise torch's error again if they pass)
    query, key, value, attn_mask = _autocast(query, key, value, attn_mask)
    _check_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if not isinstance(deterministic, bool):
        raise TypeError(f"fasttx.scaled_dot_product_attention: deterministic must be a bool, got "
                        f"{type(deterministic).__name__}")
    chosen = backends.resolve("attention", backend, query)
    if chosen != "torch":
        why_not = kernel_limitation(chosen, query, value, attn_mask)
        if why_not is not None:
            if backends.requested(backend) != "auto":
                raise RuntimeError(f"fasttx.scaled_dot_product_attention: backend={chosen!r} cannot run "
                                   f"this call: {why_not}")
            chosen = backends.resolve("attention", "torch", query)
    if chosen == "torch":
        return native.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    *batch, heads, queries, head_dim = query.shape
    q, k, v = query, key, value
    if len(batch) != 1:  # (a 4-D call, a module's, skips the reshapes: they cost ~1 us each on the host)
        rows = math.prod(batch)
        q, k, v = (t.reshape(rows, *t.shape[-3:]) for t in (query, key, value))
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    mask = None
    if attn_mask is not None:
        mask = attn_mask.reshape((1,) * (query.dim() - attn_mask.dim()) + tuple(attn_mask.shape))
        _, mask = merge_leading_dims(mask, batch, 1)
    seed = None
    if dropout_p > 0:
        # Drawn by the inputs' device generator (torch.manual_seed reproduces it) into device memory,
        # where the kernels read it: a CUDA graph replays this draw with a new Philox offset each time
        # (as torch's own dropout), so every replay drops anew; and no host sync, no recompile.
        seed = torch.randint(0, 2**62, (), dtype=torch.int64, device=q.device)
    scale = 1 / math.sqrt(head_dim) if scale is None else float(scale)
    out, _lse = _ops.op("attention", "fwd", chosen)(q, k, v, mask, scale, is_causal, float(dropout_p), seed,
                                                    deterministic)
    return out if len(batch) == 1 else out.reshape(*batch, heads, queries, out.shape[-1])
