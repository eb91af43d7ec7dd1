"""Timing and reporting shared by the per-op benchmarks.

GPU times come from triton.testing.do_bench (CUDA events, median of repeats after warm-up);
CPU times from torch.utils.benchmark (median of blocked repeats), good only to exercise the path.
"""

import csv
import dataclasses
import json
import os

import torch

from .. import info
from ..testing import TOLERANCE, rel_error


def bench_ms(fn, device_type, grad_to_none=None):
    """Median milliseconds of ``fn()``."""
    if device_type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    from torch.utils.benchmark import Timer

    def call():
        for t in grad_to_none or ():
            t.grad = None
        fn()

    call()  # warm-up: first-call costs (Triton interpreter setup, allocator) stay out
    return Timer("call()", globals={"call": call}).blocked_autorange(min_run_time=0.1).median * 1e3


def measured_peaks(device_type):
    """The device's ceilings, measured once per run on GPU (None on CPU): copy bandwidth in GB/s
    (bytes read + written) for memory-bound kernels, a large bf16 matrix product in TFLOP/s
    for attention. Random data: zeros run faster than real inputs."""
    if device_type != "cuda":
        return {"GB/s": None, "TFLOP/s": None}
    src = torch.randint(0, 255, (1 << 30,), dtype=torch.uint8, device="cuda")  # 1 GiB: far beyond L2
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src), device_type)
    n = 8192
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    gemm_ms = bench_ms(lambda: a @ b, device_type)
    return {"GB/s": 2 * src.numel() / copy_ms / 1e6, "TFLOP/s": 2 * n**3 / gemm_ms / 1e9}


def peak_memory_mb(fn, device_type):
    if device_type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def environment():
    """What the figures were measured on; saved beside them."""
    env = {k: v for k, v in info().items() if k != "last backend used per op"}
    if torch.cuda.is_available():
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    return env


def write_reports(rows, out_dir, name, meta):
    """Write ``rows`` (list of flat dicts) as JSON (with ``meta``) and CSV; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    csv_path = os.path.join(out_dir, f"{name}.csv")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, default=str)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def format_table(rows, columns):
    """A fixed-width text table of ``columns`` (header -> key) over ``rows``."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(row.get(key)) for key in columns.values()] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


@dataclasses.dataclass
class Case:
    """One benchmark case: its inputs, the implementations to time and how to judge them."""

    label: dict  # what identifies the case in the report: shape, mask kind, ...
    inputs: list  # tensors; those with requires_grad get gradients in the fwd+bwd timing
    providers: dict  # name -> fn(*inputs) -> output; the torch baseline first
    reference: object  # fn(*inputs in float64) -> output: the correctness oracle
    work: tuple  # (forward, forward+backward): the fewest bytes moved, or the FLOPs, by formula
    unit: str = "GB/s"  # "GB/s" (work in bytes) or "TFLOP/s" (work in FLOPs)


def _leaves(inputs, convert=lambda t: t):
    return [convert(t.detach()).requires_grad_(t.requires_grad) for t in inputs]


def _max_error(case, fn, dy):
    """Largest relative error of the output and every gradient vs the float64 reference."""
    leaves = _leaves(case.inputs)
    out = fn(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    results = [out, *torch.autograd.grad(out, wanted, dy)]
    leaves64 = _leaves(case.inputs, lambda t: t.double() if t.is_floating_point() else t)
    out64 = case.reference(*leaves64)
    wanted64 = [t for t in leaves64 if t.requires_grad]
    expected = [out64, *torch.autograd.grad(out64, wanted64, dy.double())]
    return max(rel_error(a, b) for a, b in zip(results, expected))


def run_case(op, case, device_type, dtype, peaks):
    """Check, then time forward and forward+backward of every provider; one report row each.
    ``peaks``: the measured ceilings by unit (measured_peaks)."""
    rows, baseline = [], {}
    first = next(iter(case.providers.values()))
    dy = torch.randn_like(first(*case.inputs), dtype=torch.float32).to(dtype)
    for name, fn in case.providers.items():
        error = _max_error(case, fn, dy)
        leaves = _leaves(case.inputs)
        timed = {
            "fwd": (lambda: fn(*case.inputs), case.work[0]),
            "fwd+bwd": (lambda: fn(*leaves).backward(dy), case.work[1]),
        }
        peak = peaks.get(case.unit)
        for direction, (call, work) in timed.items():
            ms = bench_ms(call, device_type, grad_to_none=[t for t in leaves if t.requires_grad])
            baseline.setdefault(direction, ms)  # the torch baseline comes first
            rate = work / ms / (1e6 if case.unit == "GB/s" else 1e9)
            rows.append({
                "op": op, **case.label, "dtype": str(dtype).replace("torch.", ""),
                "provider": name, "pass": direction, "ms": ms, "rate": rate, "unit": case.unit,
                "% of peak": 100 * rate / peak if peak else None,
                "speed-up": baseline[direction] / ms,
                "peak MB": peak_memory_mb(call, device_type),
                "max rel err": error, "correct": error <= TOLERANCE[dtype],
            })
    return rows
