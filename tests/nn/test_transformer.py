"""fasttx.nn Transformer layers and stacks against torch.nn's, and fasttx.patch on whole models."""

import contextlib
import copy
import functools
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx.testing import TOLERANCE

from . import randomize_parameters
from ..conftest import DEVICE, OpRecorder, runnable_backends

D_MODEL, HEADS, FF = 16, 4, 24
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "callable": lambda x: F.silu(x) * 2}


def _pair(torch_cls, fasttx_cls, *args, **kwargs):
    """(torch module, fasttx module holding equal parameters)."""
    theirs = randomize_parameters(torch_cls(*args, **kwargs), 0.3)
    ours = fasttx_cls(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _causal(size, kind):
    mask = torch.ones(size, size, dtype=torch.bool, device=DEVICE).triu(1)
    return mask if kind == "bool" else torch.zeros(size, size, dtype=torch.float64, device=DEVICE).masked_fill(mask, float("-inf"))


def _padding(batch, seq, kind):
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=DEVICE)
    mask[0, seq // 2 + 1:] = True  # one padded sequence; key 0 never padded
    return mask if kind == "bool" else torch.zeros(batch, seq, dtype=torch.float64, device=DEVICE).masked_fill(mask, float("-inf"))


def _seq_first(x, batch_first):
    return x if batch_first else x.transpose(0, 1).contiguous()


def _outputs_and_grads(module, inputs, call, train, dy_seed=7):
    leaves = [t.detach().clone().requires_grad_(train) for t in inputs]
    module.train(train)
    with torch.set_grad_enabled(train):
        out = call(module, *leaves)
    if not train:
        return [out]
    dy = torch.randn(out.shape, generator=torch.Generator(device=DEVICE).manual_seed(dy_seed), dtype=out.dtype, device=DEVICE)
    return [out, *torch.autograd.grad(out, leaves + list(module.parameters()), dy)]


def _assert_all_close(got, expected, tolerance=1e-10):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=f"output/gradient {i}")


@contextlib.contextmanager
def _torch_fast_path(enabled):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _with_tanh_gelu_encoder_layers(module):
    """A copy of a torch.nn module whose encoder layers compute GELU as its tanh approximation."""
    twin = copy.deepcopy(module)
    for layer in twin.modules():
        if isinstance(layer, torch.nn.TransformerEncoderLayer) and layer.activation is F.gelu:
            layer.activation = functools.partial(F.gelu, approximate="tanh")
    return twin


def _assert_parity(ours, theirs, inputs, call, train):
    """fasttx against torch.nn's defined math, its forward with the fast path off, to 1e-10; in eval
    mode also against torch's fast path as it runs, to the bound below.

    The eval fast path (torch._transformer_encoder_layer_fwd, taken for batch_first inputs without
    grad) runs linear1 + activation as torch._addmm_activation, whose GELU on CUDA is the tanh
    approximation (cuBLASLt's GELU epilogue; its non-Lt fallback calls gelu_(..., "tanh") to match),
    and on CPU the exact GELU. So on CUDA torch's fast path computes another function than its own
    module: max |gelu - gelu_tanh| is 4.7e-4, ~1e-4 at these layers' outputs in fp64. The bound,
    element by element, is the gap between torch's slow path with the exact and with the tanh GELU
    in its encoder layers (the decoder has no fast path), plus 2e-10 of rounding: by the triangle
    inequality it holds whichever GELU the fast path uses, and a fasttx error beyond it fails."""
    got = _outputs_and_grads(ours, inputs, call, train)
    with _torch_fast_path(False):
        expected = _outputs_and_grads(theirs, inputs, call, train)
    _assert_all_close(got, expected)
    if train:
        return
    fast = _outputs_and_grads(theirs, inputs, call, train)[0]
    with _torch_fast_path(False):
        tanh = _outputs_and_grads(_with_tanh_gelu_encoder_layers(theirs), inputs, call, train)[0]
    excess = (got[0] - fast).abs() - ((expected[0] - tanh).abs() + 2e-10)
    assert excess.max() <= 0, f"fasttx differs from torch's fast path by {excess.max():.3g} beyond the GELU gap"


LAYER_CASES = list(itertools.product([False, True], ["relu", "gelu", "callable"], [False, True],
                                     [None, "bool", "float", "causal"], [True, False]))


