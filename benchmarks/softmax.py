"""Fused softmax(scale * x + mask) vs torch composing it, forward and forward+backward.

Baselines, measured in the same run: torch eager `torch.softmax(x * scale + mask, -1)` and
torch.compile of it. Mask kinds, label "mask": "none"; "(1, C) float", a key-padding-style float
mask of shape (1, C) broadcast over the rows (read through a 0 stride); and "causal", only where
the rows are a multiple of the columns: x is then ROWS / COLS heads of COLS x COLS attention scores,
each with `is_causal` (column j kept for row j and below, top-left aligned), which the eager
baseline writes as masked_fill with a (C, C) bool mask built once, as a model caches it.

Bytes moved, the least any implementation must move, for R rows of C columns, element size e
(input and output in the same dtype), K the elements kept (R*C; causal: R/C heads of C*(C+1)/2)
and a (1, C) mask of element size e: x and dy need reading only where kept, y and dx are written
whole (zeros where masked out by causal)
  forward:  read x, read mask, write y                  = K*e + R*C*e + C*e
  backward: read y and dy, write dx                     = 2*K*e + R*C*e
(without causal K = R*C: 2*R*C*e + C*e and 3*R*C*e). GB/s = bytes / time.

"fasttx cuda (no clusters)", on sm_90 devices and rows longer than the kernels' 16384-element chunk,
is backend cuda with its row split over a thread block cluster switched off (common.with_unsplit_rows,
FASTTX_CUDA_CLUSTERS=0): one block walks each row chunk by chunk, reading it twice, as before the split and as
on other GPUs; beside "fasttx cuda" in the same run, to measure what the split changes. The switch is
set around the provider's checking and every timed pass (common.around), backward included.
"""

import torch

from .. import functional, reference
from .common import Case, compiled, fasttx_providers, with_unsplit_rows

OPS = ("softmax",)
SHAPE = "ROWSxCOLS"
# full: no mask and the float mask at every width, causal where 4096 rows are whole heads (1024 to
# 4096 columns); and rows of < 1024 columns, which share programs: 65536 rows of 256 (causal: 256 heads).
PRESETS = {
    "quick": [(8, 256), (8, 1000), (8, 4097)],
    "full": [(4096, cols) for cols in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)]
    + [(65536, 256)],
}
PLOT = ("cols", ("rows", "mask"))  # x axis; the label keys shared by a line's points
SCALE = 0.125
FLOAT_MASK = "(1, C) float"


def _eager(x, mask=None):
    z = x * SCALE
    return torch.softmax(z if mask is None else z + mask, -1)


def _eager_causal(cols, device_type):
    above = torch.ones(cols, cols, dtype=torch.bool, device=device_type).triu(1)  # the keys masked out

    def eager(x):
        return torch.softmax((x * SCALE).masked_fill(above, float("-inf")), -1)
    return eager


def mask_kinds(rows, cols):
    """The mask kinds a ROWSxCOLS shape is benchmarked with (see the module docstring)."""
    return ("none", FLOAT_MASK) + (("causal",) if rows % cols == 0 else ())


def _bytes(rows, cols, dtype, mask_kind):
    e = torch.finfo(dtype).bits // 8
    kept = rows // cols * cols * (cols + 1) // 2 if mask_kind == "causal" else rows * cols
    fwd = kept * e + rows * cols * e + (cols * e if mask_kind == FLOAT_MASK else 0)
    return fwd, 2 * kept * e + rows * cols * e


CHUNK = 16384  # elements of a row one CUDA block holds (csrc/softmax/softmax_layout.cuh)


def _providers(op, dtype, device_type, fasttx_backends, eager, causal):
    providers = {"torch eager": eager}
    if device_type == "cuda":
        providers["torch.compile"] = compiled(eager)
    providers.update(fasttx_providers(op, device_type, dtype, fasttx_backends, lambda b: lambda x, mask=None: (
        functional.softmax(x, -1, scale=SCALE, mask=mask, is_causal=causal, backend=b))))
    return providers


def cases(op, dtype, device_type, shapes, fasttx_backends):
    providers = _providers(op, dtype, device_type, fasttx_backends, _eager, False)
    ref = lambda x, mask=None: reference.softmax(x, -1, SCALE, mask)  # noqa: E731
    causal_ref = lambda x: reference.softmax(x, -1, SCALE, is_causal=True)  # noqa: E731
    for rows, cols in shapes:
        x = torch.randn(rows, cols, dtype=dtype, device=device_type, requires_grad=True)
        mask = torch.zeros(1, cols, dtype=dtype, device=device_type)
        mask[:, torch.rand(cols, device=device_type) < 0.1] = float("-inf")  # ~10% of keys padded
        for kind in mask_kinds(rows, cols):
            label = {"rows": rows, "cols": cols, "mask": kind}
            work = _bytes(rows, cols, dtype, kind)
            if kind == "causal":  # chunks of whole heads: dim 0 of (heads, C, C)
                heads = x.detach().view(rows // cols, cols, cols).requires_grad_()
                causal_providers = _providers(op, dtype, device_type, fasttx_backends,
                                              _eager_causal(cols, device_type), True)
                yield Case(label, [heads], with_unsplit_rows(causal_providers, cols, CHUNK), causal_ref, work,
                           chunk_dim=0)
            else:
                yield Case(label, [x, mask] if kind == FLOAT_MASK else [x], with_unsplit_rows(providers, cols, CHUNK),
                           ref, work, chunk_dim=0)
