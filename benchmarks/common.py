"""Checking and timing shared by the per-op benchmarks.

Each op module (norms, softmax, attention, ...) yields ``Case``s: inputs, the implementations to
time (``providers``) and a float64 reference. ``run_case`` checks every provider against the
reference on the case's own inputs (a case with random draws, dropout, only that its results are
finite: ``Case.checked``), then times three passes:

- ``fwd``: the forward call, inputs requiring grad (so the autograd graph is built, as in training);
- ``bwd``: the backward alone, each timed call on a graph of its own: an untimed forward builds it
  before the call (``setup`` of bench_ms), as each training step does. Not a graph built once and
  run with ``retain_graph=True``: torch.compile frees saved intermediates into its backward
  ("donated buffers", a real saving of the compiled baseline, kept on here), and a backward
  compiled that way refuses a retained graph (a RuntimeError on torch 2.11 and 2.14). Not (fwd+bwd) - fwd either: a
  difference of two noisy medians is noisier than either and goes negative for small kernels;
- ``fwd+bwd``: both, as one training step runs them.

GPU times come from CUDA events around each call (as triton.testing.do_bench: L2 flushed before
every call, warm-up, then the median and the 20th/80th percentiles of the repeats), with the median
time the host took to issue each call beside them ("host ms": Python and launches, no synchronization;
where it nears or passes the events' time the GPU waited on the host between the call's kernels, so
that figure is the host's, not the kernels'), CPU times from
perf_counter around each call (the same quantiles over blocks of calls, in interleaved rounds of the
providers: see _interleaved); ``setup`` runs outside the timed span on both.
"""

import contextlib
import dataclasses
import gc
import importlib
import math
import time

import numpy as np
import torch

from .. import backends, info
from ..testing import TOLERANCE, rel_error

PASSES = ("fwd", "bwd", "fwd+bwd")
QUANTILES = (0.5, 0.2, 0.8)  # median, then the spread reported beside it
CPU_BLOCKS = 7
CPU_MIN_TIME_S = 0.03  # per measurement
CPU_ROUNDS = 3  # interleaved rounds of every provider (see _interleaved)
REFERENCE_CHUNKS = 16


def kind(provider):
    """"fasttx", "pytorch" or "other", from the provider's name."""
    if provider.startswith("fasttx "):
        return "fasttx"
    return "pytorch" if provider.startswith("torch") else "other"


def is_compiled(provider):
    """Whether ``provider`` is a torch.compile baseline ("torch.compile", "torch.nn + torch.compile", ...)."""
    return "torch.compile" in provider


def _prepare(grad_to_none, setup):
    """What runs untimed before each measured call: the gradients of ``grad_to_none`` reset to None
    (no accumulation into earlier ones), then ``setup()`` (the bwd pass: the forward whose graph the
    call consumes)."""
    for t in grad_to_none or ():
        t.grad = None
    if setup is not None:
        setup()


def cpu_iteration_s(fn, grad_to_none=None, setup=None):
    """Seconds of one iteration of ``fn()`` on CPU, its untimed _prepare(grad_to_none, setup)
    included (what sizes bench_ms's blocks), after a warm-up iteration: first-call costs (Triton
    interpreter setup, allocator) stay out of it and of the samples timed after it."""
    def iteration_s():
        start = time.perf_counter()
        _prepare(grad_to_none, setup)
        fn()
        return time.perf_counter() - start

    iteration_s()
    return iteration_s()


def bench_ms(fn, device_type, grad_to_none=None, cpu_blocks=(3, CPU_BLOCKS), setup=None, cpu_once_s=None):
    """(median, p20, p80, host median) milliseconds of ``fn()``, the last on GPU only (None on CPU,
    where the call's time is the host's); on CPU over (at least, at most) ``cpu_blocks``
    blocks of calls, each call after an untimed _prepare(grad_to_none, setup). The number of calls is
    sized by the wall time of a whole iteration, setup included (cpu_iteration_s; ``cpu_once_s``: an
    earlier measurement of it, which skips the warm-up and sizing here), so that a measurement takes
    about the same time whatever setup costs."""
    def prepare():
        _prepare(grad_to_none, setup)

    if device_type == "cuda":
        return _cuda_ms(fn, prepare)
    once = cpu_iteration_s(fn, grad_to_none, setup) if cpu_once_s is None else cpu_once_s
    # Blocks of calls filling CPU_MIN_TIME_S; at least 3 blocks for a spread, fewer calls when slow.
    blocks = min(max(math.ceil(CPU_MIN_TIME_S / once), cpu_blocks[0]), cpu_blocks[1])
    number = max(1, math.ceil(CPU_MIN_TIME_S / blocks / once))
    times = [_cpu_block_ms(fn, prepare, number) for _ in range(blocks)]
    return (*(float(np.quantile(times, q)) for q in QUANTILES), None)


