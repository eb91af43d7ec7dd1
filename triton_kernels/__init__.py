"""Triton kernels for fasttx (installed as ``fasttx.triton_kernels``)."""
