"""The one place where fasttx depends on which torch / Triton release it runs with (README,
"Supported versions"): each adaptation names the releases that need it, and tests/test_compat.py
runs both of its branches on any release."""

import re


def _release(version):
    """(major, minor) of a version string such as "3.6.0" or "2.11.0+cu130"."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def interpreter_needs_index_fix(triton_version):
    """Triton before 3.7 converts a scalar of its interpreter (a 1-element numpy array) to an int
    with int(array), which numpy >= 2.4 refuses (triton-lang/triton#9171): a kernel's
    ``range(lo, hi)`` over computed bounds then fails under TRITON_INTERPRET=1."""
    return _release(triton_version) < (3, 7)


def fix_interpreter_index(interpreter):
    """Make the interpreter's scalars convert as Triton 3.7 does (squeezed first). It re-registers
    ``__index__`` on tl.tensor at every launch, in ``_patch_lang_tensor``; we wrap that function of
    the released, unchanging modules that need it."""
    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_with_squeezing_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_tensor_with_squeezing_index


def adapt_triton():
    """Called once, when fasttx.triton_kernels is first imported."""
    import triton

    if interpreter_needs_index_fix(triton.__version__):
        from triton.runtime import interpreter

        fix_interpreter_index(interpreter)