def _cpu_block_ms(fn, prepare, number):
    """Mean ms of ``number`` calls of ``fn``, each timed alone after an untimed ``prepare()``; the
    garbage collector off, as timeit does, so that no call pays for another's garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        total = 0.0
        for _ in range(number):
            prepare()
            start = time.perf_counter()
            fn()
            total += time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    return total * 1e3 / number


GPU_WARMUP_MS, GPU_REPEAT_MS = 25, 100  # triton.testing.do_bench's defaults
L2_FLUSH_BYTES = 256 << 20  # zeroed before each call, as do_bench does: beyond any GPU's L2


def _cuda_ms(fn, prepare):
    """do_bench's measurement with an untimed ``prepare()`` before each call: CUDA events around
    each call of ``fn``, the L2 flushed before it; warm-up and repeats sized by the wall time of
    whole iterations (prepare and flush included). Also the median host time of issuing a call."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def iteration():
        prepare()
        flush.zero_()
        fn()

    iteration()  # first-call costs (compiles, autotuning, allocator) stay out of the estimate
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        iteration()
    torch.cuda.synchronize()
    per_call_ms = 1e3 * (time.perf_counter() - start) / 5
    for _ in range(max(1, int(GPU_WARMUP_MS / per_call_ms))):
        iteration()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(max(1, int(GPU_REPEAT_MS / per_call_ms)))]
    host_s = []
    for start, end in events:
        prepare()
        flush.zero_()
        issued = time.perf_counter()
        start.record()
        fn()
        end.record()
        host_s.append(time.perf_counter() - issued)
    torch.cuda.synchronize()
    times = [start.elapsed_time(end) for start, end in events]
    return (*(float(np.quantile(times, q)) for q in QUANTILES), 1e3 * float(np.median(host_s)))


def measured_peaks(device_type):
    """The device's ceilings, measured once per run on GPU (None on CPU): copy bandwidth in GB/s
    (bytes read + written) for memory-bound kernels, a large bf16 matrix product in TFLOP/s
    for attention. Random data: zeros run faster than real inputs."""
    if device_type != "cuda":
        return {"GB/s": None, "TFLOP/s": None}
    src = torch.randint(0, 255, (1 << 30,), dtype=torch.uint8, device="cuda")  # 1 GiB: far beyond L2
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src), device_type)[0]
    n = 8192
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    gemm_ms = bench_ms(lambda: a @ b, device_type)[0]
    return {"GB/s": 2 * src.numel() / copy_ms / 1e6, "TFLOP/s": 2 * n**3 / gemm_ms / 1e9}


