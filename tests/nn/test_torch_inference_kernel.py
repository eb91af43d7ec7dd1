"""Small inputs in inference on CPU: fasttx.nn.MultiheadAttention and TransformerEncoderLayer run
torch's fused kernel (called as torch.nn's forward calls it) exactly where that computes what
fasttx's forward would (fasttx/nn/_backend.py, torch_inference_kernel_applies); everywhere else,
fasttx's own path."""

import copy

import pytest
import torch

import fasttx
from fasttx.functional import native
from fasttx.nn import _backend

from ..conftest import OpRecorder

FUSED = {"mha": "aten::_native_multi_head_attention", "layer": "aten::_transformer_encoder_layer_fwd"}


def _module(kind, batch_first=True, **kwargs):
    if kind == "mha":
        return fasttx.nn.MultiheadAttention(16, 4, batch_first=batch_first, **kwargs).eval()
    return fasttx.nn.TransformerEncoderLayer(16, 4, 24, batch_first=batch_first, **kwargs).eval()


def _torch_twin(kind, ours, batch_first=True, **kwargs):
    """The torch.nn module ``_module(kind, batch_first, **kwargs)`` stands for, holding ``ours``'s parameters."""
    theirs = (torch.nn.MultiheadAttention(16, 4, batch_first=batch_first) if kind == "mha"
              else torch.nn.TransformerEncoderLayer(16, 4, 24, batch_first=batch_first, **kwargs))
    theirs.to(next(ours.parameters()).dtype).load_state_dict(ours.state_dict())
    return theirs.eval()


def _call(kind, module, x, key_padding_mask=None, **kwargs):
    if kind == "mha":
        return module(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, **kwargs)[0]
    return module(x, src_key_padding_mask=key_padding_mask, **kwargs)


def _run(kind, module, x, key_padding_mask=None, grad=False, **kwargs):
    """(output, the ops dispatched); ``grad``: with autograd recording, which keeps fasttx's path."""
    with torch.set_grad_enabled(grad), OpRecorder() as recorder:
        out = _call(kind, module, x, key_padding_mask, **kwargs)
    return out.detach(), recorder.ops


def _padding(seq, lengths):
    """(len(lengths), seq) key-padding mask: True past each sequence's length."""
    return torch.arange(seq)[None, :] >= torch.tensor(lengths)[:, None]


