"""The custom ops under torch.library.opcheck, torch.compile(fullgraph=True) and autocast, each op
from its declaration (fasttx/_declarations.py): a new op is covered with no list to edit here."""

import functools

import pytest
import torch

import fasttx
from fasttx import _ops
from fasttx._declarations import DECLARATIONS
from fasttx.testing import assert_close

from .conftest import DEVICE, OpRecorder, runnable_backends

# (op, backend) for every declared op (fasttx/_declarations.py) and every kernel backend that runs it here.
KERNEL_CASES = [(name, b) for name, d in DECLARATIONS.items() for b in runnable_backends(op=name) if b in d.backends]


def test_every_registered_op_is_declared():
    """Every torch.ops.fasttx op belongs to a declaration and one of its backends, so the tests
    parametrized by DECLARATIONS (these, tests/test_cuda_extension.py, tests/test_distributed.py)
    cover it: an op registered without a declaration, here or in csrc/bindings.cpp, fails here."""
    registered = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fasttx::"))
    assert registered
    declared = {f"{name}_{direction}_{backend}" for name, d in DECLARATIONS.items()
                for direction in ("fwd", "bwd") for backend in d.backends}
    assert [op for op in registered if op not in declared] == []


@pytest.mark.parametrize("name", DECLARATIONS)
def test_declaration_names_its_public_wrapper(name):
    assert getattr(fasttx, DECLARATIONS[name].functional) is getattr(fasttx.functional, DECLARATIONS[name].functional)


def _example(name, backend, dtype=None):
    """The declared example model of ``name`` with ``backend``, and its input (requires grad)."""
    example = DECLARATIONS[name].example
    dtype = dtype or example.dtype(backend)
    model = example.model(backend).to(DEVICE, dtype)
    return model, torch.randn(example.input_shape, device=DEVICE, dtype=dtype, requires_grad=True)


def _grads(model, x, out, dy):
    """Gradients of (out * dy).sum() for x and the parameters: a random dy, since the gradients of
    out.sum() through a norm are a cancellation to about 0."""
    return torch.autograd.grad(out, (x, *model.parameters()), dy)


@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_example_runs_the_declared_ops(name, backend):
    """The example model the compile, autocast and DDP tests run reaches the op's forward and
    backward kernels: those tests cover the op, not a fallback."""
    model, x = _example(name, backend)
    with OpRecorder() as recorder:
        model(x).sum().backward()
    assert {f"fasttx::{name}_fwd_{backend}", f"fasttx::{name}_bwd_{backend}"} <= recorder.ops


@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_opcheck(name, backend):
    declaration = DECLARATIONS[name]
    fwd, bwd = _ops.op(name, "fwd", backend), _ops.op(name, "bwd", backend)
    for requires_grad in (False, True):
        for args in declaration.samples(requires_grad, backend, DEVICE):
            torch.library.opcheck(fwd, args)
    for args in declaration.samples(False, backend, DEVICE):
        torch.library.opcheck(bwd, declaration.bwd_sample(args, fwd(*args)))