def peak_memory_mb(fn, device_type, grad_to_none=(), setup=None):
    """MiB allocated by ``fn()`` beyond what was allocated before it, ``setup()`` (bench_ms's) run
    first: on GPU torch's CUDA allocator statistics; on CPU, where torch keeps none, the peak of
    the running total of the allocations and frees that torch's CPU allocator reports to the
    profiler (profile_memory) during the call. Both count tensor memory, not the allocator's cache nor the process's RSS."""
    _prepare(grad_to_none, setup)
    if device_type != "cuda":
        return _cpu_peak_memory_mb(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _cpu_peak_memory_mb(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw allocation records (bytes, + allocated, - freed), every thread, in time order.
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def environment():
    """What the figures were measured on; saved beside them."""
    env = {k: v for k, v in info().items() if k != "last backend used per op"}
    if torch.cuda.is_available():
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    return env


def compiled(fn):
    """``torch.compile(fn)`` specialised to each shape, as a fixed-shape training run would be.
    A sweep recompiles once per shape; dynamo's default limit (8 per function) would make the
    later shapes silently run eager, so the limit is raised to cover any sweep."""
    import torch._dynamo.config as config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, name, max(getattr(config, name), 256))
    return torch.compile(fn, dynamic=False)


def fasttx_providers(op, device_type, dtype, wanted, make):
    """``{"fasttx <b>": make(b)}`` for each backend in ``wanted`` that can run ``op`` here."""
    return {f"fasttx {b}": make(b) for b in wanted
            if backends.unavailable_reason(b, device_type, dtype, op) is None}


@dataclasses.dataclass
class External:
    """Another library's implementation, timed when it is installed (never required)."""

    name: str  # provider name in the report
    module: str
    attr: str
    adapt: object  # the library's function -> fn(*case inputs) -> output
    dtypes: tuple = backends.KERNEL_DTYPES


def external_providers(externals, device_type, dtype):
    """Providers of the installed ``externals`` that run on this device and dtype. Each of these
    libraries (Liger-Kernel, apex, flash-attn) runs CUDA tensors only."""
    providers = {}
    for ext in externals:
        if device_type != "cuda" or dtype not in ext.dtypes:
            continue
        try:
            fn = getattr(importlib.import_module(ext.module), ext.attr)
        except (ImportError, AttributeError):  # not installed, or a version without this function
            continue
        providers[ext.name] = ext.adapt(fn)
    return providers


@dataclasses.dataclass
class Case:
    """One benchmark case: its inputs, the implementations to time and how to judge them."""

    label: dict  # what identifies the case in the report: shape, mask kind, ...
    inputs: list  # tensors; those with requires_grad get gradients in the backward passes
    providers: dict  # name -> fn(*inputs) -> output; see around() for a switch both passes must see
    reference: object  # fn(*inputs in float64) -> output: the correctness oracle
    work: tuple  # (forward, backward): the fewest bytes moved, or the FLOPs, by formula
    unit: str = "GB/s"  # "GB/s" (work in bytes) or "TFLOP/s" (work in FLOPs)
    chunk_dim: int = None  # an output dim whose slices are independent: the reference runs by slices
    # False where the providers draw random numbers (dropout) that neither the reference nor each other
    # reproduce: each is run, forward and backward, and only its results' finiteness is checked
    # (_finite_only); its rows have no max rel err. The kernels' dropout is checked in the tests.
    checked: bool = True


def with_unsplit_rows(providers, cols, chunk):
    """providers, and where the CUDA kernels split rows of ``cols`` over a thread block cluster (sm_90,
    rows longer than their one-block ``chunk``), "fasttx cuda (no clusters)" beside "fasttx cuda": the
    same call with the split switched off (fasttx._extension.cuda_clusters; its around, so the backward
    sees it too), one block walking each row chunk by chunk, to measure what the split changes."""
    if "fasttx cuda" not in providers or cols <= chunk or torch.cuda.get_device_capability()[0] != 9:
        return providers
    from .._extension import cuda_clusters

    def unsplit(*args, cuda=providers["fasttx cuda"]):
        return cuda(*args)
    unsplit.around = lambda: cuda_clusters(False)
    return {**providers, "fasttx cuda (no clusters)": unsplit}


def around(fn):
    """The context a provider is checked and timed in, every pass: ``fn.around()`` where the provider
    has one (a switch its backward must see too: autograd runs the backward outside any context set
    around the forward call alone), else none."""
    return getattr(fn, "around", contextlib.nullcontext)()


def _leaves(inputs, convert=lambda t: t):
    return [convert(t.detach()).requires_grad_(t.requires_grad) for t in inputs]


def _reference_results(case, dy):
    """The float64 reference's output and input gradients, computed in up to REFERENCE_CHUNKS
    slices along ``case.chunk_dim`` of the output, which bounds the float64 copies' memory on the
    full sweeps. The slices must be independent (rows of a norm or softmax, attention's heads).
    An input with the output's rank and size there is sliced with it; any other input (a norm's
    weight, a broadcast mask) is passed whole, its gradient summed over the slices."""
    def convert(t):
        return t.double() if t.is_floating_point() else t

    def results(inputs, grad_out):
        leaves = _leaves(inputs, convert)
        out = case.reference(*leaves)
        return [out, *torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out.double())]

    dim = case.chunk_dim
    if dim is None:
        return results(case.inputs, dy)
    n = min(REFERENCE_CHUNKS, dy.shape[dim])
    sliced = [t.dim() == dy.dim() and t.shape[dim] == dy.shape[dim] for t in case.inputs]
    split = [t.tensor_split(n, dim) if s else [t] * n for t, s in zip(case.inputs, sliced)]
    pieces = [results([parts[i] for parts in split], grad_out) for i, grad_out in enumerate(dy.tensor_split(n, dim))]
    grad_sliced = [s for t, s in zip(case.inputs, sliced) if t.requires_grad]
    return [torch.cat(parts, dim) if s else sum(parts) for s, parts in zip([True] + grad_sliced, zip(*pieces))]


def _max_error(case, fn, dy):
    """Largest relative error of the output and every gradient vs the float64 reference."""
    leaves = _leaves(case.inputs)
    out = fn(*leaves)
    # a clone: some libraries' backward writes into the upstream gradient
    results = [out, *torch.autograd.grad(out, [t for t in leaves if t.requires_grad], dy.clone())]
    return max(rel_error(a, b) for a, b in zip(results, _reference_results(case, dy)))