CASES = [("mha", {}), ("layer", {}), ("layer", {"norm_first": True}), ("layer", {"activation": "gelu"})]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind,kwargs", CASES, ids=str)
def test_small_inference_runs_torchs_fused_kernel_with_fasttxs_result(kind, kwargs, padded):
    module = _module(kind, **kwargs)
    x = torch.randn(3, 7, 16)
    mask = _padding(7, [7, 4, 1]) if padded else None
    out, ops = _run(kind, module, x, mask)
    assert FUSED[kind] in ops
    own, own_ops = _run(kind, module, x, mask, grad=True)  # parameters require grad: fasttx's path
    assert FUSED[kind] not in own_ops
    torch.testing.assert_close(out, own, rtol=1e-5, atol=1e-5)
    assert fasttx.backends.last_used["attention"] == "torch"


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("tokens", [7, _backend.TORCH_INFERENCE_KERNEL_MAX_ELEMENTS // 48 + 1], ids=["small", "large"])
def test_inference_with_weights_runs_torchs_fused_kernel_with_fasttxs_weights(tokens, padded, average):
    """need_weights=True (torch.nn's default) too: torch's kernel returns the weights fasttx's path
    computes, averaged over the heads or per head; at any size, since both hold the L x S weights
    (above TORCH_INFERENCE_KERNEL_MAX_ELEMENTS only calls without weights keep fasttx's path)."""
    module = _module("mha")
    x = torch.randn(3, tokens, 16)
    mask = _padding(tokens, [tokens, 4, 1]) if padded else None
    with torch.no_grad(), OpRecorder() as recorder:
        out, weights = module(x, x, x, key_padding_mask=mask, average_attn_weights=average)
    assert FUSED["mha"] in recorder.ops
    with OpRecorder() as recorder:  # parameters require grad: fasttx's path
        own, own_weights = module(x, x, x, key_padding_mask=mask, average_attn_weights=average)
    assert FUSED["mha"] not in recorder.ops
    torch.testing.assert_close(out, own.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, own_weights.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,kwargs", CASES[:2], ids=str)
def test_fasttxs_path_wherever_torchs_kernel_would_differ_or_be_slower(kind, kwargs, monkeypatch):
    module = _module(kind, **kwargs)
    x = torch.randn(3, 7, 16)
    # A sequence that is all padding: torch's kernel gives it NaN, fasttx 0 attention.
    out, ops = _run(kind, module, x, _padding(7, [7, 0, 2]))
    assert FUSED[kind] not in ops and torch.isfinite(out).all()
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7)
    mask_name = "attn_mask" if kind == "mha" else "src_mask"
    refused = {  # (an attn_mask is taken only where the is_causal hint names it causal, without key padding)
        "a float key-padding mask": dict(key_padding_mask=torch.zeros(3, 7)),
        "an attn_mask": {mask_name: causal},
        "an additive attn_mask": {mask_name: torch.randn(7, 7)},
        "is_causal with a key-padding mask": {mask_name: causal, "is_causal": True,
                                              "key_padding_mask": _padding(7, [7, 4, 1])},
        "is_causal with a per-head attn_mask": {mask_name: causal.expand(12, 7, 7), "is_causal": True},
    }
    for why, call_kwargs in refused.items():
        mask = call_kwargs.pop("key_padding_mask", None)
        _, ops = _run(kind, module, x, mask, **call_kwargs)
        assert FUSED[kind] not in ops, why
    module.train()
    _, ops = _run(kind, module, x)
    assert FUSED[kind] not in ops, "training"
    module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ops = _run(kind, module, x)
    assert FUSED[kind] not in ops, "autocast"
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)  # set_fastpath_enabled(False)
        _, ops = _run(kind, module, x)
    assert FUSED[kind] not in ops, "torch.backends.mha's fast path turned off"
    _, ops = _run(kind, module, torch.randn(4, _backend.TORCH_INFERENCE_KERNEL_MAX_ELEMENTS // 64 + 1, 16))
    assert FUSED[kind] not in ops, "an input above the size where torch's kernel is faster"
    module.requires_grad_(False)  # frozen: autograd records only through an input that requires grad
    _, ops = _run(kind, module, x, grad=True)
    assert FUSED[kind] in ops
    _, ops = _run(kind, module, x.clone().requires_grad_(), grad=True)
    assert FUSED[kind] not in ops, "autograd recording"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module.backend = "triton"
    with OpRecorder() as recorder, torch.no_grad():
        _call(kind, module, x.detach())
    assert FUSED[kind] not in recorder.ops and "fasttx::attention_fwd_triton" in recorder.ops


def test_only_cpu_input_takes_torchs_kernel():
    """On CUDA torch's encoder-layer kernel computes GELU by its tanh approximation: any input not on
    the CPU keeps fasttx's path (a meta tensor stands for one here)."""
    module = _module("mha")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert _backend.torch_inference_kernel_applies(module, x, None, [("attention", module)])
        assert not _backend.torch_inference_kernel_applies(module, x.to("meta"), None, [("attention", module)])


@pytest.mark.parametrize("kind", ["mha", "layer"])
def test_bad_input_in_inference_still_names_the_argument(kind):
    """torch's forward refuses the mask with its own words; fasttx's path then runs and names it."""
    module = _module(kind)
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), pytest.raises(ValueError, match=r"key_padding_mask must have shape \[2, 5\]"):
        _call(kind, module, x, torch.zeros(2, 4, dtype=torch.bool))


def test_encoder_takes_nested_tensors_in_inference_as_torch():
    theirs = torch.nn.TransformerEncoderLayer(16, 4, 24, batch_first=True).eval()
    ours = fasttx.patch(copy.deepcopy(theirs))
    nested = torch.nested.nested_tensor([torch.randn(5, 16), torch.randn(3, 16)])
    with torch.no_grad():
        torch.testing.assert_close(ours(nested).to_padded_tensor(0.0), theirs(nested).to_padded_tensor(0.0))


def test_a_layer_whose_attention_has_a_bias_key_keeps_fasttxs_path():
    """torch's encoder-layer fast path does not ask whether its self_attn has bias_k / bias_v (its
    kernel would drop them); fasttx's asks (fused_kernel_takes)."""
    layer = _module("layer")
    layer.self_attn = fasttx.nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True).eval()
    x = torch.randn(2, 5, 16)
    out, ops = _run("layer", layer, x)
    assert FUSED["layer"] not in ops
    torch.testing.assert_close(out, _run("layer", layer, x, grad=True)[0], rtol=1e-5, atol=1e-5)


def test_submodules_swapped_by_the_user_are_taken_as_they_are():
    """A torch.nn LayerNorm put back into a fasttx layer is torch's own (the fused kernel may run);
    a norm that is not a LayerNorm, or a feed-forward linear whose forward is not torch's Linear's,
    keeps fasttx's path, which runs it as the module it is (torch.nn's fast path would read its
    weight, or fail to)."""
    layer = _module("layer")
    x = torch.randn(2, 5, 16)
    layer.norm1 = torch.nn.LayerNorm(16)
    out, ops = _run("layer", layer, x)
    assert FUSED["layer"] in ops
    torch.testing.assert_close(out, _run("layer", layer, x, grad=True)[0], rtol=1e-5, atol=1e-5)
    layer.norm2 = torch.nn.Identity()
    out, ops = _run("layer", layer, x)
    assert FUSED["layer"] not in ops
    wrapped = copy.deepcopy(layer)  # a feed-forward linear whose forward is not torch's Linear's: it runs
    wrapped.linear1 = torch.nn.Sequential(layer.linear1, torch.nn.Identity())
    torch.testing.assert_close(_run("layer", wrapped, x)[0], out, rtol=0, atol=0)
    layer.norm2 = wrapped.norm2 = copy.deepcopy(layer.norm1)
    wrapped_out, ops = _run("layer", wrapped, x)
    assert FUSED["layer"] not in ops
    torch.testing.assert_close(wrapped_out, _run("layer", layer, x)[0], rtol=1e-5, atol=1e-5)
    layer.norm2 = torch.nn.Identity()
    with torch.no_grad():  # post-norm: norm2(h + feed_forward(h)), h = norm1(x + attention(x))
        h = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
        expected = h + layer.linear2(layer.activation(layer.linear1(h)))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [3, 64])
