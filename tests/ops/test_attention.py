"""scaled_dot_product_attention: output and gradients of q, k, v against the float64 reference
for every backend that runs here, with FlashAttention's rule: the error may be at most twice that
of torch's own SDPA math in the input dtype, plus a small absolute term."""

import sys

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx import _attention_kernels, reference
from fasttx.functional import native
from fasttx.functional.attention import CUDA_DTYPES, cuda_head_dims
from fasttx.testing import assert_close, rel_error

from ..conftest import DEVICE, runnable_backends

BACKENDS = runnable_backends(op="attention")
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]
# bf16 dots are wrong in the Triton interpreter: bf16 is tested on the GPU only.
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# The absolute term of the rule, by dtype: a result rounded once to the dtype is this far off.
ROUNDING = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def cuda_unsupported(backend, q, v):
    """The CUDA C++ kernels' cases (csrc/attention; head dims: those this build has): other dtypes and
    head dims must raise, not fall back."""
    return backend == "cuda" and (q.dtype not in CUDA_DTYPES or q.shape[-1] != v.shape[-1]
                                  or q.shape[-1] not in cuda_head_dims())


def smallest_case(backend):
    """(dtype, head dim) of the tests of one kernel property: the smallest every kernel takes."""
    return (torch.float16, 32) if backend == "cuda" else (torch.float32, 16)