@pytest.mark.parametrize("norm_first,activation,batch_first,masks,train", LAYER_CASES)
def test_encoder_layer_parity(norm_first, activation, batch_first, masks, train):
    kwargs = dict(d_model=D_MODEL, nhead=HEADS, dim_feedforward=FF, dropout=0.0, activation=ACTIVATIONS[activation],
                  batch_first=batch_first, norm_first=norm_first, device=DEVICE, dtype=torch.float64)
    theirs, ours = _pair(torch.nn.TransformerEncoderLayer, fasttx.nn.TransformerEncoderLayer, **kwargs)
    x = _seq_first(torch.randn(3, 6, D_MODEL, device=DEVICE, dtype=torch.float64), batch_first)
    mask_kw = {}
    if masks == "causal":
        mask_kw = dict(src_mask=_causal(6, "float"), is_causal=True)
    elif masks is not None:
        mask_kw = dict(src_mask=_causal(6, masks), src_key_padding_mask=_padding(3, 6, masks))

    def call(module, src):
        return module(src, **mask_kw)

    _assert_parity(ours, theirs, [x], call, train)


@pytest.mark.parametrize("norm_first,batch_first,masks,train", list(itertools.product(
    [False, True], [False, True], [None, "bool", "float"], [True, False])))
def test_decoder_layer_parity(norm_first, batch_first, masks, train):
    kwargs = dict(d_model=D_MODEL, nhead=HEADS, dim_feedforward=FF, dropout=0.0, batch_first=batch_first,
                  norm_first=norm_first, device=DEVICE, dtype=torch.float64)
    theirs, ours = _pair(torch.nn.TransformerDecoderLayer, fasttx.nn.TransformerDecoderLayer, **kwargs)
    tgt = _seq_first(torch.randn(2, 5, D_MODEL, device=DEVICE, dtype=torch.float64), batch_first)
    memory = _seq_first(torch.randn(2, 7, D_MODEL, device=DEVICE, dtype=torch.float64), batch_first)
    mask_kw = {} if masks is None else dict(
        tgt_mask=_causal(5, masks), tgt_key_padding_mask=_padding(2, 5, masks),
        memory_key_padding_mask=_padding(2, 7, masks))

    def call(module, tgt, memory):
        return module(tgt, memory, **mask_kw)

    _assert_all_close(_outputs_and_grads(ours, [tgt, memory], call, train),
                      _outputs_and_grads(theirs, [tgt, memory], call, train))


@pytest.mark.parametrize("norm_first,batch_first,train", list(itertools.product([False, True], [False, True], [True, False])))
def test_transformer_parity(norm_first, batch_first, train):
    kwargs = dict(d_model=D_MODEL, nhead=HEADS, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FF,
                  dropout=0.0, activation="gelu", batch_first=batch_first, norm_first=norm_first, device=DEVICE,
                  dtype=torch.float64)
    theirs, ours = _pair(torch.nn.Transformer, fasttx.nn.Transformer, **kwargs)
    src = _seq_first(torch.randn(2, 7, D_MODEL, device=DEVICE, dtype=torch.float64), batch_first)
    tgt = _seq_first(torch.randn(2, 5, D_MODEL, device=DEVICE, dtype=torch.float64), batch_first)
    padding = _padding(2, 7, "bool")

    def call(module, src, tgt):
        # tgt_mask: the causal mask, detected as such (tgt_is_causal=None)
        return module(src, tgt, tgt_mask=_causal(5, "float"), src_key_padding_mask=padding,
                      memory_key_padding_mask=padding)

    _assert_parity(ours, theirs, [src, tgt], call, train)


@pytest.mark.parametrize("train", [True, False])
def test_encoder_stack_parity_with_padding(train):
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, dtype=torch.float64,
                                             device=DEVICE)
    norm = torch.nn.LayerNorm(D_MODEL, dtype=torch.float64, device=DEVICE)
    theirs, ours = _pair(torch.nn.TransformerEncoder, fasttx.nn.TransformerEncoder, layer, 3, norm)
    assert all(type(m) is fasttx.nn.TransformerEncoderLayer for m in ours.layers)
    x = torch.randn(3, 6, D_MODEL, device=DEVICE, dtype=torch.float64)
    padding = _padding(3, 6, "bool")

    def call(module, src):
        return module(src, src_key_padding_mask=padding)

    # In eval mode without grad both write 0 at padded positions (then the final norm): torch on nested
    # tensors, fasttx packed (_packed_forward) or, on a small CPU input as here, on the padded batch.
    got, expected = (_outputs_and_grads(m, [x], call, train) for m in (ours, theirs))
    _assert_all_close(got, expected)


