"""``python -m fasttx bench``: time fasttx kernels against PyTorch baselines measured in the same run.

For each op it writes into --out: <op>_<dtype>_<device>.json (rows and run metadata), .csv, .md
(headline and every row) and .png (plots, when matplotlib is installed), and
report_<dtype>_<device>.md with every op of the run. It exits non-zero when any implementation
gives a wrong result (check column FAIL) on the benchmark's own inputs. With --time-limit, the cases
that did not fit are listed as cut (stderr, the reports, "cut" in each JSON's meta).
"""

import argparse
import datetime
import os
import signal
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _parse_shapes(text):
    try:
        shapes = [tuple(int(n) for n in shape.lower().split("x")) for shape in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(
            f"--shapes takes ROWSxCOLS[,...] (attention: SEQxHEADSxHEAD_DIM[,...]) of positive integers, got {text!r}")
    return shapes


def _parse_backends(text):
    from ..backends import BACKENDS

    names = [name.strip() for name in text.split(",")]
    if not all(names) or any(name not in BACKENDS for name in names):
        raise argparse.ArgumentTypeError(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}, got {text!r}")
    return tuple(dict.fromkeys(names))


def _parse_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--time-limit takes seconds > 0, got {text!r}")
    return value


def _parse_threshold(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--threshold takes a fraction >= 0 (0.1: 10% slower), got {text!r}")
    return value


def _fail(message):
    sys.exit(f"fasttx bench: {message}")


class TimeLimit(BaseException):
    """--time-limit reached inside a case (SIGALRM). A BaseException: the handlers that record a
    provider's failure (``except Exception``) must not take it for one."""


def _time_limit_reached(signum, frame):
    raise TimeLimit


def run(args):
    from .. import backends
    from ..benchmarks import REGISTRY, common, report

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    dtype_name = str(dtype).replace("torch.", "")
    preset = args.preset or ("full" if device_type == "cuda" else "quick")
    start = time.monotonic()  # --time-limit counts from here
    # --preset cpu: the ops that define it (the module workloads the CPU path is held to)
    ops = [op for op in REGISTRY if args.shapes or preset in REGISTRY[op].PRESETS] if args.op == "all" else [args.op]
    if not args.shapes and preset not in REGISTRY[ops[0]].PRESETS:
        _fail(f"--op {args.op} has no --preset {preset}")
    for op in ops:  # every argument is checked before the (long) run starts
        arity = len(REGISTRY[op].SHAPE.split("x"))
        if args.shapes and any(len(shape) != arity for shape in args.shapes):
            _fail(f"--op {op} takes shapes of {arity} numbers, {REGISTRY[op].SHAPE}[,...]; got {args.shapes}")
    try:
        old, old_devices = report.load_old(args.compare) if args.compare else (None, set())
    except ValueError as e:
        _fail(e)
    # On GPU the torch backend is torch's own ops, which the PyTorch baselines time: only when asked for.
    reasons = {name: backends.unavailable_reason(name, device_type, dtype)
               for name in args.backends or (backends.BACKENDS if device_type == "cpu" else ("triton", "cuda"))}
    for name, reason in reasons.items():
        if reason is not None and args.backends:  # asked for by name: say why it is missing
            print(f"fasttx bench: backend {name} not timed: {reason}", file=sys.stderr)
    wanted = [name for name, reason in reasons.items() if reason is None]
    os.makedirs(args.out, exist_ok=True)

    peaks = common.measured_peaks(device_type)
    meta = dict(common.environment(), command=" ".join(["python -m fasttx"] + sys.argv[1:]),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name() if device_type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                preset=None if args.shapes else preset, shapes=args.shapes, backends=list(wanted), measured_peaks=peaks,
                compile_baselines=not args.no_compile, time_limit_s=args.time_limit)
    if old_devices - {meta["device"]}:
        print(f"fasttx bench: --compare: the earlier run was on {', '.join(map(str, old_devices))}, "
              f"this one on {meta['device']}: the ratios compare devices, not code", file=sys.stderr)
    can_plot = report.can_plot()
    if not can_plot:
        print("fasttx bench: no PNG plots: matplotlib is not installed (pip install 'fasttx[bench]')", file=sys.stderr)
    sections, failures = [], []
    deadline = start + args.time_limit if args.time_limit else None
    previous = signal.signal(signal.SIGALRM, _time_limit_reached) if deadline else None
    try:
        for op in ops:
            section, failed = _bench_op(op, args, device_type, dtype, wanted, meta, old, can_plot, deadline)
            sections.append(section)
            failures += failed
    finally:
        if deadline:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    combined = os.path.join(args.out, f"report_{dtype_name}_{device_type}.md")
    with open(combined, "w") as f:
        f.write(report.markdown_header(meta) + "\n".join(sections))
    print(f"wrote {combined}")
    if failures:
        _fail("wrong results (check column FAIL):\n  " + "\n  ".join(failures))


def _run_cases(op, cases, device_type, dtype, peaks, progress, deadline):
    """(rows, cut): the rows of ``cases``, and the descriptions of those that ``deadline`` (a
    time.monotonic() value, or None) cut: a case is not started when the time left is less than the
    longest case so far took, and one still running at the deadline is interrupted (SIGALRM)."""
    from ..benchmarks import common, report

    rows, cut, longest = [], [], 0.0
    for case in cases:
        text = report.describe(case.label)
        progress.case(text)
        left = deadline - time.monotonic() if deadline else None
        if left is not None and (left <= 0 or left < longest):
            cut.append(text)
            continue
        if left is not None:
            signal.setitimer(signal.ITIMER_REAL, left)
        begin = time.monotonic()
        try:
            rows += common.run_case(op, case, device_type, dtype, peaks, step=progress.step)
        except TimeLimit:
            cut.append(text)
        finally:
            if left is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
        longest = max(longest, time.monotonic() - begin)
    for text in cut:
        print(f"fasttx bench: {op} {text}: cut by --time-limit", file=sys.stderr, flush=True)
    return rows, cut


def _bench_op(op, args, device_type, dtype, wanted, meta, old, can_plot, deadline):
    """Run, report and write one op; return its Markdown section and its failures (text)."""
    from ..benchmarks import REGISTRY, common, report
    from ..benchmarks.progress import Progress
    from ..testing import TOLERANCE

    module = REGISTRY[op]
    peaks = meta["measured_peaks"]
    # All of an op's cases up front, to size the progress bar; the largest sweep holds a few GB.
    shapes = args.shapes or module.PRESETS[meta["preset"]]
    shapes = shapes[op] if isinstance(shapes, dict) else shapes  # a preset may be per op
    cases = list(module.cases(op, dtype, device_type, shapes, wanted))
    if args.no_compile:  # each compile costs seconds to tens of seconds per shape
        cases = [common.dataclasses.replace(case, providers={
            name: fn for name, fn in case.providers.items() if not common.is_compiled(name)}) for case in cases]
    progress = Progress(op, sum(len(case.providers) for case in cases), quiet=args.no_progress)
    rows, cut = _run_cases(op, cases, device_type, dtype, peaks, progress, deadline)
    progress.close()
    del cases
    if not rows:
        return f"## {op}\n\nNo case finished within --time-limit; cut: {'; '.join(cut)}\n", []
    meta = dict(meta, cut=cut)
    comparison = report.compare(rows, old, args.threshold) if old else None

    base = os.path.join(args.out, f"{op}_{rows[0]['dtype']}_{device_type}")
    paths = list(report.write_data(rows, base, meta))
    section = report.markdown_section(op, rows, meta, comparison)
    with open(base + ".md", "w") as f:
        f.write(report.markdown_header(meta) + section)
    paths.append(base + ".md")
    if can_plot and report.plot(rows, module.PLOT, base + ".png"):
        paths.append(base + ".png")

    print(f"\n{op} ({rows[0]['dtype']}, {meta['device']}, measured peaks {peaks}); "
          "speed-up vs the fastest correct PyTorch baseline")
    print(report.format_table(report.display(rows)))
    best = report.headline(rows)
    if best:
        print(f"\n{op}: best fasttx vs best PyTorch\n" + report.format_table(best))
    if old:
        print(comparison or "Against the earlier run: no matching rows")
    print("wrote " + ", ".join(paths))
    labels = report.label_keys(rows)
    return section, [f"{op} {report.describe({k: r[k] for k in labels})} {r['provider']}: "
                     + r.get("error", f"max rel err {r['max rel err']:.3g} > {TOLERANCE[dtype]:.3g}")
                     for r in rows if r["correct"] is False and r["pass"] == "fwd"]


def add_parser(commands):
    from ..benchmarks import REGISTRY

    bench = commands.add_parser(
        "bench", help="time fasttx kernels against PyTorch",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--op", choices=list(REGISTRY) + ["all"], default="all")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if torch.cuda.is_available() else "float32")
    sizes = bench.add_mutually_exclusive_group()
    sizes.add_argument("--preset", choices=("quick", "full", "cpu"),
                       help="quick: a few small shapes; full: the GPU sweep (default: full on GPU, quick on CPU); "
                            "cpu: the module workloads (mha, encoder_layer, layer_norm_module) the CPU path is held to")
    sizes.add_argument("--shapes", type=_parse_shapes,
                       help="explicit shapes: ROWSxCOLS,... (norms: ROWSxHIDDEN; attention: SEQxHEADSxHEAD_DIM)")
    bench.add_argument("--backends", type=_parse_backends,
                       help="fasttx backends to time, e.g. triton,cuda (default: all on CPU, triton,cuda on GPU); "
                            "the PyTorch baselines always run")
    bench.add_argument("--out", default="bench-out", help="folder for the reports (default: bench-out)")
    bench.add_argument("--compare", metavar="OLD", help="an earlier run's JSON (or its folder): time ratio per matching row")
    bench.add_argument("--threshold", type=_parse_threshold, default=0.1,
                       help="with --compare, flag rows slower than this fraction as regressions (default 0.1)")
    bench.add_argument("--no-compile", action="store_true",
                       help="leave out the torch.compile baselines (GPU): each shape costs a compile of seconds to "
                            "tens of seconds, often more than timing the whole op")
    bench.add_argument("--time-limit", type=_parse_seconds, metavar="SECONDS",
                       help="stop after SECONDS: a case that would not fit (it takes at least as long as the longest "
                            "so far) is not started, one still running then is interrupted; both are listed as cut")
    bench.add_argument("--no-progress", action="store_true",
                       help="no progress on stderr (default: a bar on a terminal, one line per case elsewhere)")
    bench.set_defaults(func=run)
