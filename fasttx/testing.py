"""How fasttx measures accuracy: one error metric and one per-dtype tolerance table, used by the
test suite and by the benchmark's correctness check.

The error is ||out - ref|| / max(||ref||, scale) against a float64 reference. ``scale`` is the
size of the terms a result is a difference of, where that can be much larger than the result:
a normalization's input gradient over one column is a difference of nearly equal terms, and no
finite-precision kernel gets its few surviving bits right, so it is judged against the terms.
"""

import torch

# Largest accepted error, by the dtype of the kernel's inputs and outputs. fp32 math lands far
# below 1e-5 on these ops; a half-precision result is off by its rounding (2^-11 relative for
# fp16, 2^-8 for bf16) times a small factor.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_error(out, ref, scale=0.0):
    """||out - ref|| / max(||ref||, scale) in float64 (0 for empty tensors); NaN never passes."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("nan")
    if ref.numel() == 0:
        return 0.0
    return ((out - ref).norm() / max(ref.norm().item(), scale, 1e-30)).item()


def assert_close(out, ref, dtype, what="", scale=0.0):
    """Assert equal shapes and rel_error(out, ref, scale) <= TOLERANCE[dtype]."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_error(out, ref, scale)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g} ({dtype})"
