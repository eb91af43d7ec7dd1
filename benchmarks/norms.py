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
from ..testing import TOLERANCE, rel_error
from .common import bench_ms, peak_memory_mb

GPU_SHAPES = [(4096, 4096), (16384, 8192), (32768, 1024), (8192, 512), (1024, 65536)]
CPU_SHAPES = [(64, 1024), (16, 4097)]  # small: on CPU the run only exercises the path


def _case(op, rows, hidden, dtype, device):
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    weight = 1 + 0.1 * torch.randn(hidden, dtype=dtype, device=device)
    bias = 0.1 * torch.randn(hidden, dtype=dtype, device=device)
    params = (weight, bias) if op == "layer_norm" else (weight,)
    return x, params, torch.randn_like(x)


def _bytes(op, rows, hidden, dtype):
    e = p = torch.finfo(dtype).bits // 8
    n_params, n_stats = (2, 2) if op == "layer_norm" else (1, 1)
    fwd = 2 * rows * hidden * e + n_params * hidden * p + 4 * n_stats * rows
    bwd = 3 * rows * hidden * e + hidden * p + 4 * n_stats * rows + n_params * hidden * p
    return fwd, fwd + bwd


def _providers(op, device_type, dtype):
    """name -> function(x, params) computing the op, the torch baselines first."""
    hidden_shape = lambda x: (x.shape[-1],)  # noqa: E731
    if op == "layer_norm":
        eager = lambda x, p: F.layer_norm(x, hidden_shape(x), *p, eps=1e-5)  # noqa: E731
        ours = lambda b: lambda x, p: functional.layer_norm(x, hidden_shape(x), *p, eps=1e-5, backend=b)  # noqa: E731
    else:
        eager = lambda x, p: F.rms_norm(x, hidden_shape(x), *p, eps=1e-5)  # noqa: E731
        ours = lambda b: lambda x, p: functional.rms_norm(x, hidden_shape(x), *p, eps=1e-5, backend=b)  # noqa: E731
    providers = {"torch eager": eager}
    if device_type == "cuda":  # torch.compile on CPU costs minutes of C++ builds for no insight
        providers["torch.compile"] = torch.compile(eager, dynamic=False)
    for b in backends.BACKENDS:
        if backends.unavailable_reason(b, device_type, dtype) is None:
            providers[f"fasttx {b}"] = ours(b)
    return providers


def _reference(op, x, params):
    x64, p64 = x.double(), [p.double() for p in params]
    if op == "layer_norm":
        return reference.layer_norm(x64, (x.shape[-1],), *p64, eps=1e-5)
    return reference.rms_norm(x64, (x.shape[-1],), *p64, eps=1e-5)


def _max_error(op, fn, x, params, dy):
    """Largest relative error of the output and every gradient vs the float64 reference."""
    leaves = [t.detach().requires_grad_() for t in (x, *params)]
    out = fn(leaves[0], leaves[1:])
    grads = torch.autograd.grad(out, leaves, dy)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, *params)]
    out64 = _reference(op, leaves64[0], leaves64[1:])
    grads64 = torch.autograd.grad(out64, leaves64, dy.double())
    return max(rel_error(a, b) for a, b in zip((out, *grads), (out64, *grads64)))


def run(op, dtype, device_type, shapes, copy_gbs):
    rows_out = []
    for rows, hidden in shapes:
        x, params, dy = _case(op, rows, hidden, dtype, device_type)
        fwd_bytes, fwd_bwd_bytes = _bytes(op, rows, hidden, dtype)
        providers = _providers(op, device_type, dtype)
        baseline = {}
        for name, fn in providers.items():
            error = _max_error(op, fn, x, params, dy)
            leaves = [t.detach().requires_grad_() for t in (x, *params)]
            timed = {
                "fwd": (lambda: fn(x, params), fwd_bytes),
                "fwd+bwd": (lambda: fn(leaves[0], leaves[1:]).backward(dy), fwd_bwd_bytes),
            }
            for direction, (call, nbytes) in timed.items():
                ms = bench_ms(call, device_type, grad_to_none=leaves)
                baseline.setdefault(direction, ms)  # torch eager comes first
                gbs = nbytes / ms / 1e6
                rows_out.append({
                    "op": op, "rows": rows, "hidden": hidden, "dtype": str(dtype).replace("torch.", ""),
                    "provider": name, "pass": direction, "ms": ms, "GB/s": gbs,
                    "% of copy BW": 100 * gbs / copy_gbs if copy_gbs else None,
                    "speed-up vs eager": baseline[direction] / ms,
                    "peak MB": peak_memory_mb(call, device_type),
                    "max rel err": error, "correct": error <= TOLERANCE[dtype],
                })
    return rows_out
