"""LayerNorm and RMSNorm: fasttx backends vs torch eager and torch.compile of F.layer_norm /
F.rms_norm, and Liger-Kernel's and apex's fused norms when they are installed.

Bytes moved, the least any implementation must move (each tensor read or written once), for
rows M, hidden N, activation element size e, parameter element size p, P parameter vectors
(LayerNorm with bias: 2, RMSNorm: 1) and S fp32 statistics per row (LayerNorm 2, RMSNorm 1):
  forward:  read x, write y, read params, write stats = 2*M*N*e + P*N*p + 4*S*M
  backward: read x and dy, write dx, read weight and stats, write parameter grads
            = 3*M*N*e + N*p + 4*S*M + P*N*p
GB/s = bytes / time.

"fasttx cuda (no clusters)", on sm_90 devices and hidden sizes past the CUDA kernels' 8192-element
chunk, is backend cuda with the rows' split over a thread block cluster switched off, forward and
backward (common.with_unsplit_rows): what the split changes, measured beside "fasttx cuda" in the same
run.
"""

import inspect

import torch
import torch.nn.functional as F

from .. import functional, reference
from .common import Case, External, compiled, external_providers, fasttx_providers, with_unsplit_rows

CHUNK = 8192  # elements of a row one CUDA forward or backward block holds (csrc/layer_norm/layer_norm_layout.cuh)

OPS = ("layer_norm", "rms_norm")
SHAPE = "ROWSxHIDDEN"
PRESETS = {
    # few rows: the Triton interpreter (CPU) costs about 2 ms per row; on CPU the run only exercises the path
    "quick": [(8, 256), (8, 1000), (8, 4097)],
    "full": [(16384, hidden) for hidden in (512, 1024, 2048, 4096, 5120, 8192, 16384, 32768, 65536)],
}
PLOT = ("hidden", ("rows",))  # x axis; the label keys shared by a line's points
EPS = 1e-5


def _bytes(op, rows, hidden, dtype):
    e = p = torch.finfo(dtype).bits // 8
    n_params, n_stats = (2, 2) if op == "layer_norm" else (1, 1)
    fwd = 2 * rows * hidden * e + n_params * hidden * p + 4 * n_stats * rows
    bwd = 3 * rows * hidden * e + hidden * p + 4 * n_stats * rows + n_params * hidden * p
    return fwd, bwd


def _liger_rms_norm(f):
    # Newer Liger writes dx into dy unless in_place=False; older versions have no such argument.
    extra = {"in_place": False} if "in_place" in inspect.signature(f).parameters else {}
    return lambda x, w: f(x, w, EPS, **extra)


EXTERNALS = {
    "layer_norm": [
        External("liger", "liger_kernel.transformers.functional", "liger_layer_norm",
                 lambda f: lambda x, w, b: f(x, w, b, EPS)),
        External("apex", "apex.normalization.fused_layer_norm", "fused_layer_norm_affine",
                 lambda f: lambda x, w, b: f(x, w, b, x.shape[-1:], EPS)),
    ],
    "rms_norm": [
        External("liger", "liger_kernel.transformers.functional", "liger_rms_norm", _liger_rms_norm),
        External("apex", "apex.normalization.fused_layer_norm", "fused_rms_norm_affine",
                 lambda f: lambda x, w: f(x, w, x.shape[-1:], EPS)),
    ],
}


def cases(op, dtype, device_type, shapes, fasttx_backends):
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
        providers["torch.compile"] = compiled(eager)
    providers.update(external_providers(EXTERNALS[op], device_type, dtype))
    providers.update(fasttx_providers(op, device_type, dtype, fasttx_backends, ours))
    for rows, hidden in shapes:
        x = torch.randn(rows, hidden, dtype=dtype, device=device_type, requires_grad=True)
        weight = (1 + 0.1 * torch.randn(hidden, device=device_type)).to(dtype).requires_grad_()
        bias = (0.1 * torch.randn(hidden, device=device_type)).to(dtype).requires_grad_()
        inputs = [x, weight, bias] if op == "layer_norm" else [x, weight]
        yield Case({"rows": rows, "hidden": hidden}, inputs, with_unsplit_rows(providers, hidden, CHUNK), ref,
                   _bytes(op, rows, hidden, dtype), chunk_dim=0)