def attention_inputs(batch, heads, kv_heads, queries, keys, head_dim, value_dim=None, dtype=torch.float16):
    q = torch.randn(batch, heads, queries, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(batch, kv_heads, keys, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(batch, kv_heads, keys, value_dim or head_dim, device=DEVICE).to(dtype)
    return q, k, v


def run_with_grads(fn, tensors, dy, convert=lambda t: t):
    leaves = [convert(t.detach()).requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(convert(dy))
    return [out] + [t.grad for t in leaves]


def torch_baseline(q, k, v, **kw):
    """torch's SDPA in the input dtype (math backend on CPU); NaN from fully masked rows -> 0."""
    kw = {k_: v_ for k_, v_ in kw.items() if k_ != "dropout_mask"}
    return F.scaled_dot_product_attention(q, k, v, **kw).nan_to_num(0.0)


def gradient_scales(q, k, v, dy, scale=None, attn_mask=None, is_causal=False, enable_gqa=False, **_):
    """Sizes of the terms dq and dk are differences of (dS = P * (dP - D) cancels: with one key
    it is exactly 0), by which their errors are judged; dv has no cancellation."""
    q, k, v, dy = (t.double() for t in (q, k, v, dy))
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, -3), v.repeat_interleave(group, -3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = reference.softmax(q @ k.transpose(-2, -1), -1, scale, attn_mask, is_causal)
    terms = (probs * (dy @ v.transpose(-2, -1))).abs() * scale
    dk_terms = (terms.transpose(-2, -1) @ q.abs()).unflatten(-3, (-1, group)).sum(-3)
    return (terms @ k.abs()).norm().item(), dk_terms.norm().item(), 0.0


def check(q, k, v, backend, dy=None, **kw):
    """Output, dq, dk, dv vs float64; returns the output (None for a case the backend rejects).
    ``deterministic`` goes to fasttx only, ``dropout_mask`` to the reference only."""
    if dy is None:
        dy = torch.randn(*q.shape[:-1], v.shape[-1], device=DEVICE).to(q.dtype)
    ours_kw = {k_: v_ for k_, v_ in kw.items() if k_ != "dropout_mask"}
    kw.pop("deterministic", None)
    if cuda_unsupported(backend, q, v):
        with pytest.raises(RuntimeError, match="backend='cuda' cannot run this call: the CUDA attention kernels take"):
            fasttx.scaled_dot_product_attention(q, k, v, **ours_kw, backend=backend)
        return None
    ours = run_with_grads(lambda *t: fasttx.scaled_dot_product_attention(*t, **ours_kw, backend=backend), (q, k, v), dy)
    ref = run_with_grads(lambda *t: reference.scaled_dot_product_attention(*t, **kw), (q, k, v), dy, torch.Tensor.double)
    base = run_with_grads(lambda *t: torch_baseline(*t, **kw), (q, k, v), dy) if "dropout_mask" not in kw else None
    scales = (0.0, *gradient_scales(q, k, v, dy, **kw))
    for i, name in enumerate(["output", "grad q", "grad k", "grad v"]):
        assert ours[i].shape == ref[i].shape and ours[i].dtype == q.dtype, name
        baseline = base[i] if base is not None and torch.isfinite(base[i]).all() else ref[i].to(q.dtype)
        limit = ROUNDING[q.dtype] + 2 * rel_error(baseline, ref[i], scales[i])
        err = rel_error(ours[i], ref[i], scales[i])
        assert err <= limit, f"{name}: relative error {err:.3g} > {limit:.3g} ({q.dtype}, {backend})"
    return ours[0]


@pytest.mark.parametrize("queries,keys", [(1, 1), (1, 7), (7, 1), (33, 100), (100, 33)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_lengths(backend, dtype, queries, keys):
    check(*attention_inputs(2, 2, 2, queries, keys, 64, dtype=dtype), backend)


@pytest.mark.parametrize("head_dim,value_dim", [(16, 16), (32, 32), (80, 80), (96, 96), (128, 64), (32, 96),
                                               (192, 192), (256, 128), (256, 256)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_dims(backend, head_dim, value_dim):
    check(*attention_inputs(1, 2, 2, 19, 23, head_dim, value_dim), backend, scale=0.2)


@pytest.mark.parametrize("queries,keys", [(5, 40), (40, 5), (33, 33)], ids=["L<S", "L>S", "L=S"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal(backend, dtype, queries, keys):
    check(*attention_inputs(2, 2, 2, queries, keys, 32, dtype=dtype), backend, is_causal=True)


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_attention(backend, kv_heads):
    check(*attention_inputs(2, 4, kv_heads, 17, 29, 32), backend, enable_gqa=True, is_causal=kv_heads == 1)


MASKS = ["bool_key_padding", "bool_2d", "float_full_with_-inf", "float_1_1_L_S", "float_2d"]


def make_mask(kind, batch, heads, queries, keys):
    if kind == "bool_key_padding":
        mask = torch.rand(batch, 1, 1, keys, device=DEVICE) > 0.3
        mask[0] = False  # every key of batch 0 padded: its rows are fully masked
    elif kind == "bool_2d":
        mask = torch.rand(queries, keys, device=DEVICE) > 0.4
    elif kind == "float_full_with_-inf":
        mask = torch.randn(batch, heads, queries, keys, device=DEVICE)
        mask[torch.rand_like(mask) > 0.7] = float("-inf")
        mask[1, 0, 3] = float("-inf")  # one fully masked row
    elif kind == "float_1_1_L_S":
        mask = torch.randn(1, 1, queries, keys, device=DEVICE)
    else:
        mask = torch.randn(queries, keys, device=DEVICE)
    return mask


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_masks(backend, dtype, kind):
    q, k, v = attention_inputs(2, 3, 3, 12, 45, 32, dtype=dtype)
    mask = make_mask(kind, 2, 3, 12, 45)
    if mask.is_floating_point():
        mask = mask.to(dtype)
    out = check(q, k, v, backend, attn_mask=mask)
    assert out is None or torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["causal", "bool_key_padding", "float_full_with_-inf"])
@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_scale_of_any_sign(backend, scale, kind):
    """torch takes any float scale. The Triton kernels take the row max on the unscaled scores, signed
    by the scale (attention_common.masked_scores): a negative scale turns the max into the min, and 0
    must neither give -inf * 0 = NaN on masked scores nor lose a float mask. (Not the torch backend:
    torch 2.14's CPU SDPA itself returns NaN for causal with a scale <= 0, its math backend does not.)"""
    dtype, head_dim = smallest_case(backend)
    q, k, v = attention_inputs(2, 3, 3, 12, 21, head_dim, dtype=dtype)
    kw = {"is_causal": True} if kind == "causal" else {"attn_mask": make_mask(kind, 2, 3, 12, 21)}
    if kind.startswith("float"):
        kw["attn_mask"] = kw["attn_mask"].to(dtype)
    out = check(q, k, v, backend, scale=scale, **kw)
    assert out is None or torch.isfinite(out).all()


@pytest.mark.parametrize("case", ["one block", "causal", "bool_key_padding", "float_full_with_-inf", "gqa",
                                  "dropout"])
@pytest.mark.parametrize("defer_pv", [True, False], ids=["deferred P V", "P V in step"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "triton"])
def test_forward_schedules(backend, defer_pv, case, monkeypatch):
    """Both schedules of the Triton forward's loop (attention_fwd.py, "Schedule"; the other tests run the
    default): the deferred P V carries a block's P to the next step and adds the last one after the loop,
    so one key block (the loop's first step is its last), partial blocks, masks, GQA and dropout must all
    agree. (On a GPU, defer_pv_fits keeps dropout on the previous schedule; the interpreter runs both.)"""
    from fasttx.triton_kernels import attention_fwd

    monkeypatch.setattr(attention_fwd, "_DEFER_PV", defer_pv)
    keys = 9 if case == "one block" else 45
    q, k, v = attention_inputs(2, 4, 2 if case == "gqa" else 4, 12, keys, 16, dtype=torch.float32)
    kw = {"is_causal": True} if case == "causal" else {"enable_gqa": True} if case == "gqa" else {}
    if case in MASKS:
        kw["attn_mask"] = make_mask(case, 2, 4, 12, keys)
    if case == "dropout":  # the keep mask of the seed the op draws after manual_seed(7), as test_dropout
        from fasttx.triton_kernels.attention import dropout_keep_mask

        kw["dy"] = torch.randn(2, 4, 12, 16, device=DEVICE)  # drawn before the seed
        torch.manual_seed(7)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))
        kw.update(dropout_p=0.2, dropout_mask=dropout_keep_mask(seed, 2, 4, 12, keys, 0.2, q.device))
        torch.manual_seed(7)
    out = check(q, k, v, backend, **kw)
    assert torch.isfinite(out).all()


def test_bench_previous_schedule_provider():
    """The bench's "fasttx triton (P V in step)" runs the forward with DEFER_PV off and restores it."""
    pytest.importorskip("triton")
    from fasttx.benchmarks import common
    from fasttx.benchmarks.attention import _switched, _triton_pv_in_step
    from fasttx.triton_kernels import attention_fwd

    before, seen = attention_fwd._DEFER_PV, []
    provider = _switched(lambda *t: seen.append(attention_fwd._DEFER_PV) or t[0], _triton_pv_in_step)
    with common.around(provider):
        out = provider(1, 2, 3)
    assert out == 1 and seen == [False] and attention_fwd._DEFER_PV == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_zero_output_and_gradients(backend):
    dtype, head_dim = smallest_case(backend)
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 2, 2, 6, 9, head_dim, dtype=dtype))
    mask = torch.ones(2, 1, 6, 9, dtype=torch.bool, device=DEVICE)
    mask[0, :, 2] = False  # query row 2 of batch 0 sees no key
    mask[1] = False  # batch 1 sees nothing
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    out.backward(torch.randn_like(out))
    assert (out[0, :, 2] == 0).all() and (out[1] == 0).all()
    assert (q.grad[0, :, 2] == 0).all() and (q.grad[1] == 0).all()
    assert (k.grad[1] == 0).all() and (v.grad[1] == 0).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_dims_and_transposed_views(backend):
    """(B, L, H, E) projections viewed as (B, H, L, E), extra batch dims, a (B, 1, 1, S) mask."""
    q = torch.randn(2, 3, 11, 4, 32, device=DEVICE).to(torch.float16).transpose(-3, -2)
    k = torch.randn(2, 3, 13, 4, 32, device=DEVICE).to(torch.float16).transpose(-3, -2)
    v = torch.randn(2, 3, 13, 4, 32, device=DEVICE).to(torch.float16).transpose(-3, -2)
    mask = torch.rand(2, 1, 1, 1, 13, device=DEVICE) > 0.2
    assert not q.is_contiguous()
    check(q, k, v, backend, attn_mask=mask)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_read_transposed_views_in_place(backend, monkeypatch):
    """Triton: its launcher gets the views. CUDA: its op does (the binding copies only views whose rows
    are not 16-byte aligned, which these are)."""
    import fasttx.triton_kernels.attention as kernels
    from fasttx import _ops

    seen = {}
    if backend == "triton":
        real = kernels.attention_fwd

        def spy(q, k, v, *args):
            seen["q"], seen["k"] = q.data_ptr(), k.data_ptr()
            return real(q, k, v, *args)

        monkeypatch.setattr(kernels, "attention_fwd", spy)
    else:
        real_op = _ops.op

        def op_spy(name, direction, backend_):
            fn = real_op(name, direction, backend_)

            def spy(q, k, v, *args):
                seen["q"], seen["k"] = q.data_ptr(), k.data_ptr()
                return fn(q, k, v, *args)

            return spy

        monkeypatch.setattr(_ops, "op", op_spy)
    dtype, head_dim = smallest_case(backend)
    q = torch.randn(2, 9, 4, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    k = torch.randn(2, 9, 4, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    fasttx.scaled_dot_product_attention(q, k, k, backend=backend)
    assert seen == {"q": q.data_ptr(), "k": k.data_ptr()}


@pytest.mark.parametrize("mask", [None, "causal", "key padding"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_tensors_are_not_quadratic(backend, mask):
    """Besides inputs and output, the graph keeps O(B * H * L): nothing of size L * S."""
    # L and S above 2 * E (E <= 32, 2 heads): every input's numel, 2 * L * E or 2 * S * E, is below
    # L * S, so no saved input can pass for an L x S tensor (at L = 64, E = 32: k's 2 * 96 * 32 did).
    queries, keys = 80, 112
    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 2, 2, queries, keys, smallest_case(backend)[1]))
    assert max(q.numel(), k.numel()) < queries * keys
    kw = {"is_causal": True} if mask == "causal" else {}
    if mask == "key padding":
        kw["attn_mask"] = (torch.arange(keys, device=DEVICE) < 70).view(1, 1, 1, keys)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = fasttx.scaled_dot_product_attention(q, k, v, backend=backend, **kw)
    assert sizes and max(sizes) <= max(q.numel(), k.numel(), v.numel(), out.numel())
    assert queries * keys not in sizes and all(s < 2 * queries * keys for s in sizes)


class _LargestAllocation(torch.utils._python_dispatch.TorchDispatchMode):
    """The most elements of any tensor an aten op returns while active (what torch allocates for
    the op's results; a fused kernel's internal blocks are not seen, and are O(block))."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("mask", [None, "causal", "key padding", "fully masked batch"])
def test_torch_backend_allocates_nothing_quadratic(mask):
    """The "torch" backend (torch's fused SDPA plus fasttx's empty-row rule) adds nothing quadratic,
    forward or backward, with no mask, causal or a key-padding mask (B, 1, 1, S), even where a whole
    sequence is padded. On the CPU no tensor of L x S elements (or more) is allocated at all. On CUDA,
    torch's own SDPA may allocate one (its memory-efficient kernel, fp32 with a mask, materialises the
    mask as a (B, H, L, S) bias): there the bound is what F.scaled_dot_product_attention allocates for
    the same call, measured here, and nothing beyond it."""
    batch, heads, queries, keys, head_dim = 2, 2, 128, 160, 8
    q, k, v = (t.requires_grad_() for t in attention_inputs(batch, heads, heads, queries, keys, head_dim,
                                                             dtype=torch.float32))
    kw = {"is_causal": True} if mask == "causal" else {}
    if mask is not None and mask != "causal":
        padding = torch.arange(keys, device=DEVICE).expand(batch, keys) < torch.tensor([[100], [keys]], device=DEVICE)
        if mask == "fully masked batch":
            padding[0] = False
        kw["attn_mask"] = padding.view(batch, 1, 1, keys)
    dy = torch.randn(batch, heads, queries, head_dim, device=DEVICE)
    with _LargestAllocation() as allocations:
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="torch", **kw)
        out.backward(dy)
    linear = batch * heads * queries * max(head_dim, keys // 8)
    assert linear < queries * keys
    if DEVICE == "cpu":
        assert allocations.largest <= linear
    else:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        with _LargestAllocation() as torch_own:
            F.scaled_dot_product_attention(*leaves, **kw).backward(dy)
        assert allocations.largest <= max(linear, torch_own.largest)
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    if mask == "fully masked batch":
        assert (out[0] == 0).all() and (q.grad[0] == 0).all() and (k.grad[0] == 0).all()


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_zero_keys_give_zeros_like_torch(mask):
    q, k, v = attention_inputs(2, 3, 3, 5, 0, 8, dtype=torch.float32)
    q.requires_grad_()
    attn_mask = {None: None, "bool": torch.ones(5, 0, dtype=torch.bool, device=DEVICE),
                 "float": torch.zeros(5, 0, device=DEVICE)}[mask]
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask), rtol=0, atol=0)
    assert out.shape == (2, 3, 5, 8) and (out == 0).all()
    out.sum().backward()
    assert (q.grad == 0).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dropout(backend):
    from fasttx.triton_kernels.attention import dropout_keep_mask

    p = 0.3
    dtype, head_dim = smallest_case(backend)
    q, k, v = attention_inputs(2, 2, 2, 40, 50, head_dim, dtype=dtype)
    dy = torch.randn(2, 2, 40, head_dim, device=DEVICE).to(dtype)
    torch.manual_seed(7)
    first = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=p, backend=backend)
    torch.manual_seed(7)
    assert torch.equal(first, fasttx.scaled_dot_product_attention(q, k, v, dropout_p=p, backend=backend))
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))  # what the op draws after this seed
    keep = dropout_keep_mask(seed, 2, 2, 40, 50, p, q.device)
    n = keep.numel()
    # keep rate within 5 standard deviations of 1 - p
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    torch.manual_seed(7)  # the op draws the same seed again
    check(q, k, v, backend, dy=dy, dropout_p=p, dropout_mask=keep)


# ---- the 5-product backward with atomic dQ (deterministic=False) -------------------------------------------

TRITON = [b for b in BACKENDS if b == "triton"]  # the one backend whose backward the flag changes


def spy_backward_launches(monkeypatch):
    """The names of the Triton backward's autotuned kernels launched from now on, in order."""
    from fasttx.triton_kernels import attention_bwd

    launched = []

    class Spy:
        def __init__(self, name, tuner):
            self.name, self.tuner = name, tuner

        def __getitem__(self, grid):
            launched.append(self.name)
            return self.tuner[grid]

    for name in ("_attn_bwd_kv", "_attn_bwd_q", "_attn_bwd_atomic"):
        monkeypatch.setattr(attention_bwd, name, Spy(name, getattr(attention_bwd, name)))
    return launched


def transposed(batch, heads, length, head_dim, dtype):
    """A (B, H, L, E) view of (B, L, H, E) storage, as a module's projections give."""
    return torch.randn(batch, length, heads, head_dim, device=DEVICE).to(dtype).transpose(1, 2)


ATOMIC_CASES = {  # (B, H, Hkv, L, S, E), keyword arguments
    "L=S=1": ((2, 2, 2, 1, 1, 16), {}),
    "L=1,S=7": ((2, 2, 2, 1, 7, 16), {}),
    "33x100": ((1, 2, 2, 33, 100, 16), {}),
    "100x33,causal": ((1, 2, 2, 100, 33, 16), {"is_causal": True}),
    "5x40,causal": ((2, 2, 2, 5, 40, 16), {"is_causal": True}),
    "gqa,causal": ((2, 4, 1, 17, 29, 32), {"enable_gqa": True, "is_causal": True}),
    "bool_key_padding": ((2, 3, 3, 12, 45, 16), {"attn_mask": "bool_key_padding"}),
    "float_full_with_-inf": ((2, 3, 3, 12, 45, 16), {"attn_mask": "float_full_with_-inf"}),
    "dropout": ((2, 2, 2, 40, 50, 16), {"dropout_p": 0.3}),
    "negative scale": ((2, 2, 2, 12, 21, 16), {"scale": -0.3, "is_causal": True}),  # k is held negated
    "transposed views": ((2, 4, 2, 11, 13, 16), {"enable_gqa": True}),
}


@pytest.mark.parametrize("case", ATOMIC_CASES)
@pytest.mark.parametrize("backend", TRITON)
def test_atomic_dq_backward(backend, case, monkeypatch):
    """deterministic=False: dq, dk, dv of the 5-product kernel (atomic dQ) against float64, in the
    cases of the deterministic kernels' tests; dropout with the forward's keep mask."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    (batch, heads, kv_heads, queries, keys, head_dim), kw = ATOMIC_CASES[case]
    dtype = torch.float32
    if case == "transposed views":
        q, k, v = (transposed(batch, h, n, head_dim, dtype)
                   for h, n in ((heads, queries), (kv_heads, keys), (kv_heads, keys)))
        assert not q.is_contiguous()
    else:
        q, k, v = attention_inputs(batch, heads, kv_heads, queries, keys, head_dim, dtype=dtype)
    if isinstance(kw.get("attn_mask"), str):
        kw = dict(kw, attn_mask=make_mask(kw["attn_mask"], batch, heads, queries, keys))
    dy = torch.randn(batch, heads, queries, head_dim, device=DEVICE)  # before the seed: check draws none then
    if "dropout_p" in kw:
        torch.manual_seed(7)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE))  # what the op draws after this seed
        kw = dict(kw, dropout_mask=dropout_keep_mask(seed, batch, heads, queries, keys, kw["dropout_p"], q.device))
        torch.manual_seed(7)
    launched = spy_backward_launches(monkeypatch)
    check(q, k, v, backend, dy=dy, deterministic=False, **kw)
    assert launched == ["_attn_bwd_atomic"]


# The interpreter's numpy warns on the dK/dV kernel's inf P of padding keys, which reach only their own
# rows, never stored (attention_bwd.py's docstring).
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", TRITON)
def test_padding_keys_never_reach_dq(backend, deterministic):
    """A row masked by -1e30 (finite) has lse ~ -1e30: a padding key of the last block (S = 5 of 16),
    loaded as 0, would get P = 2^(0 - lse) = inf and dQ inf * 0 = NaN; both backwards check the key
    bound where dQ sums over keys (the documented price: that row's gradients are not exact)."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 1, 1, 4, 5, 16, dtype=torch.float32))
    mask = torch.zeros(1, 1, 4, 5, device=DEVICE)
    mask[0, 0, 1] = -1e30
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend, deterministic=deterministic)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (q, k, v)))


@pytest.mark.parametrize("backend", TRITON)
def test_atomic_and_deterministic_backwards_agree(backend):
    """Both backwards of one forward, fp16, GQA with a key-padding mask: within the dtype's tolerance
    (fp32 sums of dQ in another order; dK and dV the same math)."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 4, 2, 37, 53, 32, dtype=torch.float16))
    mask = make_mask("bool_key_padding", 2, 4, 37, 53)
    dy = torch.randn(2, 4, 37, 32, device=DEVICE).to(torch.float16)
    grads = []
    for deterministic in (True, False):
        out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, backend=backend,
                                                  deterministic=deterministic)
        grads.append(torch.autograd.grad(out, (q, k, v), dy))
    for name, ours, theirs in zip(("dq", "dk", "dv"), *grads):
        assert_close(ours, theirs, torch.float16, name)


@pytest.mark.parametrize("backend", TRITON)
def test_deterministic_algorithms_force_the_deterministic_backward(backend, monkeypatch):
    """torch.use_deterministic_algorithms(True) at the backward: deterministic=False runs the dK/dV and
    dQ kernels, not the atomic one; switched off again, the atomic one."""
    q, k, v = (t.requires_grad_() for t in attention_inputs(1, 2, 2, 9, 11, 16, dtype=torch.float32))
    launched = spy_backward_launches(monkeypatch)
    was = torch.are_deterministic_algorithms_enabled()
    for enabled, expected in ((True, ["_attn_bwd_kv", "_attn_bwd_q"]), (False, ["_attn_bwd_atomic"])):
        out = fasttx.scaled_dot_product_attention(q, k, v, backend=backend, deterministic=False)
        launched.clear()
        try:
            torch.use_deterministic_algorithms(enabled)
            out.sum().backward()
        finally:
            torch.use_deterministic_algorithms(was)
        assert launched == expected, enabled


def test_deterministic_must_be_a_bool():
    q, k, v = attention_inputs(1, 1, 1, 4, 4, 16, dtype=torch.float32)
    with pytest.raises(TypeError, match="deterministic must be a bool, got str"):
        fasttx.scaled_dot_product_attention(q, k, v, deterministic="no")


def test_dropout_keep_mask_statistics():
    """Keep rate 1 - p, and the 8 keys one Philox call serves (j // 8 equal) drop independently: each
    pair of them (two halves of one word, or of two) agrees with probability p^2 + (1 - p)^2, not 1 as
    if they shared a value."""
    from fasttx.triton_kernels.attention import dropout_keep_mask

    p = 0.3
    keep = dropout_keep_mask(2**35 + 99, 2, 3, 64, 128, p, DEVICE).cpu()
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    groups = keep.reshape(-1, 8)
    agree = p**2 + (1 - p) ** 2
    for a in range(8):
        for b in range(a + 1, 8):
            rate = (groups[:, a] == groups[:, b]).float().mean().item()
            assert abs(rate - agree) < 5 * (agree * (1 - agree) / len(groups)) ** 0.5, (a, b, rate)


def test_torch_backend_dropout_is_dropout():
    q, k, v = attention_inputs(1, 1, 1, 8, 300, 16, dtype=torch.float32)
    v = torch.ones_like(v)
    out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="torch")
    assert 0.5 < out.mean().item() < 1.5 and not torch.allclose(out, torch.ones_like(out))


def test_matches_torch_sdpa_on_auto():
    q, k, v = attention_inputs(2, 4, 2, 10, 12, 32, dtype=torch.float32)
    for kw in ({}, {"is_causal": True}, {"attn_mask": torch.rand(10, 12, device=DEVICE) > 0.2}):
        torch.testing.assert_close(fasttx.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw),
                                   F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw))


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU calls only")
@pytest.mark.parametrize("dropout_p", [0.0, 0.3], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cpu_masks_go_to_torch_sdpa_as_they_are(dtype, kind, dropout_p, monkeypatch):
    """On CPU the torch backend passes a mask to torch's SDPA as it is: torch's CPU SDPA (each of its
    paths: the flash CPU kernel, the math one for float64 and dropout) gives a row with no key 0 and zero
    gradients itself, fasttx's promise, so nothing is reopened (native._reopen_empty_rows is not called)
    and the result is torch's bit for bit, rows emptied by the mask included (the first query row, a whole
    batch), with GQA."""
    def reopen(*args):
        raise AssertionError("a mask was reopened on CPU")

    monkeypatch.setattr(native, "_reopen_empty_rows", reopen)
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 4, 2, 7, 9, 16, dtype=dtype))
    keep = torch.rand(2, 1, 7, 9) > 0.4
    keep[0, :, 0], keep[1] = False, False
    mask = keep if kind == "bool" else torch.randn(keep.shape).masked_fill(~keep, float("-inf")).to(dtype)
    outs = []
    for attention in (fasttx.scaled_dot_product_attention, F.scaled_dot_product_attention):
        torch.manual_seed(0)
        outs.append(run_with_grads(lambda *t: attention(*t, attn_mask=mask, dropout_p=dropout_p, enable_gqa=True),
                                   (q, k, v), torch.randn(2, 4, 7, 16, dtype=dtype)))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    out, dq, dk, dv = outs[0]
    assert all(torch.isfinite(t).all() for t in outs[0])
    assert (out[0, :, 0] == 0).all() and (out[1] == 0).all() and (dq[0, :, 0] == 0).all() and (dq[1] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all()
    if dropout_p == 0:  # the torch backend's general path (e.g. under autocast) passes it as it is too
        torch.testing.assert_close(native.scaled_dot_product_attention(q, k, v, mask, 0.0, False, None, True), out,
                                   rtol=0, atol=0)


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU calls only")
def test_cpu_masks_emptying_rows_compiled():
    """The same under torch.compile (inductor's CPU SDPA): the emptied rows 0, the gradients finite."""
    torch._dynamo.reset()
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 3, 3, 33, 40, 16, dtype=torch.float32))
    keep = torch.rand(2, 1, 33, 40) > 0.4
    keep[0, :, 5], keep[1] = False, False
    compiled = torch.compile(lambda *t: fasttx.scaled_dot_product_attention(*t, attn_mask=keep), fullgraph=True)
    out, *grads = run_with_grads(compiled, (q, k, v), torch.randn(2, 3, 33, 16))
    assert (out[0, :, 5] == 0).all() and (out[1] == 0).all() and all(torch.isfinite(g).all() for g in grads)
    expected = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=keep)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernel_limits(backend):
    q, k, v = attention_inputs(1, 1, 1, 4, 4, 512, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="head dims above 256 are not supported"):
        fasttx.scaled_dot_product_attention(q, k, v, backend=backend)
    mask = torch.zeros(4, 4, device=DEVICE, requires_grad=True)
    dtype, head_dim = smallest_case(backend)
    q, k, v = attention_inputs(1, 1, 1, 4, 4, head_dim, dtype=dtype)
    with pytest.raises(RuntimeError, match="no gradient for attn_mask"):
        fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)


