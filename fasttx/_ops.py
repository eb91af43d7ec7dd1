"""torch.library ops, registered from the declarations in fasttx._declarations.

Every kernel entry point is an op in the ``fasttx`` namespace, one per op and backend:
``fasttx::<op>_{fwd,bwd}_triton`` are defined here with the declared schemas (their
implementations import Triton lazily, so importing fasttx never imports triton),
``fasttx::<op>_{fwd,bwd}_cuda`` are defined in C++ (csrc/bindings.cpp, schemas checked against the
declarations by tests/test_cuda_extension.py) and get their fake and autograd registered here once
the extension loads. Each op's fake and backward formula is declared once and registered for every
backend. Tensor layouts and conventions: fasttx._declarations.

The autograd kernels are fasttx's own (_autograd_kernel), not torch.library.register_autograd's:
on every forward that one rebuilds the schema's argument list once per argument to fill in the
defaults (torch's ``fill_defaults``: ~17 us a call for attention's 9 arguments, on a CPU where
torch's whole SDPA call takes ~11 us). Both do the same thing otherwise: below autograd, the
forward op; then the declaration's setup_context and backward formula. The Triton ops are defined
with ``Library.define`` and their implementations registered directly, since torch.library.custom_op
registers an autograd kernel of its own.

Under torch.func's transforms (grad, vjp, jacrev, vmap) that autograd.Function cannot run inside the op
(torch.func sends it to an operator with no kernel at the Autograd key), so op() hands out the op
wrapped in a twin of it written as torch.func takes it (AroundFunction), and the backward formulas
call their ops the same way (_call).
"""

import functools

import torch

from ._declarations import DECLARATIONS

# The Python half of the fasttx namespace: the Triton ops, and the fakes and autograd of every op.
_LIBRARY = torch.library.Library("fasttx", "FRAGMENT")
_BELOW_AUTOGRAD = torch._C._after_autograd_keyset


def _run_below_autograd(overload, keyset, args):
    with torch._C._AutoDispatchBelowAutograd():
        return overload.redispatch(keyset & _BELOW_AUTOGRAD, *args)


# OpOverload -> the op inside the autograd.Function of its Autograd kernel, applied around it (op()).
_APPLIED_AROUND = {}


