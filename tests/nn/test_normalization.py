"""fasttx.nn.LayerNorm / RMSNorm as drop-ins for torch.nn's, and fasttx.patch."""

import pytest
import torch

import fasttx
from fasttx import backends

from . import randomize_parameters
from ..conftest import DEVICE, runnable_backends

MODULES = [(torch.nn.LayerNorm, fasttx.nn.LayerNorm), (torch.nn.RMSNorm, fasttx.nn.RMSNorm)]
CONSTRUCTIONS = [
    ((64,), {}),
    ((64,), {"elementwise_affine": False}),
    (((4, 16),), {"eps": 1e-3}),
    ((64,), {"bias": False}),
]


@pytest.mark.parametrize("args,kwargs", CONSTRUCTIONS, ids=str)
@pytest.mark.parametrize("torch_cls,fasttx_cls", MODULES, ids=["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("backend", runnable_backends(op="layer_norm"))
def test_drop_in(torch_cls, fasttx_cls, args, kwargs, backend):
    if torch_cls is torch.nn.RMSNorm and "bias" in kwargs:
        kwargs = {}  # RMSNorm has no bias argument
    theirs = torch_cls(*args, **kwargs, device=DEVICE)
    ours = fasttx_cls(*args, **kwargs, device=DEVICE, backend=backend)
    assert isinstance(ours, torch_cls)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    randomize_parameters(theirs, 1.0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 5, *theirs.normalized_shape, device=DEVICE)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert f"backend={backend}" in repr(ours)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", runnable_backends(op="rms_norm"))
def test_rms_norm_default_eps_matches_torch_in_half_precision(dtype, backend):
    """nn.RMSNorm(eps=None) on half inputs: torch adds fp32's epsilon (not the input dtype's, as its docs
    say), which activations of small scale show."""
    theirs = torch.nn.RMSNorm(64, device=DEVICE, dtype=dtype)
    ours = fasttx.nn.RMSNorm(64, device=DEVICE, dtype=dtype, backend=backend)
    randomize_parameters(theirs, 1.0)
    ours.load_state_dict(theirs.state_dict())
    x = (torch.randn(3, 5, 64, device=DEVICE) * 3e-3).to(dtype)
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(ours(x), theirs(x), rtol=tolerance, atol=tolerance)


def test_default_initialisation_matches_torch():
    for torch_cls, fasttx_cls in MODULES:
        ours, theirs = fasttx_cls(8), torch_cls(8)
        for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert torch.equal(p, q), name


def test_dtype_and_repr_reports_the_backend_that_ran():
    ln = fasttx.nn.LayerNorm(16, dtype=torch.float64)
    assert ln.weight.dtype == torch.float64
    ln(torch.randn(2, 16, dtype=torch.float64))
    assert "backend=auto (last ran: torch)" in repr(ln)
    assert backends.last_used["layer_norm"] == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        fasttx.nn.LayerNorm(16, backend="tpu")


@pytest.mark.parametrize("backend", runnable_backends(op="layer_norm"))
def test_patch_swaps_modules_keeping_parameters(backend):
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32),
                                torch.nn.Sequential(torch.nn.RMSNorm(32), torch.nn.Softmax(-1))).to(DEVICE)
    with torch.no_grad():
        model[1].weight.normal_()
    x = torch.randn(4, 32, device=DEVICE)
    expected = model(x)
    weight = model[1].weight
    model.eval()
    patched = fasttx.patch(model, backend=backend)
    assert patched is model
    assert type(model[1]) is fasttx.nn.LayerNorm and type(model[2][0]) is fasttx.nn.RMSNorm
    assert type(model[2][1]) is fasttx.nn.Softmax and model[2][1].dim == -1
    assert model[1].weight is weight and not model.training and not model[1].training
    assert model[1].backend == backend
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert type(fasttx.patch(torch.nn.LayerNorm(4))) is fasttx.nn.LayerNorm


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("torch_cls,fasttx_cls", MODULES, ids=["LayerNorm", "RMSNorm"])
def test_weight_that_is_no_registered_parameter_is_read_as_torch_reads_it(torch_cls, fasttx_cls):
    """forward reads the registered parameters without the ordinary attribute lookup
    (fasttx/nn/_backend.py, parameter); a weight that is not one is still what module.weight is:
    a parametrization's property, a plain tensor put in its place, None."""
    from torch.nn.utils import parametrize

    x = torch.randn(3, 8)
    theirs, ours = torch_cls(8), fasttx_cls(8)
    randomize_parameters(theirs, 1.0)
    ours.load_state_dict(theirs.state_dict())
    for module in (theirs, ours):
        parametrize.register_parametrization(module, "weight", _Doubled())
    torch.testing.assert_close(ours(x), theirs(x))
    assert not torch.allclose(ours(x), fasttx_cls(8)(x))  # the parametrization did change the result
    for module in (theirs, ours):
        parametrize.remove_parametrizations(module, "weight")
        del module.weight
        module.weight = torch.linspace(-1, 1, 8)  # a plain tensor attribute, no parameter
    torch.testing.assert_close(ours(x), theirs(x))
    for module in (theirs, ours):
        del module.weight
        module.register_parameter("weight", None)
    torch.testing.assert_close(ours(x), theirs(x))


class _Recorder(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("torch_cls,fasttx_cls,function", [(torch.nn.LayerNorm, fasttx.nn.LayerNorm, torch.nn.functional.layer_norm),
                                                           (torch.nn.RMSNorm, fasttx.nn.RMSNorm, torch.nn.functional.rms_norm)],
                         ids=["LayerNorm", "RMSNorm"])
def test_torch_function_overrides_see_the_functional_torchs_module_calls(torch_cls, fasttx_cls, function):
    """Where torch's module runs, fasttx's calls torch's op without F's Python around it, except where a
    __torch_function__ override is active: then it calls the F function, as torch.nn's module does."""
    x = torch.randn(3, 8)
    for module in (torch_cls(8), fasttx_cls(8)):
        with _Recorder() as recorder:
            module(x)
        assert function in recorder.seen, type(module)