def _padded_encoder(norm, backend="auto", dtype=torch.float64, **kwargs):
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, dtype=dtype,
                                             device=DEVICE, **kwargs)
    norm = torch.nn.LayerNorm(D_MODEL, dtype=dtype, device=DEVICE) if norm else None
    theirs, ours = _pair(torch.nn.TransformerEncoder, fasttx.nn.TransformerEncoder, layer, 2, norm)
    ours.backend = backend
    return theirs.eval(), ours.eval()


def _left_aligned_padding(lengths, seq, kind):
    """Sequences of these lengths (0: all padding), padded at the end; float: -inf, as torch's own."""
    mask = torch.arange(seq, device=DEVICE)[None, :] >= torch.tensor(lengths, device=DEVICE)[:, None]
    return mask if kind == "bool" else torch.zeros(mask.shape, dtype=torch.float64, device=DEVICE).masked_fill(
        mask, float("-inf"))


@pytest.mark.parametrize("route", ["packed", "padded"])
@pytest.mark.parametrize("backend", runnable_backends(op="attention"))
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("norm", [False, True])
def test_encoder_inference_runs_real_tokens_only_as_torch_does(norm, kind, backend, route, monkeypatch):
    """Eval mode, no grad, a left-aligned key-padding mask: torch's encoder runs nested tensors (padded
    positions 0); fasttx's computes the same, with an all-padding sequence and the batch's last columns
    all padding. Above PADDED_BATCH_MAX_ELEMENTS (or off the CPU) it packs the real tokens
    (linear1 sees T rows, not N x S; the attention is cut after the last real column); below, on CPU, it
    runs the padded batch through the layers (torch's fused kernel per layer where that applies) and
    writes 0 at the padded positions. Both routes here on the same small input (the limit lowered to 0
    for the packed one)."""
    if route == "packed":
        monkeypatch.setattr(fasttx.nn.transformer, "PADDED_BATCH_MAX_ELEMENTS", 0)
    elif DEVICE != "cpu":
        pytest.skip("the padded route is the CPU's")
    # The kernels take fp32 at most: there, fp32's tolerance (fasttx.testing) against torch in fp32.
    dtype, tolerance = (torch.float64, 1e-10) if backend in ("auto", "torch") else (torch.float32, TOLERANCE[torch.float32])
    theirs, ours = _padded_encoder(norm, backend, dtype)
    lengths, seq = [5, 2, 0, 3], 7
    padding = _left_aligned_padding(lengths, seq, kind)
    x = torch.randn(len(lengths), seq, D_MODEL, dtype=dtype, device=DEVICE)
    rows = []
    hook = ours.layers[0].linear1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1]))
    with torch.no_grad():
        keep = ours._torch_packs(x, None, padding)  # the real tokens, as torch reads the mask
        assert keep is not None and torch.equal(keep, torch.arange(seq, device=DEVICE)[None, :] < torch.tensor(
            lengths, device=DEVICE)[:, None])
        got = ours(x, src_key_padding_mask=padding)
    with torch.no_grad():
        expected = theirs(x, src_key_padding_mask=padding)
    hook.remove()
    if route == "packed":
        assert rows == [(sum(lengths),)]
    else:  # the all-padding sequence keeps the layers off torch's kernel (it would give it NaN): fasttx's path
        assert rows == [(len(lengths), seq)]
        nonempty = [i for i, n in enumerate(lengths) if n]
        with torch.no_grad(), OpRecorder() as recorder:
            ours(x[nonempty], src_key_padding_mask=padding[nonempty])
        runs_torch = backend in ("auto", "torch")
        assert ("aten::_transformer_encoder_layer_fwd" in recorder.ops) == runs_torch
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    if not norm:
        assert (got[padding.bool() if kind == "bool" else padding != 0] == 0).all()
    if route == "padded":
        with torch.no_grad():
            got = ours(x[nonempty], src_key_padding_mask=padding[nonempty])
            expected = theirs(x[nonempty], src_key_padding_mask=padding[nonempty])
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_encoder_inference_route_follows_the_input_size():
    """The padded route up to PADDED_BATCH_MAX_ELEMENTS input elements, packed above."""
    theirs, ours = _padded_encoder(False, dtype=torch.float32)
    limit = fasttx.nn.transformer.PADDED_BATCH_MAX_ELEMENTS
    for seq, packed in ((limit // (2 * D_MODEL), False), (limit // (2 * D_MODEL) + 1, True)):
        x = torch.randn(2, seq, D_MODEL, device=DEVICE)
        padding = _left_aligned_padding([seq, seq // 2], seq, "bool")
        rows = []
        hook = ours.layers[0].linear1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1]))
        with torch.no_grad():
            got, expected = ours(x, src_key_padding_mask=padding), theirs(x, src_key_padding_mask=padding)
        hook.remove()
        assert rows == [(seq + seq // 2,) if packed or DEVICE != "cpu" else (2, seq)]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _not_left_aligned(batch, seq):
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=DEVICE)
    mask[1, 0] = True  # a padded first token
    return mask


@pytest.mark.parametrize("case", ["train", "grad", "not_left_aligned", "attn_mask", "norm_first", "no_nested",
                                  "fast_path_off"])
def test_encoder_keeps_the_padded_batch_where_torch_does(case):
    """Where torch's encoder does not run nested tensors, fasttx's does not pack either: the padded
    positions are computed, as torch computes them."""
    theirs, ours = _padded_encoder(True, norm_first=case == "norm_first")
    if case == "no_nested":
        theirs.use_nested_tensor = ours.use_nested_tensor = False
    batch, seq = 3, 6
    x = torch.randn(batch, seq, D_MODEL, dtype=torch.float64, device=DEVICE)
    padding = _not_left_aligned(batch, seq) if case == "not_left_aligned" else _left_aligned_padding([6, 3, 1], seq, "bool")
    attn_mask = _causal(seq, "bool") if case == "attn_mask" else None
    for m in (ours, theirs):
        m.train(case == "train")
    with contextlib.ExitStack() as stack:
        if case == "fast_path_off":
            stack.enter_context(_torch_fast_path(False))
        stack.enter_context(torch.set_grad_enabled(case == "grad"))
        assert ours._torch_packs(x, attn_mask, padding) is None
        got = ours(x, mask=attn_mask, src_key_padding_mask=padding)
        expected = theirs(x, mask=attn_mask, src_key_padding_mask=padding)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (got != 0).all()  # padded positions computed, not zeroed


def test_encoder_packs_only_layers_it_knows():
    """A layer that is not fasttx's (a user subclass keeps its class), or whose attention has bias_k: the
    padded path, whose output equals torch's at the real tokens."""
    class Custom(torch.nn.TransformerEncoderLayer):
        pass

    theirs, ours = _padded_encoder(False)
    ours.layers[1] = copy.deepcopy(theirs.layers[1])
    ours.layers[1].__class__ = Custom
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64, device=DEVICE)
    padding = _left_aligned_padding([5, 2], 5, "bool")
    with torch.no_grad():
        assert ours._torch_packs(x, None, padding) is None
        keep = ~padding[..., None]
        torch.testing.assert_close(ours(x, src_key_padding_mask=padding) * keep,
                                   theirs(x, src_key_padding_mask=padding) * keep, rtol=1e-10, atol=1e-10)


def test_same_seed_same_initialisation():
    for torch_cls, fasttx_cls, args in [
        (torch.nn.TransformerEncoderLayer, fasttx.nn.TransformerEncoderLayer, (D_MODEL, HEADS)),
        (torch.nn.TransformerDecoderLayer, fasttx.nn.TransformerDecoderLayer, (D_MODEL, HEADS)),
        (torch.nn.Transformer, fasttx.nn.Transformer, (D_MODEL, HEADS, 2, 2, FF)),
    ]:
        torch.manual_seed(0)
        theirs = torch_cls(*args)
        torch.manual_seed(0)
        ours = fasttx_cls(*args)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for (name, p), q in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(p, q), name
        theirs.load_state_dict(ours.state_dict(), strict=True)
        fasttx_types = {type(m) for m in ours.modules()}
        assert not fasttx_types & {torch.nn.MultiheadAttention, torch.nn.LayerNorm, torch.nn.TransformerEncoderLayer}


def test_backend_reaches_every_submodule():
    model = fasttx.nn.Transformer(D_MODEL, HEADS, 1, 1, FF, backend="torch")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"torch"}
    model.backend = "auto"
    assert model.decoder.layers[0].multihead_attn.backend == "auto"
    assert "backend=auto" in repr(model.encoder.layers[0].norm1)


