"""The supported versions (README, "Supported versions"): the torch running the suite is one
pyproject.toml declares; the per-call path (backend resolution) traces under
torch.compile(fullgraph=True) (torch 2.11's dynamo refuses the import system there, for one); each
adaptation of fasttx._compat on both of its branches, whichever release runs the suite."""

import os
import tomllib

import pytest
import torch
import triton
import triton.language as tl
from packaging.requirements import Requirement

import fasttx.triton_kernels  # noqa: F401  (its import adapts this Triton)
from fasttx import _compat, backends

from .conftest import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared(table, key):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    (torch_requirement,) = [Requirement(r) for r in pyproject[table][key] if Requirement(r).name == "torch"]
    return torch_requirement.specifier


@pytest.mark.parametrize("table,key", [("project", "dependencies"), ("build-system", "requires")])
def test_this_torch_is_in_the_declared_range(table, key):
    """Run on a torch outside the range, this fails: widen the range only with a passing run."""
    version = torch.__version__.split("+")[0]
    assert version in _declared(table, key), f"torch {version} is outside {table}.{key}'s {_declared(table, key)}"


def _resolve_all(x):
    chosen = [backends.resolve(op, backend, x) for op in ("layer_norm", "attention") for backend in ("auto", "torch")]
    reasons = [backends.unavailable_reason(b, device, torch.float16, "attention")
               for b in backends.BACKENDS for device in ("cpu", "cuda")]
    return x + sum(len(name) for name in chosen) + sum(len(r) for r in reasons if r is not None)


def test_backend_resolution_compiles_fullgraph():
    """Every branch of unavailable_reason as the ops call it inside a compiled model, the CUDA one
    included (on CPU machines too: it reads the extension's state, resolved on the eager call)."""
    x = torch.randn(3)
    expected = _resolve_all(x)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(_resolve_all, fullgraph=True, backend="eager")(x), expected)


@pytest.mark.parametrize("version,needed", [("3.5.1", True), ("3.6.0", True), ("3.7.0", False), ("3.8.0", False)])
def test_interpreter_index_fix_is_for_triton_before_3_7(version, needed):
    assert _compat.interpreter_needs_index_fix(version) == needed


@triton.jit
def _sum_block_starts(Out, lo_arg, hi_arg, BLOCK: tl.constexpr):
    # Loop bounds computed from scalar arguments: interpreter tensors that range() converts with
    # __index__, as the attention kernels' key-block loops do.
    lo = lo_arg // BLOCK * BLOCK
    hi = tl.minimum(hi_arg, 1000)
    total = 0
    for start in range(lo, hi, BLOCK):
        total += start
    tl.store(Out, total)


def _check_sum_block_starts():
    out = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _sum_block_starts[(1,)](out, 13, 70, BLOCK=8)
    assert out.item() == sum(range(8, 70, 8))


def test_kernel_loops_over_computed_bounds():
    """On this release, as fasttx.triton_kernels left it (fixed or not, per the release)."""
    _check_sum_block_starts()


def test_kernel_loops_over_computed_bounds_with_the_index_fix(monkeypatch):
    """The fix itself, applied whether or not this release needs it (undone afterwards)."""
    from triton.runtime import interpreter

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", interpreter._patch_lang_tensor)
    _compat.fix_interpreter_index(interpreter)
    _check_sum_block_starts()