def _finite_only(fn, inputs, dy):
    """None where ``fn``'s output and input gradients are all finite (an unchecked case's verdict);
    raises otherwise."""
    leaves = _leaves(inputs)
    out = fn(*leaves)
    results = [out, *torch.autograd.grad(out, [t for t in leaves if t.requires_grad], dy.clone())]
    if not all(torch.isfinite(t).all() for t in results):
        raise FloatingPointError("non-finite output or gradient")
    return None


def _time_passes(case, fn, dy, device_type, with_memory, cpu_blocks, cpu_sizes):
    """{pass: ((median, p20, p80, host median or None) ms, peak MiB or None)} of one provider.
    ``cpu_sizes`` ({pass: seconds of an iteration}, CPU): the passes it lacks are warmed up and sized
    (cpu_iteration_s) and added to it, the others are timed at once (an earlier round's sizes)."""
    leaves = _leaves(case.inputs)
    grads = [t for t in leaves if t.requires_grad]
    graphs = []  # the outputs of the forwards run (untimed) for the bwd pass, one per backward

    def forward():
        graphs.append(fn(*leaves))

    def backward():
        graphs.pop().backward(dy)  # the graph is freed by its backward, as in training

    calls = {"fwd": (lambda: fn(*leaves), None), "bwd": (backward, forward),
             "fwd+bwd": (lambda: fn(*leaves).backward(dy), None)}
    measured = {}
    for name, (call, setup) in calls.items():
        if device_type == "cpu" and name not in cpu_sizes:
            cpu_sizes[name] = cpu_iteration_s(call, grads, setup)
        measured[name] = (bench_ms(call, device_type, grads, cpu_blocks, setup, cpu_sizes.get(name)),
                          peak_memory_mb(call, device_type, grads, setup) if with_memory else None)
    return measured


OUT_OF_MEMORY = "out of memory"  # too large for this implementation here: not a wrong result


