"""fasttx.nn.MultiheadAttention against torch.nn.MultiheadAttention: a randomized sweep (fixed seed)
over the constructor x forward argument space, outputs, returned weights and every gradient."""

import copy
import pickle
import random

import pytest
import torch

import fasttx
from fasttx.testing import rel_error

from . import randomize_parameters
from ..conftest import DEVICE, runnable_backends

KERNEL_BACKENDS = [b for b in runnable_backends(op="attention") if b != "torch"]
# The CUDA attention takes fp16 / bf16 only (with head dims from 32): its module tests are the
# half-precision ones below.
FP32_BACKENDS = [b for b in KERNEL_BACKENDS if b != "cuda"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def _mask(kind, shape, dtype):
    """A torch-convention mask (bool True = masked out, float added) that never masks key 0, so no
    row is fully masked (where torch gives NaN and fasttx 0)."""
    if kind is None:
        return None
    masked = torch.rand(shape, device=DEVICE) < 0.3
    masked[..., 0] = False
    if kind == "bool":
        return masked
    return torch.randn(shape, device=DEVICE, dtype=dtype).masked_fill(masked, float("-inf"))


def _config(rng):
    """One random point of the constructor x forward argument space."""
    embed_dim, heads = rng.choice([(8, 2), (12, 3), (16, 4), (6, 1)])
    kv_dims = rng.random() < 0.25
    inputs = "cross" if kv_dims else rng.choice(["self", "shared_kv", "cross"])
    queries = rng.choice([1, 4, 7])
    cfg = dict(
        ctor=dict(embed_dim=embed_dim, num_heads=heads, bias=rng.random() < 0.8, add_bias_kv=rng.random() < 0.3,
                  add_zero_attn=rng.random() < 0.3, batch_first=rng.random() < 0.5,
                  kdim=5 if kv_dims else None, vdim=7 if kv_dims else None),
        inputs=inputs, batched=rng.random() < 0.8, batch=rng.choice([1, 3]), queries=queries,
        keys=queries if inputs == "self" else rng.choice([1, 5, 9]),
        key_padding_mask=rng.choice([None, None, "bool", "float"]),
        attn_mask=rng.choice([None, "2d bool", "2d float", "3d bool", "3d float"]),
        need_weights=rng.random() < 0.5, average_attn_weights=rng.random() < 0.5,
        is_causal=rng.random() < 0.2, training=rng.random() < 0.6,
    )
    if cfg["is_causal"]:  # the hint comes with the causal mask, top-left aligned
        cfg["attn_mask"] = rng.choice(["causal bool", "causal float"])
    if cfg["key_padding_mask"] is not None and cfg["attn_mask"] is not None:
        # torch turns masks of mixed types into float (with a deprecation warning): keep one type
        cfg["key_padding_mask"] = "bool" if "bool" in cfg["attn_mask"] else "float"
    return cfg


def _inputs(cfg, dtype, embed_dim, kdim, vdim):
    batch_first, batch = cfg["ctor"]["batch_first"], cfg["batch"]

    def tensor(seq, features):
        shape = ((batch, seq) if batch_first else (seq, batch)) if cfg["batched"] else (seq,)
        return torch.randn(*shape, features, device=DEVICE, dtype=dtype)

    query = tensor(cfg["queries"], embed_dim)
    if cfg["inputs"] == "self":
        return query, query, query
    key = tensor(cfg["keys"], kdim)
    return query, key, key if cfg["inputs"] == "shared_kv" else tensor(cfg["keys"], vdim)


def _masks(cfg, dtype, heads):
    batch, queries, keys = cfg["batch"] if cfg["batched"] else 1, cfg["queries"], cfg["keys"]
    kind = cfg["attn_mask"]
    if kind is None:
        attn_mask = None
    elif kind.startswith("causal"):
        attn_mask = torch.ones(queries, keys, dtype=torch.bool, device=DEVICE).triu(1)
        if kind.endswith("float"):
            attn_mask = torch.zeros(queries, keys, dtype=dtype, device=DEVICE).masked_fill(attn_mask, float("-inf"))
    else:
        dims, mask_kind = kind.split()
        attn_mask = _mask(mask_kind, (queries, keys) if dims == "2d" else (batch * heads, queries, keys), dtype)
    key_padding_mask = _mask(cfg["key_padding_mask"], (batch, keys) if cfg["batched"] else (keys,), dtype)
    return key_padding_mask, attn_mask


def _same_random_like(t):
    """The same random tensor on every call with a tensor of this shape: the output gradient."""
    generator = torch.Generator(device=t.device).manual_seed(1234)
    return torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)