@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_double_backward_raises(name, backend):
    """A gradient of a gradient through an op raises a clear error (the backward ops have no
    derivative), never a silent None or 0 from torch's fallback for ops without an autograd kernel."""
    model, x = _example(name, backend)
    out = model(x)
    (dx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(RuntimeError, match=f"fasttx::{name}_bwd_{backend}: double backward"):
        dx.sum().backward()


@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_forward_mode_ad_raises_naming_the_op(name, backend):
    """Forward-mode AD has no formula in the kernels: a RuntimeError names the op and the way out,
    where torch's own error named no op."""
    model, x = _example(name, backend)
    x = x.detach()
    with pytest.raises(RuntimeError, match=f"fasttx::{name}_fwd_{backend}: forward-mode AD .* backend='torch'"):
        torch.func.jvp(model, (x,), (torch.randn_like(x),))


# vmap runs the kernels once per sample, and torch says so for each op (no batching rule is registered).
@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_torch_func_grad_jacrev_and_per_sample_gradients(name, backend):
    """torch.func's transforms through the op's kernels (fasttx._ops.op: the op's autograd.Function
    applied around it there): grad and vjp give autograd's gradients, jacrev the same rows, and
    vmap(grad) the per-sample gradients a loop computes (the Opacus pattern). grad is recorded reaching
    the op's forward and backward kernels, not another backend."""
    model, x = _example(name, backend)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = x.detach()
    dy = torch.randn_like(model(x))

    def loss(p, inputs, weights):
        return (torch.func.functional_call(model, p, (inputs,)) * weights).sum()

    expected = _grads(model, x.requires_grad_(), model(x), dy)
    x = x.detach()
    with OpRecorder() as recorder:
        grads = torch.func.grad(loss, argnums=(0, 1))(params, x, dy)
    assert {f"fasttx::{name}_fwd_{backend}", f"fasttx::{name}_bwd_{backend}"} <= recorder.ops
    for got, want in zip((grads[1], *grads[0].values()), expected):
        assert_close(got, want, x.dtype, "torch.func.grad")

    out, vjp = torch.func.vjp(lambda inputs: torch.func.functional_call(model, params, (inputs,)), x)
    assert_close(vjp(dy)[0], expected[0], x.dtype, "torch.func.vjp")
    other = torch.randn_like(dy)  # jacrev's two rows: the gradients of two weighted sums
    rows = torch.func.jacrev(lambda inputs: torch.stack([loss(params, inputs, w) for w in (dy, other)]))(x)
    assert_close(rows[0], expected[0], x.dtype, "torch.func.jacrev")
    assert_close(rows[1], vjp(other)[0], x.dtype, "torch.func.jacrev")

    per_sample = torch.func.vmap(torch.func.grad(lambda p, xi, dyi: loss(p, xi[None], dyi[None])),
                                 in_dims=(None, 0, 0))(params, x, dy)
    for i in range(len(x)):
        one = torch.autograd.grad(loss(dict(model.named_parameters()), x[i:i + 1], dy[i:i + 1]),
                                  list(model.parameters()))
        for key, want in zip(params, one):
            assert_close(per_sample[key][i], want, x.dtype, f"per-sample gradient of {key}, sample {i}")


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_compile_fullgraph(name, backend, compiler):
    torch._dynamo.reset()
    model, x = _example(name, backend)
    expected = model(x)
    dy = torch.randn_like(expected)
    expected_grads = _grads(model, x, expected, dy)
    out = torch.compile(model, fullgraph=True, backend=compiler)(x)
    assert_close(out, expected, x.dtype, "compiled output")
    for got, want in zip(_grads(model, x, out, dy), expected_grads):
        assert_close(got, want, x.dtype, "compiled gradient")


@pytest.mark.parametrize("name,backend", KERNEL_CASES)
def test_autocast_as_the_torch_backend(name, backend):
    """Each op's example model under autocast gives what it gives with the torch backend (each
    op's own policy, tested below and in its tests): output and gradients of the same dtypes and
    values. float16 on CPU too: the Triton interpreter's bf16 dots are wrong (see
    tests/ops/test_attention.py)."""
    device_type, low = ("cuda" if DEVICE == "cuda" else "cpu"), torch.float16
    results, dy = [], None
    for b in (backend, "torch"):
        torch.manual_seed(0)
        model, x = _example(name, b, dtype=torch.float32)
        with torch.autocast(device_type, dtype=low):
            out = model(x)
        dy = torch.randn_like(out) if dy is None else dy
        results.append((out, _grads(model, x, out, dy)))
    (out, grads), (expected, expected_grads) = results
    assert out.dtype == expected.dtype
    assert_close(out, expected, low, "autocast output")
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype
        assert_close(got, want, low, "autocast gradient")


@pytest.mark.parametrize("backend", runnable_backends(op="layer_norm"))
def test_autocast(backend):
    """Under autocast the Linear runs in the low dtype; the norm keeps its input's dtype (fp32
    statistics inside) instead of upcasting as torch does, and reads the fp32 parameters."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    low = torch.float16 if device_type == "cuda" else torch.bfloat16

    def make(backend):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(48, 48), fasttx.nn.LayerNorm(48, backend=backend),
            torch.nn.Linear(48, 48), fasttx.nn.RMSNorm(48, backend=backend),
        ).to(DEVICE)

    model = make(backend)
    x = torch.randn(4, 48, device=DEVICE)
    with torch.autocast(device_type, dtype=low):
        out = model(x)
    assert out.dtype == low
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    reference = make("torch")
    with torch.autocast(device_type, dtype=low):
        assert_close(out, reference(x), low, "autocast output")


@pytest.mark.parametrize("mask", [None, "float"])
@pytest.mark.parametrize("backend", runnable_backends(op="attention"))
def test_attention_under_autocast_casts_as_torch_does(backend, mask):
    """torch's autocast runs its SDPA in the low dtype (it is on the lower-precision list), casting
    every floating argument: fp32 queries and keys (as transformers' rotary embeddings make them)
    beside values already in the low dtype, which outside autocast is a dtype error. fasttx's
    attention casts the same: output in the low dtype, each gradient in its argument's dtype.
    float16 on CPU too: the Triton interpreter's bf16 dots are wrong (see tests/ops/test_attention.py)."""
    device_type, low = ("cuda" if DEVICE == "cuda" else "cpu"), torch.float16
    q = torch.randn(2, 4, 9, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 4, 11, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(2, 4, 11, 32, device=DEVICE, dtype=low, requires_grad=True)
    attn_mask = None if mask is None else torch.randn(9, 11, device=DEVICE)
    with pytest.raises(TypeError, match="value must have query's dtype"):
        fasttx.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, backend=backend)
    dy = torch.randn(2, 4, 9, 32, device=DEVICE, dtype=low)
    results = []
    for attention in (functools.partial(fasttx.scaled_dot_product_attention, backend=backend),
                      torch.nn.functional.scaled_dot_product_attention):
        with torch.autocast(device_type, dtype=low):
            out = attention(q, k, v, attn_mask=attn_mask)
        results.append((out, torch.autograd.grad(out, (q, k, v), dy)))
    (out, grads), (expected, expected_grads) = results
    assert out.dtype == expected.dtype == low
    assert_close(out, expected, low, "autocast output")
    for got, want, leaf in zip(grads, expected_grads, (q, k, v)):
        assert got.dtype == want.dtype == leaf.dtype
        assert_close(got, want, low, "autocast gradient")