def test_deepcopy_and_pickle():
    layer = fasttx.nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, backend="torch")
    x = torch.randn(4, 2, D_MODEL)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(clone.self_attn) is fasttx.nn.MultiheadAttention and clone.self_attn.backend == "torch"
        torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=0)


# ---- fasttx.patch ----------------------------------------------------------------------------


class _Model(torch.nn.Module):
    """A user model built from torch.nn layers, with a user subclass that must stay as it is."""

    class OwnNorm(torch.nn.LayerNorm):
        pass

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, D_MODEL)
        layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.cross = torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
        self.norm = torch.nn.LayerNorm(D_MODEL)
        self.own = self.OwnNorm(D_MODEL)
        self.head = torch.nn.Sequential(torch.nn.Linear(D_MODEL, 8), torch.nn.Softmax(-1))

    def forward(self, x, padding):
        h = self.encoder(self.embed(x), src_key_padding_mask=padding)
        h = h + self.cross(h, h[:, :3], h[:, :3], need_weights=False)[0]
        return self.head(self.own(self.norm(h)))


# fp32 with head dim 4: not for the CUDA attention (fp16 / bf16, head dims from 32), whose module
# tests are tests/nn/test_multihead_attention.py's half-precision ones.
@pytest.mark.parametrize("backend", [b for b in runnable_backends(op="attention") if b != "cuda"])
def test_patch_converts_every_layer_in_place(backend):
    torch.manual_seed(0)
    model = _Model().to(DEVICE)
    reference = copy.deepcopy(model)
    params = {name: p for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, padding = torch.randn(2, 6, 8, device=DEVICE), _padding(2, 6, "bool")

    assert fasttx.patch(model, backend=backend) is model
    assert model.fasttx_patched == {"TransformerEncoder": 1, "TransformerEncoderLayer": 2, "MultiheadAttention": 3,
                                    "LayerNorm": 5, "Softmax": 1}
    assert type(model.own) is _Model.OwnNorm  # a user subclass keeps its own class
    assert type(model.encoder.layers[1].self_attn) is fasttx.nn.MultiheadAttention
    assert all(m.backend == backend for m in model.modules() if isinstance(m, fasttx.nn.MultiheadAttention))
    assert {name: p for name, p in model.named_parameters()} == params  # the same tensors

    tolerance = 1e-5 if backend == "torch" else 2e-4
    for train in (True, False):  # eval + no_grad is where torch's fast path would bypass a swapped self_attn
        model.train(train), reference.train(train)
        with torch.set_grad_enabled(train):
            torch.testing.assert_close(model(x, padding), reference(x, padding), rtol=tolerance, atol=tolerance)
    model(x, padding).square().sum().backward()
    reference(x, padding).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=tolerance, atol=tolerance, msg=name)
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer.step()  # the optimizer built before patching still steps the model's parameters
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_patch_logs_what_it_converted(caplog):
    with caplog.at_level("INFO", logger="fasttx"):
        fasttx.patch(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)))
        fasttx.patch(torch.nn.Linear(4, 4))
    assert "fasttx.patch: converted 1 LayerNorm" in caplog.text and "converted nothing" in caplog.text
    with pytest.raises(ValueError, match="backend must be one of"):
        fasttx.patch(torch.nn.LayerNorm(4), backend="tpu")