def _run(module, inputs, masks, cfg, train):
    """Output, weights and, in training, the gradients of the inputs and of every parameter."""
    key_padding_mask, attn_mask = masks
    leaves = []
    for t in inputs:  # keep the identities (self-attention, shared key/value) the module sees
        if not any(t is u for u, _ in leaves):
            leaves.append((t, t.detach().clone().requires_grad_(train)))
    lookup = [next(leaf for u, leaf in leaves if u is t) for t in inputs]
    module.train(train)
    with torch.set_grad_enabled(train):
        out, weights = module(*lookup, key_padding_mask=key_padding_mask, need_weights=cfg["need_weights"],
                              attn_mask=attn_mask, average_attn_weights=cfg["average_attn_weights"],
                              is_causal=cfg["is_causal"])
    results = {"out": out, "weights": weights}
    if train:
        grads = torch.autograd.grad(out, [leaf for _, leaf in leaves] + list(module.parameters()),
                                    _same_random_like(out), allow_unused=True)
        names = [f"input {i}" for i in range(len(leaves))] + [n for n, _ in module.named_parameters()]
        results.update({f"grad {n}": g for n, g in zip(names, grads)})
    return results


def _compare(cfg, dtype, backend):
    ctor = cfg["ctor"]
    theirs = randomize_parameters(torch.nn.MultiheadAttention(**ctor, device=DEVICE, dtype=dtype), 0.5)
    ours = fasttx.nn.MultiheadAttention(**ctor, device=DEVICE, dtype=dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = _inputs(cfg, dtype, ctor["embed_dim"], ctor["kdim"] or ctor["embed_dim"], ctor["vdim"] or ctor["embed_dim"])
    masks = _masks(cfg, dtype, ctor["num_heads"])
    expected = _run(theirs, inputs, masks, cfg, cfg["training"])
    got = _run(ours, inputs, masks, cfg, cfg["training"])
    assert expected.keys() == got.keys()
    for name, want in expected.items():
        have = got[name]
        if want is None:
            assert have is None, name
            continue
        assert have.shape == want.shape and have.dtype == want.dtype, (name, have.shape, want.shape)
        torch.testing.assert_close(have, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype], msg=f"{name}: {cfg}")


SWEEP = [_config(random.Random(i)) for i in range(80)]