@pytest.mark.parametrize("kind", ["mha", "layer"])
def test_a_sequence_all_padding_is_found_wherever_it_is(kind, batch):
    """The key-padding mask is read on the host (native.some_row_all): the sequence that is all padding
    is found in any row, and a sequence whose last key alone is real is not one."""
    seq = 20
    module = _module(kind)
    x = torch.randn(batch, seq, 16)
    for row in (0, batch // 2, batch - 1):
        mask = _padding(seq, torch.randint(1, seq + 1, (batch,)).tolist())
        assert native.some_row_all(mask, True) is False
        mask[row, :-1], mask[row, -1] = True, False  # only the last key is real
        assert native.some_row_all(mask, True) is False
        _, ops = _run(kind, module, x, mask)
        assert FUSED[kind] in ops
        mask[row, -1] = True
        assert native.some_row_all(mask, True) is True
        out, ops = _run(kind, module, x, mask)
        assert FUSED[kind] not in ops and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["mha", "layer"])
def test_a_key_padding_mask_not_read_keeps_torchs_kernel_out(kind, monkeypatch):
    """Where the mask is not read on the host (native.some_row_all says None: a large mask without numpy,
    which Tensor.numpy() needs), a sequence may be all padding, which torch's kernel would give NaN:
    fasttx's forward runs and gives torch.nn's result."""
    monkeypatch.setattr(native, "some_row_all", lambda mask, value, dim=-1: None)
    module = _module(kind)
    x = torch.randn(3, 20, 16)
    mask = _padding(20, [20, 7, 12])
    out, ops = _run(kind, module, x, mask)
    assert FUSED[kind] not in ops
    want, _ = _run(kind, _torch_twin(kind, module), x, mask)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq-first"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind,kwargs", CASES, ids=str)
def test_the_fused_kernel_gives_torch_nns_result(kind, kwargs, padded, batch_first):
    """fasttx calls torch's kernel itself, not through torch.nn's forward (which would repeat its checks),
    with a bool key-padding mask as it is where torch's forward passes its float form: batch_first, the
    same output (weights too) bit for bit as torch.nn's module with the same parameters. Seq-first
    (torch.nn's default), where torch.nn's forward never takes its kernel, fasttx's gives it the input
    transposed and returns what torch.nn's returns: (L, N, E), contiguous, the same values to rounding."""
    ours = _module(kind, batch_first, **kwargs)
    theirs = _torch_twin(kind, ours, batch_first, **kwargs)
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    mask = _padding(7, [7, 4, 1]) if padded else None
    tolerance = dict(rtol=0, atol=0) if batch_first else dict(rtol=1e-5, atol=1e-5)
    out, ops = _run(kind, ours, x, mask)
    assert FUSED[kind] in ops
    expected, theirs_ops = _run(kind, theirs, x, mask)
    assert (FUSED[kind] in theirs_ops) == batch_first
    assert out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, **tolerance)
    if kind == "mha":  # the weights too, averaged over the heads or not
        for average in (True, False):
            with torch.no_grad(), OpRecorder() as recorder:
                got = ours(x, x, x, key_padding_mask=mask, average_attn_weights=average)
            assert FUSED[kind] in recorder.ops
            with torch.no_grad():
                want = theirs(x, x, x, key_padding_mask=mask, average_attn_weights=average)
            torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("hook", ["forward hook", "forward pre-hook"])
