"""LayerNorm and RMSNorm: fasttx backends vs torch.nn.functional, forward and forward+backward.

Bytes moved, the least any implementation must move (each tensor read or written once), for
rows M, hidden N, activation element size e, parameter element size p, P parameter vectors
(LayerNorm with bias: 2, RMSNorm: 1) and S fp32 statistics per row (LayerNorm 2, RMSNorm 1):
  forward:  read x, write y, read params, write stats = 2*M*N*e + P*N*p + 4*S*M
  backward: read x and dy, write dx, read weight and stats, write parameter grads
            = 3*M*N*e + N*p + 4*S*M + P*N*p
GB/s = bytes / time; speed-up = torch eager time / time, measured in the same run.
"""

import torch
import torch.nn.functional as F

from .. import backends, functional, reference
from .common import Case

OPS = ("layer_norm", "rms_norm")
GPU_SHAPES = [(4096, 4096), (16384, 8192), (32768, 1024), (8192, 512), (1024, 65536)]
CPU_SHAPES = [(64, 1024), (16, 4097)]  # small: on CPU the run only exercises the path
EPS = 1e-5


def _bytes(op, rows, hidden, dtype):
    e = p = torch.finfo(dtype).bits // 8
    n_params, n_stats = (2, 2) if op == "layer_norm" else (1, 1)
    fwd = 2 * rows * hidden * e + n_params * hidden * p + 4 * n_stats * rows
    bwd = 3 * rows * hidden * e + hidden * p + 4 * n_stats * rows + n_params * hidden * p
    return fwd, fwd + bwd


def cases(op, dtype, device_type, shapes):
    if op == "layer_norm":
        eager = lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, EPS)  # noqa: E731
        ours = lambda be: lambda x, w, b: functional.layer_norm(x, x.shape[-1:], w, b, EPS, backend=be)  # noqa: E731
        ref = lambda x, w, b: reference.layer_norm(x, x.shape[-1:], w, b, EPS)  # noqa: E731
    else:
        eager = lambda x, w: F.rms_norm(x, x.shape[-1:], w, EPS)  # noqa: E731
        ours = lambda be: lambda x, w: functional.rms_norm(x, x.shape[-1:], w, EPS, backend=be)  # noqa: E731
        ref = lambda x, w: reference.rms_norm(x, x.shape[-1:], w, EPS)  # noqa: E731
    providers = {"torch eager": eager}
    if device_type == "cuda":  # torch.compile on CPU costs minutes of C++ builds for no insight
        providers["torch.compile"] = torch.compile(eager, dynamic=False)
    for b in backends.BACKENDS:
        if backends.unavailable_reason(b, device_type, dtype, op) is None:
            providers[f"fasttx {b}"] = ours(b)
    for rows, hidden in shapes:
        x = torch.randn(rows, hidden, dtype=dtype, device=device_type, requires_grad=True)
        weight = (1 + 0.1 * torch.randn(hidden, device=device_type)).to(dtype).requires_grad_()
        bias = (0.1 * torch.randn(hidden, device=device_type)).to(dtype).requires_grad_()
        inputs = [x, weight, bias] if op == "layer_norm" else [x, weight]
        yield Case({"rows": rows, "cols": hidden}, inputs, providers, ref, _bytes(op, rows, hidden, dtype))