@pytest.mark.parametrize("cfg", SWEEP, ids=[str(i) for i in range(len(SWEEP))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_parity_with_torch(cfg, dtype):
    _compare(cfg, dtype, "torch")


@pytest.mark.parametrize("cfg", SWEEP[:12], ids=[str(i) for i in range(12)])
@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_parity_with_torch_on_the_kernels(cfg, backend):
    _compare(cfg, torch.float32, backend)


def _half_config(i):
    cfg = _config(random.Random(1000 + i))
    cfg["ctor"].update(embed_dim=64, num_heads=2)  # head dim 32, which every kernel backend takes
    return cfg


@pytest.mark.parametrize("i", range(8))
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_half_precision_on_the_kernels(i, backend):
    """fp16 module on the kernels vs torch.nn in float64, by FlashAttention's rule: each output and
    gradient at most twice as far from float64 as torch.nn's own fp16 module, plus one rounding."""
    cfg = _half_config(i)
    ctor = cfg["ctor"]
    exact = randomize_parameters(torch.nn.MultiheadAttention(**ctor, device=DEVICE, dtype=torch.float64), 0.5)
    theirs = copy.deepcopy(exact).half()
    ours = fasttx.nn.MultiheadAttention(**ctor, device=DEVICE, dtype=torch.float16, backend=backend)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = _inputs(cfg, torch.float64, ctor["embed_dim"], ctor["kdim"] or 64, ctor["vdim"] or 64)
    masks = _masks(cfg, torch.float64, ctor["num_heads"])

    halves = {}  # one fp16 copy per distinct input: self-attention stays self-attention
    inputs16 = [halves.setdefault(id(t), t.half()) for t in inputs]
    masks16 = tuple(m if m is None or m.dtype == torch.bool else m.half() for m in masks)
    expected = _run(exact, inputs, masks, cfg, cfg["training"])
    baseline = _run(theirs, inputs16, masks16, cfg, cfg["training"])
    got = _run(ours, inputs16, masks16, cfg, cfg["training"])
    # A gradient can be a difference of nearly equal terms (the query's, when a row keeps one key:
    # softmax's gradient then cancels exactly), leaving only rounding noise in both fp16 modules;
    # gradients are judged against the size of the largest one, the size of those terms.
    grad_scale = max((want.norm().item() for name, want in expected.items() if want is not None and "grad" in name),
                     default=0.0)
    for name, want in expected.items():
        if want is None:
            assert got[name] is None, name
            continue
        scale = grad_scale if "grad" in name else 0.0
        allowed = 2 * rel_error(baseline[name], want, scale) + 1e-3
        error = rel_error(got[name], want, scale)
        assert error <= allowed, (name, error, allowed, cfg)


def test_sweep_covers_the_argument_space():
    # The sweep is random: make sure it reaches every value of every argument.
    seen = {key: {str(c[key]) for c in SWEEP} for key in SWEEP[0] if key != "ctor"}
    seen.update({key: {str(c["ctor"][key]) for c in SWEEP} for key in SWEEP[0]["ctor"]})
    for key in ("key_padding_mask", "need_weights", "is_causal", "training", "batched", "inputs", "average_attn_weights",
                "bias", "add_bias_kv", "add_zero_attn", "batch_first", "kdim"):
        assert len(seen[key]) >= 2, key
    assert seen["attn_mask"] >= {"None", "2d bool", "2d float", "3d bool", "3d float", "causal bool", "causal float"}


@pytest.fixture
def attention_calls(monkeypatch):
    """The (q, k, v, mask, dropout_p, is_causal) each MultiheadAttention call hands the fused attention."""
    calls = []
    real = fasttx.functional.scaled_dot_product_attention

    def spy(q, k, v, mask, dropout_p, is_causal, **kwargs):
        calls.append((q, k, v, mask, dropout_p, is_causal))
        return real(q, k, v, mask, dropout_p, is_causal, **kwargs)

    monkeypatch.setattr(fasttx.nn.attention.functional, "scaled_dot_product_attention", spy)
    return calls


def test_self_attention_reads_strided_heads_without_copies(attention_calls):
    """One packed projection; the kernel gets (N, H, L, D) views of it (no transposing copy)."""
    for batch_first in (True, False):
        mha = fasttx.nn.MultiheadAttention(16, 4, batch_first=batch_first, device=DEVICE)
        x = torch.randn(2, 5, 16, device=DEVICE)
        mha(x, x, x, need_weights=False)
        q, k, v = attention_calls[-1][:3]
        batch, seq = (2, 5) if batch_first else (5, 2)
        assert q.shape == (batch, 4, seq, 4) and not q.is_contiguous() and q.stride(-1) == 1
        assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()


def test_key_padding_mask_is_not_expanded(attention_calls):
    mha = fasttx.nn.MultiheadAttention(16, 4, batch_first=True, device=DEVICE)
    x = torch.randn(3, 6, 16, device=DEVICE)
    padding = torch.zeros(3, 6, dtype=torch.bool, device=DEVICE)
    padding[0, 4:] = True
    mha(x, x, x, key_padding_mask=padding, need_weights=False)
    assert attention_calls[-1][3].shape == (3, 1, 1, 6)
    mha(x, x, x, key_padding_mask=padding, attn_mask=torch.ones(6, 6, dtype=torch.bool, device=DEVICE).triu(1),
        need_weights=False)
    assert attention_calls[-1][3].shape == (3, 1, 6, 6)  # merged with a 2-D attn_mask: no head dim


def test_causal_hint_uses_the_kernel_causal_masking(attention_calls):
    mha = fasttx.nn.MultiheadAttention(8, 2, device=DEVICE)
    x = torch.randn(5, 2, 8, device=DEVICE)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5, device=DEVICE)
    out, weights = mha(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    mask, _, is_causal = attention_calls[-1][3:]
    assert mask is None and is_causal is True and weights is None
    torch.testing.assert_close(out, mha(x, x, x, attn_mask=causal, need_weights=False)[0])


def _emptying_masks(kind, dtype):
    """(key_padding_mask, attn_mask) in torch's convention for a batch of 2, 3 queries, 5 keys, 2 heads,
    and the (batch, query) rows left with no key: (1, *) by the key padding, (*, 1) by the attn_mask."""
    padding = torch.zeros(2, 5, dtype=torch.bool, device=DEVICE)
    padding[0, 3:] = padding[1] = True  # batch 1 keeps no key
    rows = torch.zeros(3, 5, dtype=torch.bool, device=DEVICE)
    rows[1] = True  # query 1 keeps no key
    rows[2, 0] = True
    masks = {"kp": (padding, None), "2d": (None, rows), "3d": (None, rows.repeat(4, 1, 1)), "kp+2d": (padding, rows)}
    key_padding_mask, attn_mask = masks[kind.split()[0]]
    if kind.endswith("float"):  # (masked out: -inf; kept: random biases)
        key_padding_mask, attn_mask = (None if m is None else torch.randn(m.shape, device=DEVICE, dtype=dtype)
                                       .masked_fill(m, float("-inf")) for m in (key_padding_mask, attn_mask))
    empty = torch.zeros(2, 3, dtype=torch.bool, device=DEVICE)
    if kind.startswith("kp"):
        empty[1] = True
    if "d" in kind.split()[0]:
        empty[:, 1] = True
    return key_padding_mask, attn_mask, empty


@pytest.mark.parametrize("kind", ["kp bool", "kp float", "2d bool", "2d float", "3d bool", "3d float", "kp+2d bool",
                                  "kp+2d float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fully_masked_rows_give_zero_not_nan(kind, dtype):
    """Rows with no key give 0 (output: the out-projection's bias alone; weights: 0) and zero gradients,
    with or without the weights; the other rows are torch.nn's (which gives NaN in the empty ones)."""
    theirs = randomize_parameters(torch.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE, dtype=dtype), 0.5)
    ours = fasttx.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    key_padding_mask, attn_mask, empty = _emptying_masks(kind, dtype)
    query = torch.randn(2, 3, 8, device=DEVICE, dtype=dtype)
    memory = torch.randn(2, 5, 8, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        want, want_weights = theirs(query, memory, memory, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
    for need_weights in (False, True):
        x = query.clone().requires_grad_()
        with torch.autograd.detect_anomaly():  # no NaN on the way, forward or backward
            out, weights = ours(x, memory, memory, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                need_weights=need_weights)
            out.backward(_same_random_like(out))
        torch.testing.assert_close(out[empty], ours.out_proj.bias.expand(int(empty.sum()), -1))
        torch.testing.assert_close(out[~empty], want[~empty], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        assert (x.grad[empty] == 0).all()
        if need_weights:
            assert (weights[empty] == 0).all()
            torch.testing.assert_close(weights[~empty], want_weights[~empty], rtol=TOLERANCE[dtype],
                                       atol=TOLERANCE[dtype])


def test_dropout_in_training_only():
    mha = fasttx.nn.MultiheadAttention(8, 2, dropout=0.5, device=DEVICE)
    x = torch.randn(6, 2, 8, device=DEVICE)
    mha.eval()
    first, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(first, mha(x, x, x, need_weights=False)[0], rtol=0, atol=0)
    mha.train()
    torch.manual_seed(0)
    a = mha(x, x, x, need_weights=False)[0]
    torch.manual_seed(1)
    b = mha(x, x, x, need_weights=False)[0]
    assert not torch.allclose(a, b) and not torch.allclose(a, first)
    _, weights = mha(x, x, x)  # the returned weights are the dropped-out ones, as torch's
    assert (weights == 0).any()


def test_state_dict_both_ways_and_default_initialisation():
    for kwargs in ({}, {"kdim": 5, "vdim": 3}, {"add_bias_kv": True, "bias": False}):
        torch.manual_seed(0)
        theirs = torch.nn.MultiheadAttention(12, 3, **kwargs)
        torch.manual_seed(0)
        ours = fasttx.nn.MultiheadAttention(12, 3, **kwargs)
        assert isinstance(ours, torch.nn.MultiheadAttention)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for (name, p), q in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(p, q), name  # the same seed draws the same initial parameters
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs.load_state_dict(ours.state_dict(), strict=True)


def test_deepcopy_pickle_and_repr():
    mha = fasttx.nn.MultiheadAttention(8, 2, backend="torch")
    x = torch.randn(3, 1, 8)
    for clone in (copy.deepcopy(mha), pickle.loads(pickle.dumps(mha))):
        assert type(clone) is fasttx.nn.MultiheadAttention and clone.backend == "torch"
        torch.testing.assert_close(clone(x, x, x)[0], mha(x, x, x)[0], rtol=0, atol=0)
    assert "backend=torch" in repr(mha)


def test_autocast_bf16_on_cpu():
    mha = fasttx.nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = mha(x, x, x)
        out_fast, _ = mha(x, x, x, need_weights=False)
    assert out.dtype == out_fast.dtype == torch.bfloat16
    reference, _ = torch.nn.MultiheadAttention(16, 4, batch_first=True).requires_grad_(False), None
    reference.load_state_dict(mha.state_dict())
    torch.testing.assert_close(out_fast.float(), reference(x, x, x)[0], rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("call,error,match", [
    (lambda m, x: m(x, x[:1], x[:1]), ValueError, "same batch size"),
    (lambda m, x: m(x, x, x[..., :4]), ValueError, "value must have 8 features"),
    (lambda m, x: m(x[0, 0], x, x), ValueError, "query must be 3-D"),
    (lambda m, x: m(x, x.tolist(), x), TypeError, "key must be a Tensor, got list"),
    (lambda m, x: m(x, x, None), TypeError, "value must be a Tensor, got NoneType"),
    (lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)), ValueError, r"key_padding_mask must have shape \[2, 5\]"),
    (lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, 4)), ValueError, r"attn_mask must have shape \[5, 5\] or \[4, 5, 5\]"),
    (lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.int64)), TypeError, "attn_mask must be a bool or floating-point"),
    (lambda m, x: m(x, x, x, is_causal=True), ValueError, "is_causal=True is a hint"),
    (lambda m, x: m(x, x.double(), x), TypeError, "key must have query's dtype"),
    (lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.float64)), TypeError,
     "floating-point attn_mask must have query's dtype torch.float32, got torch.float64"),
    (lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.float16), need_weights=False), TypeError,
     "floating-point key_padding_mask must have query's dtype torch.float32, got torch.float16"),
])
def test_bad_input_is_refused_clearly(call, error, match):
    mha = fasttx.nn.MultiheadAttention(8, 2, batch_first=True)
    with pytest.raises(error, match=match):
        call(mha, torch.randn(2, 5, 8))