@pytest.mark.parametrize("where", ["linear1", "norm2", "self_attn", "self_attn.out_proj"])
def test_a_hooked_submodule_keeps_the_layers_submodule_calls(where, hook):
    """The fused kernel would not run a submodule's hooks: as torch.nn's layer, fasttx's then calls its
    submodules (torch.nn's MultiheadAttention never calls out_proj: there its hook runs on neither)."""
    layer = _module("layer")
    x = torch.randn(2, 5, 16)
    expected, _ = _run("layer", layer, x)
    calls = []
    module = layer.get_submodule(where)
    if hook == "forward hook":
        handle = module.register_forward_hook(lambda *args: calls.append(where))
    else:
        handle = module.register_forward_pre_hook(lambda *args: calls.append(where))
    out, ops = _run("layer", layer, x)
    assert FUSED["layer"] not in ops
    assert calls == ([] if where == "self_attn.out_proj" else [where])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    handle.remove()
    _, ops = _run("layer", layer, x)
    assert FUSED["layer"] in ops


@pytest.mark.parametrize("kind", ["mha", "layer"])
def test_torch_function_overrides_and_make_fx_see_the_ops_of_the_unfused_path(kind):
    """As in torch.nn's forwards: a __torch_function__ override (a TorchFunctionMode here) and make_fx's
    graph see the ops of the path without the fused kernel."""
    module = _module(kind)
    x = torch.randn(2, 5, 16)

    class Seen(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    expected, _ = _run(kind, module, x)
    with torch.no_grad(), Seen() as seen:
        out = _call(kind, module, x)
    assert not any(name.startswith(("_native_multi_head_attention", "_transformer_encoder_layer_fwd"))
                   for name in seen.names)
    assert "linear" in seen.names
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        graph = make_fx(lambda t: _call(kind, module, t))(x)
    targets = {str(node.target) for node in graph.graph.nodes}
    assert not any("_native_multi_head_attention" in t or "_transformer_encoder_layer_fwd" in t for t in targets)
    torch.testing.assert_close(graph(x), expected, rtol=1e-5, atol=1e-5)


def test_parametrized_weights_are_read_as_torch_nn_reads_them():
    """A parametrization's weight (a property, not in _parameters) goes to the kernel as torch.nn's layer
    passes it."""
    class Doubled(torch.nn.Module):
        def forward(self, weight):
            return 2 * weight

    ours = _module("layer")
    theirs = _torch_twin("layer", ours)
    for layer in (ours, theirs):
        torch.nn.utils.parametrize.register_parametrization(layer.linear1, "weight", Doubled())
    x = torch.randn(2, 5, 16)
    out, ops = _run("layer", ours, x)
    assert FUSED["layer"] in ops
    torch.testing.assert_close(out, _run("layer", theirs, x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=["bool", "float"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq-first"])
@pytest.mark.parametrize("kind,kwargs", CASES, ids=str)
def test_the_causal_hint_runs_the_fused_kernel_with_its_mask(kind, kwargs, batch_first, dtype):
    """An (L, L) attn_mask that is_causal=True names the causal mask (torch's hint; no row of it is all
    masked out) goes to torch's kernel as torch.nn's forward merges it: torch.nn's result (bit for bit
    where torch.nn runs the same kernel), and fasttx's own path's."""
    ours = _module(kind, batch_first, **kwargs)
    theirs = _torch_twin(kind, ours, batch_first, **kwargs)
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7)
    mask = causal.isinf() if dtype == torch.bool else causal
    call = dict(attn_mask=mask, is_causal=True) if kind == "mha" else dict(src_mask=mask, is_causal=True)
    out, ops = _run(kind, ours, x, **call)
    assert FUSED[kind] in ops
    expected, theirs_ops = _run(kind, theirs, x, **call)
    # (torch.nn's MultiheadAttention keeps a float attn_mask off its kernel; its encoder layer does not)
    theirs_fused = batch_first and not (kind == "mha" and dtype != torch.bool)
    assert (FUSED[kind] in theirs_ops) == theirs_fused
    tolerance = dict(rtol=0, atol=0) if theirs_fused else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, **tolerance)
    torch.testing.assert_close(out, _run(kind, ours, x, grad=True, **call)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,seq", [(1, 1), (1, 5), (4, 1)])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq-first"])
@pytest.mark.parametrize("kind", ["mha", "layer"])
def test_odd_shapes_and_dtypes_give_torch_nns_result(kind, batch_first, batch, seq, dtype):
    """One sequence, one token, fp64 and bf16, with and without a key-padding mask: what torch.nn's module
    gives in inference (its fused kernel or its other path), to the dtype's rounding."""
    ours = _module(kind, batch_first).to(dtype)
    theirs = _torch_twin(kind, ours, batch_first)
    x = torch.randn(batch, seq, 16, dtype=dtype)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    for mask in (None, _padding(seq, [seq] + [max(1, seq - 2)] * (batch - 1))):
        out, _ = _run(kind, ours, x, mask)
        expected, _ = _run(kind, theirs, x, mask)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        torch.testing.assert_close(out, expected, **tolerance)