def _failure(e):
    if isinstance(e, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return OUT_OF_MEMORY
    return f"{type(e).__name__}: {e}"  # a provider that cannot run this case is reported as failing


def _interleaved(case, names, dy, device_type, failures):
    """{provider: {pass: ((median, p20, p80, host median) ms, peak MiB)}} of the providers ``names``. On CPU,
    where the machine's load drifts, they are timed in CPU_ROUNDS interleaved rounds (each round
    times every provider once, in alternating order), so a busy spell hits them alike; the figures
    are the median and spread of the rounds' medians (each round's from at least 1 block of calls:
    the rounds give the spread), the peak memory is the first round's. Only the first round warms
    each pass up and sizes its blocks; the later ones reuse its sizes. A call after another provider's
    may find its code out of the caches, but a block lasts ~CPU_MIN_TIME_S / its blocks (>= 10 ms),
    far longer than such a miss; where one call outlasts a block (the Triton interpreter), the warm-up
    and sizing were two thirds of the time. A provider that raises goes into ``failures`` (name ->
    message)."""
    times, memory, cpu_sizes = {}, {}, {}
    for round_ in range(1 if device_type == "cuda" else CPU_ROUNDS):
        order = names if round_ % 2 == 0 else names[::-1]  # no provider always runs first
        for name in [n for n in order if n not in failures]:
            try:
                with around(case.providers[name]):
                    timed = _time_passes(case, case.providers[name], dy, device_type, round_ == 0,
                                         (1, math.ceil(CPU_BLOCKS / CPU_ROUNDS)), cpu_sizes.setdefault(name, {}))
            except Exception as e:
                failures[name] = _failure(e)
                continue
            for direction, (ms, mib) in timed.items():
                times.setdefault((name, direction), []).append(ms)
                memory.setdefault((name, direction), mib)
    measured = {}
    for (name, direction), samples in times.items():
        if name not in failures:
            medians = [ms[0] for ms in samples]
            spread = samples[0] if len(samples) == 1 else (*(float(np.quantile(medians, q)) for q in QUANTILES), None)
            measured.setdefault(name, {})[direction] = (spread, memory[name, direction])
    return measured


def run_case(op, case, device_type, dtype, peaks, step=lambda text: None):
    """Check every provider, then time their passes (interleaved on CPU, see _interleaved); one
    report row per provider and pass, with the speed-up vs the fastest correct PyTorch baseline.
    ``peaks``: the measured ceilings by unit (measured_peaks); ``step(text)`` is called before each
    provider is checked (progress)."""
    rows = []
    with torch.no_grad():  # the output's shape and dtype, for the upstream gradient
        sample = next(iter(case.providers.values()))(*case.inputs)
    dy = torch.randn_like(sample, dtype=torch.float32).to(dtype)
    del sample
    works = dict(zip(PASSES, (case.work[0], case.work[1], sum(case.work))))
    peak = peaks.get(case.unit)
    base = {"op": op, **case.label, "dtype": str(dtype).replace("torch.", "")}
    errors, failures = {}, {}
    for name, fn in case.providers.items():
        step(name)
        try:
            with around(fn):
                errors[name] = _max_error(case, fn, dy) if case.checked else _finite_only(fn, case.inputs, dy)
        except Exception as e:
            failures[name] = _failure(e)
    measured = _interleaved(case, list(errors), dy, device_type, failures)
    for name in case.providers:
        error, failure = errors.get(name), failures.get(name)
        correct = ((not case.checked or error <= TOLERANCE[dtype]) if failure is None
                   else None if failure == OUT_OF_MEMORY else False)
        for direction in PASSES:
            (ms, p20, p80, host), mib = measured.get(name, {}).get(direction, ((None,) * 4, None))
            rate = works[direction] / ms / (1e6 if case.unit == "GB/s" else 1e9) if ms else None
            rows.append({
                **base, "provider": name, "pass": direction, "ms": ms, "ms p20": p20, "ms p80": p80,
                "rate": rate, "unit": case.unit, "% of peak": 100 * rate / peak if peak and rate else None,
                "speed-up": None, "vs": None, "peak MB": mib, "max rel err": error, "correct": correct,
                **({"host ms": host} if device_type == "cuda" else {}), **({"error": failure} if failure else {}),
            })
    for direction in PASSES:
        mine = [r for r in rows if r["pass"] == direction]
        baselines = [r for r in mine if kind(r["provider"]) == "pytorch" and r["correct"] and r["ms"]]
        if not baselines:
            continue
        best = min(baselines, key=lambda r: r["ms"])
        for r in mine:
            if r["correct"] and r["ms"]:  # a wrong result never shows a speed-up
                r["speed-up"], r["vs"] = best["ms"] / r["ms"], best["provider"]
    return rows


_WARMUP_CALLS = 3


def _ms_per_call(fn, calls, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def interleaved_ms(providers, device, rounds, reduce, seconds):
    """ms per call of each of ``providers`` ({name: fn}): each round times them in turn, ~``seconds``
    each (the machine's load drifts; interleaving shares the drift), and ``reduce`` (statistics.median;
    min for host-bound calls: the round least disturbed by the rest of the machine) sums up the rounds.
    Each provider is called a few times first: a first call (lazy initialisation, one-time checks) can
    take 1000x a later one, and sizing the rounds on it left a round one call long, where the call after
    another provider's (its code out of the caches) costs more and rounds of one measure mostly that."""
    for fn in providers.values():
        _ms_per_call(fn, _WARMUP_CALLS, device)
    warm_ms = _ms_per_call(next(iter(providers.values())), _WARMUP_CALLS, device)
    calls = max(1, int(seconds * 1e3 / max(warm_ms, 1e-6)))
    times = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            times[name].append(_ms_per_call(fn, calls, device))
    return {name: reduce(t) for name, t in times.items()}


VERSUS_TORCH_NN_HEADER = "| torch.nn ms | fasttx ms | torch.nn GFLOP/s | fasttx GFLOP/s | speed-up | max abs diff |"


def versus_torch_nn(ms, work, difference, **case):
    """A row of a torch.nn module against fasttx.patch's copy: ``case``, then each one's ms ({"torch.nn": ,
    "fasttx": }) and GFLOP/s (``work`` FLOPs a call), the speed-up and the outputs' max |difference|."""
    return dict(case, torch_ms=ms["torch.nn"], fasttx_ms=ms["fasttx"], torch_gflops=work / ms["torch.nn"] / 1e6,
                fasttx_gflops=work / ms["fasttx"] / 1e6, speedup=ms["torch.nn"] / ms["fasttx"], max_abs_diff=difference)


def versus_torch_nn_cells(row, ms_digits):
    """The cells of VERSUS_TORCH_NN_HEADER for a versus_torch_nn row."""
    return (f"| {row['torch_ms']:.{ms_digits}f} | {row['fasttx_ms']:.{ms_digits}f} | {row['torch_gflops']:.2f} "
            f"| {row['fasttx_gflops']:.2f} | {row['speedup']:.2f}x | {row['max_abs_diff']:.1e} |")
