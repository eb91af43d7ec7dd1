"""fasttx.nn modules through what users run torch.nn modules through: their forward's signature,
torch.jit.script (and save / load) and torch.fx.symbolic_trace. Each accepts what torch.nn's module
accepts, and gives torch's results (fasttx/nn/_backend.py: torch_forward, BackendMixin._traced)."""

import inspect
import io
import types
import typing
import warnings

import pytest
import torch

import fasttx
import fasttx.nn
from fasttx.nn import DROP_INS

from . import randomize_parameters

D_MODEL, HEADS, FF = 16, 4, 24


def _layer(cls, **kwargs):
    return cls(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, **kwargs)


# name -> (torch module factory, call with the inputs x (N, S, E) and memory (N, S', E)).
MODULES = {
    "LayerNorm": (lambda: torch.nn.LayerNorm(D_MODEL), lambda m, x, mem: m(x)),
    "RMSNorm": (lambda: torch.nn.RMSNorm(D_MODEL), lambda m, x, mem: m(x)),
    "Softmax": (lambda: torch.nn.Softmax(-1), lambda m, x, mem: m(x)),
    "MultiheadAttention": (lambda: torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True),
                           lambda m, x, mem: m(x, mem, mem)[0]),
    "TransformerEncoderLayer": (lambda: _layer(torch.nn.TransformerEncoderLayer), lambda m, x, mem: m(x)),
    "TransformerEncoder": (lambda: torch.nn.TransformerEncoder(_layer(torch.nn.TransformerEncoderLayer), 2,
                                                               enable_nested_tensor=False),
                           lambda m, x, mem: m(x)),
    "TransformerDecoderLayer": (lambda: _layer(torch.nn.TransformerDecoderLayer), lambda m, x, mem: m(x, mem)),
    "TransformerDecoder": (lambda: torch.nn.TransformerDecoder(_layer(torch.nn.TransformerDecoderLayer), 2),
                           lambda m, x, mem: m(x, mem)),
    "Transformer": (lambda: torch.nn.Transformer(D_MODEL, HEADS, 1, 1, FF, dropout=0.0, batch_first=True),
                    lambda m, x, mem: m(mem, x)),
}


def test_every_drop_in_is_covered():
    assert sorted(MODULES) == sorted(cls.__name__ for cls in DROP_INS)


def _pair(name):
    """(torch module, its fasttx.patch'ed copy with the same parameters), in eval mode."""
    theirs = randomize_parameters(MODULES[name][0](), 0.3).eval()
    ours = MODULES[name][0]().eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, fasttx.patch(ours, backend="torch")


def _inputs():
    return torch.randn(2, 5, D_MODEL), torch.randn(2, 3, D_MODEL)


@pytest.mark.parametrize("torch_cls", list(DROP_INS), ids=lambda cls: cls.__name__)
def test_forward_signature_is_torchs(torch_cls):
    """Names, kinds, defaults and types of forward's parameters, and its return type, are torch's: a
    call by keyword (RMSNorm's ``x``) or a script compiled against the annotations works alike."""
    ours, theirs = inspect.signature(DROP_INS[torch_cls].forward), inspect.signature(torch_cls.forward)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.parameters.values()]
    assert _canonical(typing.get_type_hints(DROP_INS[torch_cls].forward)) == \
        _canonical(typing.get_type_hints(torch_cls.forward))


def _canonical(hint):
    """A type hint with typing's and the builtins' spellings made one (Optional[X] and X | None,
    Tuple[...] and tuple[...]): torch releases annotate either way."""
    if isinstance(hint, dict):
        return {name: _canonical(value) for name, value in hint.items()}
    origin, args = typing.get_origin(hint), tuple(_canonical(arg) for arg in typing.get_args(hint))
    if origin is None:
        return hint
    if origin in (typing.Union, types.UnionType):
        return ("union", frozenset(args))
    return (origin, args)


# torch.nn.TransformerEncoder's own __constants__ names its norm submodule: torch warns for torch's module too.
@pytest.mark.filterwarnings("ignore:'norm' was found in ScriptModule constants")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_torch_jit_script_gives_torchs_results_and_saves(name):
    """A scripted fasttx module computes torch.nn's formulation (TorchScript cannot compile fasttx's
    Python dispatch), saves and loads as torch's does, and scripting leaves the eager model as it was."""
    theirs, ours = _pair(name)
    x, mem = _inputs()
    call = MODULES[name][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.14 deprecates TorchScript
        scripted = torch.jit.script(ours)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    expected = call(theirs, x, mem)
    torch.testing.assert_close(call(scripted, x, mem), expected)
    torch.testing.assert_close(call(loaded, x, mem), expected)
    assert [type(m) for m in ours.modules()] == [DROP_INS.get(type(m), type(m)) for m in theirs.modules()]
    torch.testing.assert_close(call(ours, x, mem), expected)


def test_torch_jit_script_says_when_an_explicit_backend_does_not_apply():
    module = fasttx.nn.LayerNorm(D_MODEL, backend="triton")
    with pytest.warns(UserWarning, match=r"LayerNorm: torch.jit.script compiles torch.nn's formulation of the "
                                         r"module, not its backend='triton' kernels"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(module)


class _Holder(torch.nn.Module):
    """A model around one module: what torch.fx.symbolic_trace usually gets."""

    def __init__(self, inner, call):
        super().__init__()
        self.proj, self.inner, self.call = torch.nn.Linear(D_MODEL, D_MODEL), inner, call

    def forward(self, x, mem):
        return self.call(self.inner, self.proj(x), mem)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_fx_traces_a_fasttx_module_as_one_node_running_fasttxs_forward(name):
    """Inside a traced model, a fasttx module is one call_module node, as torch.nn's modules are, so the
    GraphModule runs fasttx's forward (and kernels); the result is the eager model's."""
    theirs, ours = _pair(name)
    call = MODULES[name][1]
    model = _Holder(ours, call).eval()
    graph_module = torch.fx.symbolic_trace(model)
    assert "inner" in [node.target for node in graph_module.graph.nodes if node.op == "call_module"]
    assert graph_module.get_submodule("inner") is ours
    calls = []
    ours.register_forward_hook(lambda *args: calls.append(1))
    x, mem = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x, mem), call(theirs, model.proj(x), mem))
    assert calls == [1]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_fx_traces_a_fasttx_root_where_it_traces_torchs(name):
    """Traced as the root, a fasttx module is traced through torch.nn's forward, so it traces where the
    torch.nn module traces, with the same result, and fails where that fails."""
    theirs, ours = _pair(name)
    x, mem = _inputs()
    call = MODULES[name][1]
    try:
        expected = call(torch.fx.symbolic_trace(theirs), x, mem)
    except Exception as torch_error:  # noqa: BLE001 - what torch raises, compared below
        with pytest.raises(type(torch_error)):
            torch.fx.symbolic_trace(ours)
        return
    torch.testing.assert_close(call(torch.fx.symbolic_trace(ours), x, mem), expected)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_torch_export_takes_a_fasttx_module_where_it_takes_torchs(name):
    """torch.export traces fasttx's own forward (no torch.nn formulation swapped in): the exported
    program gives the eager results."""
    theirs, ours = _pair(name)
    x, mem = _inputs()
    call = MODULES[name][1]

    class Call(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, mem):
            return call(self.inner, x, mem)

    torch.export.export(Call(theirs), (x, mem))  # torch's exports (else this test has nothing to compare)
    exported = torch.export.export(Call(ours), (x, mem))
    torch.testing.assert_close(exported.module()(x, mem), call(theirs, x, mem))