def test_cuda_limits_are_checked_before_the_op():
    """What explicit backend="cuda" rejects, with the message the tests above expect (checked here on
    any machine; on a GPU the tests above also run the rejected cases)."""
    from fasttx.functional.attention import kernel_limitation

    q, k, v = attention_inputs(1, 1, 1, 4, 4, 64, dtype=torch.float32)
    assert "float16 or bfloat16 input, got torch.float32" in kernel_limitation("cuda", q, v, None)
    assert kernel_limitation("triton", q, v, None) is None
    for e in cuda_head_dims():
        q, k, v = attention_inputs(1, 1, 1, 4, 4, e, dtype=torch.bfloat16)
        assert kernel_limitation("cuda", q, v, None) is None
    for e, ev in ((16, 16), (80, 80), (128, 64)):
        q, k, v = attention_inputs(1, 1, 1, 4, 4, e, ev, dtype=torch.float16)
        expected = f"head dims E == Ev in {_attention_kernels.HEAD_DIMS}, got E={e}, Ev={ev}"
        assert expected in kernel_limitation("cuda", q, v, None)


def test_cuda_head_dims_left_out_of_the_build_are_named(monkeypatch):
    """A fasttx._C built with FASTTX_ATTENTION_HEAD_DIMS=64,128 (its ATTENTION_HEAD_DIMS, faked here):
    backend="cuda" on another head dim of the list raises, saying how to build it."""
    import types

    from fasttx.functional.attention import kernel_limitation

    monkeypatch.setitem(sys.modules, "fasttx._C", types.SimpleNamespace(ATTENTION_HEAD_DIMS=(64, 128)))
    assert cuda_head_dims() == (64, 128)
    q, k, v = attention_inputs(1, 1, 1, 4, 4, 64, dtype=torch.float16)
    assert kernel_limitation("cuda", q, v, None) is None
    q, k, v = attention_inputs(1, 1, 1, 4, 4, 96, dtype=torch.float16)
    assert kernel_limitation("cuda", q, v, None) == (
        "head dim E=96 was left out of this build of fasttx._C (it has (64, 128)): rebuild it with "
        "FASTTX_ATTENTION_HEAD_DIMS unset (all head dims) or listing 96")
    monkeypatch.setattr(fasttx.backends, "resolve", lambda op, backend, t: backend)  # cuda, as on a GPU
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run this call: head dim E=96 was left out"):
        fasttx.scaled_dot_product_attention(q, k, v, backend="cuda")