# ---- torch integration -----------------------------------------------------------------------


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_encoder_layer(compiler):
    torch._dynamo.reset()
    layer = fasttx.nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, norm_first=True)
    x = torch.randn(2, 6, D_MODEL, requires_grad=True)
    padding = _padding(2, 6, "bool").cpu()
    compiled = torch.compile(layer, fullgraph=True, backend=compiler)
    out = compiled(x, src_key_padding_mask=padding)
    torch.testing.assert_close(out, layer(x, src_key_padding_mask=padding))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    encoder = fasttx.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(torch.compile(encoder, fullgraph=True, backend=compiler)(x, mask=causal),
                               encoder(x, mask=causal))


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    model = fasttx.nn.Transformer(D_MODEL, HEADS, 1, 1, FF, dropout=0.0, batch_first=True)
    src, tgt = torch.randn(2, 7, D_MODEL), torch.randn(2, 5, D_MODEL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(src, tgt, tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5))
    out.float().sum().backward()
    expected = model(src, tgt, tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5))
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("model", [42, "model", None, torch.randn(2)], ids=["int", "str", "None", "Tensor"])
def test_patch_refuses_what_is_not_a_module(model):
    with pytest.raises(TypeError, match=f"fasttx.patch: model must be a torch.nn.Module, got {type(model).__name__}"):
        fasttx.patch(model)
