"""``python -m fasttx bench``: time fasttx kernels against PyTorch baselines measured in the same run."""

import argparse
import os
import sys

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
BENCH_OPS = ("layer_norm", "rms_norm", "softmax", "attention")


def _parse_shapes(text):
    try:
        shapes = [tuple(int(n) for n in shape.lower().split("x")) for shape in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) not in (2, 3) or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(
            f"--shapes takes ROWSxCOLS[,...] (attention: SEQxHEADSxHEAD_DIM[,...]), got {text!r}")
    return shapes


def run(args):
    from ..benchmarks import attention, common, norms, softmax

    modules = {op: module for module in (norms, softmax, attention) for op in module.OPS}
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = common.measured_peaks(device_type)
    meta = dict(common.environment(), command=" ".join(["python -m fasttx"] + sys.argv[1:]), measured_peaks=peaks)
    failed = False
    for op in BENCH_OPS if args.op == "all" else (args.op,):
        module, dtype = modules[op], DTYPES[args.dtype]
        shapes = args.shapes or (module.GPU_SHAPES if device_type == "cuda" else module.CPU_SHAPES)
        if any(len(shape) != len(module.CPU_SHAPES[0]) for shape in shapes):
            sys.exit(f"fasttx bench: --op {op} takes shapes of {len(module.CPU_SHAPES[0])} numbers")
        rows = [row for case in module.cases(op, dtype, device_type, shapes)
                for row in common.run_case(op, case, device_type, dtype, peaks)]
        name = f"{op}_{args.dtype}_{device_type}"
        paths = common.write_reports(rows, args.out, name, meta)
        print(f"\n{op} ({args.dtype}, {meta['gpu']}, measured peaks {peaks}); speed-up vs the first provider")
        print(common.format_table(rows, {k: k for k in rows[0] if k not in ("op", "dtype")}))
        print("wrote " + ", ".join(paths))
        failed |= not all(r["correct"] for r in rows)
    if failed:
        sys.exit("fasttx bench: some provider failed its correctness check (column ok)")


def add_parser(commands):
    bench = commands.add_parser("bench", help="time fasttx kernels against PyTorch")
    bench.add_argument("--op", choices=BENCH_OPS + ("all",), default="all")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if torch.cuda.is_available() else "float32")
    bench.add_argument("--shapes", type=_parse_shapes, help="ROWSxCOLS,... or for attention SEQxHEADSxHEAD_DIM,... (default: per op and device)")
    bench.add_argument("--out", default=os.path.join("bench-out"), help="folder for the JSON and CSV")
    bench.set_defaults(func=run)