@pytest.mark.parametrize("call", [
    lambda m, x: m(x, x[:, :, 0], x[:, :, 0]),  # key / value of the wrong rank
    lambda m, x: m(x, x, x[:, :, 0]),
    lambda m, x: m(x[None], x, x),  # query of the wrong rank
    lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 1, 5, dtype=torch.bool)),
    lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool)),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(1, 1, 5, 5, dtype=torch.bool)),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, dtype=torch.bool)),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(6, 5)),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(2, 5, 5)),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.int64)),
    lambda m, x: m(x[..., :4], x, x),
    lambda m, x: m(x, x, x[:, :4]),
    lambda m, x: m(x, x, x, is_causal=True),
    lambda m, x: m(x, x.double(), x.double()),
    lambda m, x: m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.float64)),
    lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.float16), need_weights=False),
], ids=["key rank", "value rank", "query rank", "key_padding_mask rank", "key_padding_mask shape", "attn_mask 4-D",
        "attn_mask 1-D", "attn_mask 2-D shape", "attn_mask 3-D shape", "attn_mask dtype", "query features",
        "key/value lengths", "is_causal without mask", "key dtype", "attn_mask float dtype", "key_padding_mask float dtype"])
def test_errors_are_catchable_as_what_torch_raises(call):
    """Code written against torch.nn.MultiheadAttention catches torch's exception types
    (AssertionError for most argument errors): fasttx's errors are those too."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    with pytest.raises(Exception) as raised_by_torch:
        call(torch.nn.MultiheadAttention(8, 2, batch_first=True), x)
    with pytest.raises(raised_by_torch.type, match="fasttx.nn.MultiheadAttention"):
        call(fasttx.nn.MultiheadAttention(8, 2, batch_first=True), x)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bias_dtype", [torch.float64, torch.bfloat16])
def test_in_proj_bias_of_another_dtype_is_accepted_like_torch(bias_dtype, train):
    """torch's module runs batch-first self-attention with an in_proj_bias in another dtype than
    its weights (the bias is added to the weights' dtype result); so does fasttx's."""
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True).train(train)
    randomize_parameters(theirs, 0.3)
    theirs.in_proj_bias.data = theirs.in_proj_bias.data.to(bias_dtype)
    ours = fasttx.patch(copy.deepcopy(theirs))
    x = torch.randn(2, 5, 8)
    for need_weights in (True, False):
        expected, _ = theirs(x, x, x, need_weights=need_weights)
        out, _ = ours(x, x, x, need_weights=need_weights)
        assert out.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("queries,keys", [(0, 4), (4, 0), (0, 0)])
@pytest.mark.parametrize("masks", [None, "bool", "float"])
def test_empty_sequences_like_torch(queries, keys, need_weights, masks):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2)
    ours = fasttx.patch(copy.deepcopy(theirs))
    q, kv = torch.randn(queries, 3, 8, requires_grad=True), torch.randn(keys, 3, 8)
    dtype = torch.bool if masks == "bool" else torch.float32
    given = {} if masks is None else dict(key_padding_mask=torch.zeros(3, keys, dtype=dtype),
                                          attn_mask=torch.zeros(queries, keys, dtype=dtype))
    try:
        expected, expected_weights = theirs(q, kv, kv, need_weights=need_weights, **given)
    except RuntimeError:  # torch's need_weights=False cannot view masks with no key (a -1 dim of 0 elements)
        assert not need_weights and masks is not None and keys == 0
        expected, expected_weights = theirs(q, kv, kv, need_weights=True, **given)[0], None
    out, weights = ours(q, kv, kv, need_weights=need_weights, **given)
    torch.testing.assert_close(out, expected)
    assert (weights is None) == (expected_weights is None)
    if weights is not None:
        torch.testing.assert_close(weights, expected_weights)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_need_weights_false_allocates_nothing_quadratic():
    """MultiheadAttention(need_weights=False) with a key-padding mask on the default (CPU: "torch")
    backend: no tensor of L x S elements is allocated, forward or backward."""
    from ..ops.test_attention import _LargestAllocation

    batch, seq, embed_dim = 2, 256, 32
    mha = fasttx.nn.MultiheadAttention(embed_dim, 4, batch_first=True, device=DEVICE)
    x = torch.randn(batch, seq, embed_dim, device=DEVICE, requires_grad=True)
    padding = torch.zeros(batch, seq, dtype=torch.bool, device=DEVICE)
    padding[0, 200:] = True
    with _LargestAllocation() as allocations:
        out, _ = mha(x, x, x, key_padding_mask=padding, need_weights=False)
        out.sum().backward()
    assert allocations.largest <= 3 * batch * seq * embed_dim < seq * seq


def test_bad_construction_is_refused_clearly():
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of num_heads, got embed_dim=10, num_heads=3"):
        fasttx.nn.MultiheadAttention(10, 3)
    # As catchable as torch's errors for the same arguments (an AssertionError where not divisible).
    for args in [(10, 3), (8, 16), (8, 0), (0, 2), (-8, 2)]:
        with pytest.raises(Exception) as raised_by_torch:
            torch.nn.MultiheadAttention(*args)
        with pytest.raises(raised_by_torch.type, match="fasttx.nn.MultiheadAttention"):
            fasttx.nn.MultiheadAttention(*args)
    with pytest.raises(ValueError, match="backend must be one of"):
        fasttx.nn.MultiheadAttention(8, 2, backend="tpu")


@pytest.mark.parametrize("tracer", ["eager", "compile", "make_fx", "jit.trace"])
@pytest.mark.parametrize("mask", ["key_padding_mask", "attn_mask"])
def test_weights_path_traced_where_every_row_kept_zeroes_empty_rows_later(tracer, mask):
    """The weights path skips zeroing rows that keep no key where, on CPU in eager mode, it reads that no
    row is so: never where a graph is recorded (torch.compile, make_fx, jit.trace), which would keep
    the skip for a later call whose mask empties a row."""
    from torch.fx.experimental.proxy_tensor import make_fx

    mha = fasttx.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE).eval()
    query, memory = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 5, 8, device=DEVICE)
    # torch's convention, True = masked out: the key padding (N, S) of a batch of 2, or the attn_mask (L, S)
    every_row_kept = torch.zeros((2, 5) if mask == "key_padding_mask" else (3, 5), dtype=torch.bool, device=DEVICE)
    every_row_kept[0, 3:] = True
    some_row_empty = every_row_kept.clone()
    some_row_empty[1] = True  # batch 1, or query 1, keeps no key

    class Attend(torch.nn.Module):  # (jit.trace records a module's parameters as such)
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, q, kv, m):
            return self.mha(q, kv, kv, **{mask: m})

    attend = Attend()

    with torch.no_grad():
        want_out, want_weights = attend(query, memory, some_row_empty)
        if tracer == "compile":
            traced = torch.compile(attend, fullgraph=True, backend="aot_eager")
        elif tracer == "make_fx":
            traced = make_fx(attend)(query, memory, every_row_kept)
        elif tracer == "jit.trace":
            traced = torch.jit.trace(attend, (query, memory, every_row_kept), check_trace=False)
        else:
            traced = attend
        traced(query, memory, every_row_kept)
        out, weights = traced(query, memory, some_row_empty)
    assert (weights[1] == 0).all() if mask == "key_padding_mask" else (weights[:, 1] == 0).all()
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(weights, want_weights)


def test_weights_path_under_vmap_zeroes_empty_rows():
    """vmap over the batch (per-sample key padding, one sample all padding) gives the batched call's
    results: the rows' values are not read inside the transform."""
    mha = fasttx.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE).eval()
    query, memory = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 5, 8, device=DEVICE)
    padding = torch.zeros(2, 5, dtype=torch.bool, device=DEVICE)
    padding[0, 3:] = padding[1] = True
    with torch.no_grad():
        want_out, want_weights = mha(query, memory, memory, key_padding_mask=padding)
        out, weights = torch.func.vmap(lambda q, kv, m: mha(q, kv, kv, key_padding_mask=m))(query, memory, padding)
    assert (weights[1] == 0).all()
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(weights, want_weights)


@pytest.mark.parametrize("need_weights", [True, False])
def test_float_masks_get_torchs_gradients(need_weights):
    """A float attn_mask and key_padding_mask that require grad get torch.nn's gradients (the weights
    path adds them inside baddbmm; the rows' check reads them detached)."""
    theirs = randomize_parameters(torch.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE), 0.5)
    ours = fasttx.nn.MultiheadAttention(8, 2, batch_first=True, device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    query, memory = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 5, 8, device=DEVICE)
    masks = [torch.randn(3, 5, device=DEVICE), torch.randn(2, 5, device=DEVICE)]
    results = []
    for module in (theirs, ours):
        attn_mask, padding = (m.clone().requires_grad_() for m in masks)
        out, _ = module(query, memory, memory, attn_mask=attn_mask, key_padding_mask=padding, need_weights=need_weights)
        out.backward(_same_random_like(out))
        results.append((out, attn_mask.grad, padding.grad))
    for want, have in zip(*results):
        torch.testing.assert_close(have, want)
