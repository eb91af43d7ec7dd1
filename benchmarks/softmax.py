"""Fused softmax(scale * x + mask) vs torch composing it, forward and forward+backward.

Baselines, measured in the same run: torch eager `torch.softmax(x * scale + mask, -1)` and
torch.compile of it. The mask is a key-padding-style float mask of shape (1, C) broadcast over
the rows (read through a 0 stride), or none.

Bytes moved, the least any implementation must move, for R rows of C columns, element size e
(input and output in the same dtype) and a (1, C) mask of element size e:
  forward:  read x, read mask, write y                  = 2*R*C*e + C*e
  backward: read y and dy, write dx                     = 3*R*C*e
GB/s = bytes / time.
"""

import torch

from .. import functional, reference
from .common import Case, compiled, fasttx_providers

OPS = ("softmax",)
SHAPE = "ROWSxCOLS"
PRESETS = {
    "quick": [(8, 256), (8, 1000), (8, 4097)],
    "full": [(4096, cols) for cols in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)],
}
PLOT = ("cols", ("rows", "mask"))  # x axis; the label keys shared by a line's points
SCALE = 0.125


def _eager(x, mask=None):
    z = x * SCALE
    return torch.softmax(z if mask is None else z + mask, -1)


def _bytes(rows, cols, dtype, with_mask):
    e = torch.finfo(dtype).bits // 8
    fwd = 2 * rows * cols * e + (cols * e if with_mask else 0)
    return fwd, 3 * rows * cols * e


def cases(op, dtype, device_type, shapes, fasttx_backends):
    providers = {"torch eager": _eager}
    if device_type == "cuda":
        providers["torch.compile"] = compiled(_eager)
    providers.update(fasttx_providers(op, device_type, dtype, fasttx_backends, lambda b: lambda x, mask=None: (
        functional.softmax(x, -1, scale=SCALE, mask=mask, backend=b))))
    ref = lambda x, mask=None: reference.softmax(x, -1, SCALE, mask)  # noqa: E731
    for rows, cols in shapes:
        x = torch.randn(rows, cols, dtype=dtype, device=device_type, requires_grad=True)
        mask = torch.zeros(1, cols, dtype=dtype, device=device_type)
        mask[:, torch.rand(cols, device=device_type) < 0.1] = float("-inf")  # ~10% of keys padded
        for with_mask in (False, True):
            inputs = [x, mask] if with_mask else [x]
            label = {"rows": rows, "cols": cols, "mask": "(1, C) float" if with_mask else "none"}
            yield Case(label, inputs, providers, ref, _bytes(rows, cols, dtype, with_mask), chunk_dim=0)