def _autograd_kernel(overload, backward, setup_context=None):
    """The Autograd-key kernel of the op ``overload``: with grad enabled and an input requiring grad,
    the op inside an autograd.Function driven by ``setup_context`` (a forward op's declaration's) and
    ``backward``; else the op alone."""
    # The dispatcher drops trailing arguments equal to their schema defaults; setup_context and the
    # backward formula see all of them.
    defaults = tuple(argument.default_value for argument in overload._schema.arguments)

    def save(ctx, args, output):
        if setup_context is not None:
            setup_context(ctx, (*args, *defaults[len(args):]), output)
        ctx.arguments_given = len(args)

    class Function(torch.autograd.Function):
        # apply(*args, keyset): the keyset last, so that ctx.needs_input_grad[i] is argument i's. Written
        # as forward(ctx, ...): a Function with a setup_context has its apply bind every call's arguments
        # to forward's signature (inspect.signature), 20 us a call against 6 (timeit, torch 2.14, CPU).
        @staticmethod
        def forward(ctx, *args_and_keyset):
            *args, keyset = args_and_keyset
            output = _run_below_autograd(overload, keyset, args)
            save(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return (*backward(ctx, *grads)[:ctx.arguments_given], None)

        @staticmethod
        def jvp(ctx, *tangents):
            # Without it torch's error names no op; with no forward-mode formula, this says whose and what to do.
            raise RuntimeError(f"fasttx::{overload._opname}: forward-mode AD (torch.func.jvp, jacfwd, hessian, "
                               f"torch.autograd.forward_ad) is not supported by fasttx's kernels; backend='torch' "
                               f"runs torch's own ops, which support it")

    class AroundFunction(Function):
        # The same, applied around the op (apply(*args, None)) under torch.func's transforms, which take
        # only a Function with forward and setup_context apart, and need a vmap rule (generated).
        generate_vmap_rule = True

        @staticmethod
        def forward(*args_and_none):
            return overload(*args_and_none[:-1])

        @staticmethod
        def setup_context(ctx, inputs, output):
            save(ctx, inputs[:-1], output)

    Function.__name__ = f"{overload._opname}_backward"
    AroundFunction.__name__ = f"{overload._opname}_backward_around"
    _APPLIED_AROUND[overload] = lambda *args: AroundFunction.apply(*args, None)

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Function.apply(*args, keyset)
        return _run_below_autograd(overload, keyset, args)

    return kernel


def _no_double_backward(bwd_op):
    """The backward formula of a backward op: differentiating through it (a double backward) raises,
    where torch's autograd fallback for an op without an Autograd kernel would only warn."""

    def backward(ctx, *grads):
        raise RuntimeError(f"fasttx::{bwd_op._opname}: double backward (differentiating a fasttx op's "
                           f"gradient, e.g. autograd.grad with create_graph=True) is not supported")

    return backward


def _register(name, backend):
    declaration = DECLARATIONS[name]
    fwd_op, bwd_op = _overload(name, "fwd", backend), _overload(name, "bwd", backend)
    torch.library.register_fake(f"fasttx::{name}_fwd_{backend}", declaration.fwd_fake, lib=_LIBRARY)
    torch.library.register_fake(f"fasttx::{name}_bwd_{backend}", declaration.bwd_fake, lib=_LIBRARY)
    backward = declaration.backward(functools.partial(_call, bwd_op))
    _LIBRARY.impl(f"{name}_fwd_{backend}", _autograd_kernel(fwd_op, backward, declaration.setup_context), "Autograd",
                  with_keyset=True)
    _LIBRARY.impl(f"{name}_bwd_{backend}", _autograd_kernel(bwd_op, _no_double_backward(bwd_op)), "Autograd",
                  with_keyset=True)


# (name, direction, backend) -> OpOverload, filled as each is first asked for: a lookup in torch.ops per call
# costs ~0.3 us of host time.
_OVERLOADS = {}


def _overload(name, direction, backend):
    """The OpOverload ``fasttx::{name}_{direction}_{backend}``."""
    key = (name, direction, backend)
    overload = _OVERLOADS.get(key)
    if overload is None:
        overload = _OVERLOADS[key] = getattr(torch.ops.fasttx, f"{name}_{direction}_{backend}").default
    return overload


def op(name, direction, backend):
    """The op ``fasttx::{name}_{direction}_{backend}``, or what to call in its place (_callable)."""
    return _callable(_overload(name, direction, backend))


def _callable(overload):
    """``overload``; under a torch.func transform (grad, vjp, jacrev, vmap), the op inside its
    autograd.Function applied around it. torch.func hands an autograd.Function to its
    custom_function_call operator, which has no kernel at the Autograd key where the op's own Autograd
    kernel applies it (nor has torch.library.register_autograd's). (torch.compile reads the check as a
    constant.)"""
    return _APPLIED_AROUND[overload] if torch._C._are_functorch_transforms_active() else overload


def _call(overload, *args):
    """_callable(overload)(*args), for the backward formulas: torch.func's grad differentiates with
    create_graph=True, so they run under the transform too."""
    return _callable(overload)(*args)


def _define_triton_ops():
    for name, declaration in DECLARATIONS.items():
        if "triton" in declaration.backends:
            for direction, schema, impl in (("fwd", declaration.fwd_schema, declaration.triton_fwd),
                                            ("bwd", declaration.bwd_schema, declaration.triton_bwd)):
                _LIBRARY.define(f"{name}_{direction}_triton{schema}")
                # One implementation for every device: CUDA tensors, and CPU ones under TRITON_INTERPRET=1.
                _LIBRARY.impl(f"{name}_{direction}_triton", impl, "CompositeExplicitAutograd")
            _register(name, "triton")


_define_triton_ops()


def has_op(name, backend):
    return hasattr(torch.ops.fasttx, f"{name}_fwd_{backend}")


def register_cuda_ops():
    """Fake and autograd for the C++ ops; called by fasttx._extension once fasttx._C is loaded."""
    for name, declaration in DECLARATIONS.items():
        if "cuda" in declaration.backends and has_op(name, "cuda"):
            _register(name, "cuda")