def test_bad_input_errors():
    q, k, v = attention_inputs(2, 4, 2, 5, 6, 16, dtype=torch.float32)
    sdpa = fasttx.scaled_dot_product_attention
    for args in ((q[0, 0], k, v), (q[0, 0], k[0, 0], v[0, 0])):  # (torch's SDPA takes 2-D q, k and v)
        with pytest.raises(ValueError, match=r"query must have at least 3 dims .*got shape \[5, 16\]"):
            sdpa(*args)
    # Batch dims torch would broadcast: refused on every backend (torch's SDPA itself would take them),
    # 4-D (the one batch dim), 5-D (the leading dims), in any of the three.
    for batched in ((q, k[:1], v[:1]), (q, k, v[:1]), (q[:1], k, v),
                    (q.expand(3, *q.shape), k[None], v[None]), (q[None], k[None], v.expand(3, *v.shape))):
        with pytest.raises(ValueError, match="the same batch dims"):
            sdpa(*batched, enable_gqa=True)
    with pytest.raises(ValueError, match="query has 4 heads and key/value 2"):
        sdpa(q, k, v)
    with pytest.raises(ValueError, match="query has 4 heads and key/value 3"):
        sdpa(q, *attention_inputs(2, 3, 3, 5, 6, 16, dtype=torch.float32)[1:], enable_gqa=True)
    with pytest.raises(ValueError, match="the same head dim E, got 16 and 8"):
        sdpa(q, k[..., :8], v, enable_gqa=True)
    with pytest.raises(TypeError, match="value must have query's dtype torch.float32, got torch.float16"):
        sdpa(q, k, v.half(), enable_gqa=True)
    with pytest.raises(ValueError, match=r"attn_mask of shape \[5, 7\] must broadcast to \(..., H, L, S\) = \[2, 4, 5, 6\]"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool, device=DEVICE), enable_gqa=True)
    with pytest.raises(ValueError, match="attn_mask and is_causal cannot both be given"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool, device=DEVICE), is_causal=True, enable_gqa=True)
    for dropout_p in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"dropout_p must be in \[0, 1\), got {dropout_p}"):
            sdpa(q, k, v, dropout_p=dropout_p, enable_gqa=True)
    with pytest.raises(TypeError, match="scale must be a float or None, got Tensor"):  # (torch's SDPA takes it)
        sdpa(q, k, v, scale=torch.tensor(0.5), enable_gqa=True)
    with pytest.raises(TypeError, match="query must have a floating-point dtype"):
        sdpa(q.long(), k, v)
