"""torch.library custom ops, registered from the declarations in fasttx._declarations.

Every kernel entry point is an op in the ``fasttx`` namespace, one per op and backend:
``fasttx::<op>_{fwd,bwd}_triton`` are defined here with the declared schemas (their
implementations import Triton lazily, so importing fasttx never imports triton),
``fasttx::<op>_{fwd,bwd}_cuda`` are defined in C++ (csrc/bindings.cpp, schemas checked against the
declarations by tests/test_cuda_extension.py) and get their fake and autograd registered here once
the extension loads. Each op's fake and backward formula is declared once and registered for every
backend. Tensor layouts and conventions: fasttx._declarations.
"""

import torch

from ._declarations import DECLARATIONS


def _register(name, backend):
    declaration = DECLARATIONS[name]
    fwd_name, bwd_name = f"fasttx::{name}_fwd_{backend}", f"fasttx::{name}_bwd_{backend}"
    torch.library.register_fake(fwd_name)(declaration.fwd_fake)
    torch.library.register_fake(bwd_name)(declaration.bwd_fake)
    torch.library.register_autograd(fwd_name, declaration.backward(op(name, "bwd", backend)),
                                    setup_context=declaration.setup_context)


def op(name, direction, backend):
    """The OpOverload ``fasttx::{name}_{direction}_{backend}``."""
    return getattr(torch.ops.fasttx, f"{name}_{direction}_{backend}").default


def _define_triton_ops():
    for name, declaration in DECLARATIONS.items():
        if "triton" in declaration.backends:
            for direction, schema, impl in (("fwd", declaration.fwd_schema, declaration.triton_fwd),
                                            ("bwd", declaration.bwd_schema, declaration.triton_bwd)):
                torch.library.custom_op(f"fasttx::{name}_{direction}_triton", impl, mutates_args=(), schema=schema)
            _register(name, "triton")


_define_triton_ops()


def has_op(name, backend):
    return hasattr(torch.ops.fasttx, f"{name}_fwd_{backend}")


def register_cuda_ops():
    """Fake and autograd for the C++ ops; called by fasttx._extension once fasttx._C is loaded."""
    for name, declaration in DECLARATIONS.items():
        if "cuda" in declaration.backends and has_op(name, "cuda"):
            _register(name, "cuda")
