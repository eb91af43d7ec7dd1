"""Triton kernels for fasttx (installed as ``fasttx.triton_kernels``)."""

from .. import _compat

_compat.adapt_triton()
