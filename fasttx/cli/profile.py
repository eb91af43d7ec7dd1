"""``python -m fasttx profile``: training steps (forward, backward, AdamW step) of a model built
from torch.nn layers and of its fasttx-patched copy (same weights), timed and then run under
torch.profiler. Writes per variant a Chrome trace and a per-kernel table (Markdown and CSV), and
a summary (JSON, Markdown) with step time, tokens/s, peak memory and the speed-up.

Times come from steps run without the profiler (its overhead would distort them); the profiled
steps give the kernel breakdown, whose shares are of the profiled step time.
"""

import collections
import copy
import csv
import json
import os
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .. import models
from ..backends import CHOICES
from .bench import DTYPES
from .train import cell, autocast, make_optimizer


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, optimizer, batch, device, dtype):
    with autocast(device, dtype):
        loss = model(*batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def kernel_table(prof, device, steps, step_ms, top):
    """The ``top`` kernels by self device time (GPU; on CPU: aten ops by self CPU time), per step,
    with their share of the profiled step, and the totals per step: rows, {"device ms", "host ms"}.
    User annotations (record_function ranges such as Optimizer.step) are left out of the rows:
    on the device they span kernels already counted."""
    on_gpu = device.type == "cuda"
    events = prof.events()
    per_name = collections.defaultdict(lambda: [0, 0.0])  # name -> [calls, self microseconds]
    for event in events:
        if getattr(event, "is_user_annotation", False) or on_gpu != (event.device_type != DeviceType.CPU):
            continue
        entry = per_name[event.name]
        entry[0] += 1
        entry[1] += event.self_device_time_total if on_gpu else event.self_cpu_time_total
    ranked = sorted(per_name.items(), key=lambda item: item[1][1], reverse=True)
    rows = [{"rank": i + 1, "name": name, "calls per step": calls / steps, "self ms per step": us / 1e3 / steps,
             "share of step %": 100 * us / 1e3 / steps / step_ms}
            for i, (name, (calls, us)) in enumerate(ranked[:top])]
    host_us = sum(e.self_cpu_time_total for e in events if e.device_type == DeviceType.CPU)
    totals = {"device ms": sum(us for _, us in per_name.values()) / 1e3 / steps if on_gpu else None,
              "host ms": host_us / 1e3 / steps}
    return rows, totals


def _write_table(rows, totals, step_ms, variant, out_dir):
    csv_path = os.path.join(out_dir, f"kernels_{variant}.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = os.path.join(out_dir, f"kernels_{variant}.md")
    lines = [f"# {variant}: top kernels per training step", "",
             f"Profiled step {step_ms:.3f} ms; total device time {cell(totals['device ms'], '.3f')} ms, total host "
             f"(CPU op) time {totals['host ms']:.3f} ms per step.", "",
             "| # | kernel (CPU: op) | calls/step | self ms/step | % of step |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['rank']} | `{r['name'][:100]}` | {r['calls per step']:g} | {r['self ms per step']:.4f} | "
              f"{r['share of step %']:.1f} |" for r in rows]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


def profile_variant(name, model, args, device, dtype):
    """Move ``model`` to ``device`` (one variant resident at a time, so peak memory is its own),
    warm up, time ``args.steps`` steps, then profile ``args.profile_steps``; one summary dict."""
    model.to(device)
    batch = model.example_batch(args.batch, torch.Generator().manual_seed(args.seed))  # the same for all
    optimizer = make_optimizer(model, 1e-4, 0.0, device)
    for _ in range(args.warmup):
        _train_step(model, optimizer, batch, device, dtype)
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    begin = time.perf_counter()
    for _ in range(args.steps):
        _train_step(model, optimizer, batch, device, dtype)
    _synchronize(device)
    step_ms = 1e3 * (time.perf_counter() - begin) / args.steps
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(args.profile_steps):
            _train_step(model, optimizer, batch, device, dtype)
        _synchronize(device)
        profiled_ms = 1e3 * (time.perf_counter() - begin) / args.profile_steps
    trace = os.path.join(args.out, f"trace_{name}.json")
    prof.export_chrome_trace(trace)
    rows, totals = kernel_table(prof, device, args.profile_steps, profiled_ms, args.top)
    paths = _write_table(rows, totals, profiled_ms, name, args.out)
    del optimizer, batch
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"step_ms": step_ms, "tokens_per_s": args.batch * args.seq / step_ms * 1e3, "peak_memory_mb": peak_mb,
            "profiled_step_ms": profiled_ms, **totals, "files": [trace, *paths]}


def variants(args):
    """name -> (label, model): torch.nn as built, its fasttx-patched copy (same weights) and, with
    --compile, both under torch.compile; and what fasttx.patch swapped."""
    torch.manual_seed(args.seed)
    base = models.build(args.model, args.d_model, args.layers, args.heads, args.seq)
    fast, swaps = models.patched_copy(base, args.backend)
    stock = ("transformers (sdpa)" if args.model in models.HF_MODELS else
             "torchvision" if args.model == "tv:vit" else "torch.nn")
    chosen = {"torch": (stock, base), "fasttx": (f"fasttx ({args.backend})", fast)}
    if args.compile:
        chosen["torch_compile"] = (f"{stock} + torch.compile", torch.compile(copy.deepcopy(base)))
        chosen["fasttx_compile"] = (f"fasttx ({args.backend}) + torch.compile", torch.compile(copy.deepcopy(fast)))
    return chosen, swaps


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    os.makedirs(args.out, exist_ok=True)
    chosen, swaps = variants(args)
    print(f"fasttx.patch(backend={args.backend!r}) replaced: {swaps or 'nothing'}", file=sys.stderr)
    results = {name: profile_variant(name, model, args, device, dtype) for name, (_, model) in chosen.items()}
    stock = chosen["torch"][0]  # the label of the model as built, the baseline of the speed-ups
    for r in results.values():
        r["speed_up_vs_torch"] = results["torch"]["step_ms"] / r["step_ms"]
    summary = {"config": {k: v for k, v in vars(args).items() if k != "func"}, "device": _device_name(device),
               "swapped": swaps, "speed_up": results["fasttx"]["speed_up_vs_torch"], "variants": results}
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [f"# fasttx profile: {args.model}, d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
             f"seq {args.seq}, batch {args.batch}, {args.dtype}, {summary['device']}", "",
             f"| variant | step ms | tokens/s | speed-up vs {stock} | peak memory MB | device ms/step | host ms/step |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {chosen[name][0]} | {r['step_ms']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['speed_up_vs_torch']:.3f} | {cell(r['peak_memory_mb'], ',.0f')} | "
                     f"{cell(r['device ms'], '.3f')} | {r['host ms']:.3f} |")
    lines += ["", f"Speed-up: {stock} step time / the variant's step time (same weights, batch and optimizer).",
              f"Modules swapped by fasttx.patch: {swaps or 'none'}"]
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote " + ", ".join([os.path.join(args.out, n) for n in ("profile.json", "profile.md")]
                               + [p for r in results.values() for p in r["files"]]))
    return summary


def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def add_parser(commands):
    cuda = torch.cuda.is_available()
    parser = commands.add_parser("profile", help="profile training steps, torch.nn vs fasttx", description=__doc__)
    parser.add_argument("--model", choices=models.MODELS, default="gpt")
    parser.add_argument("--d-model", type=int, default=1024 if cuda else 128)
    parser.add_argument("--layers", type=int, default=16 if cuda else 2)
    parser.add_argument("--heads", type=int, default=16 if cuda else 4)
    parser.add_argument("--seq", type=int, default=2048 if cuda else 64,
                        help="sequence length (vit-like, tv:vit: number of 16x16 patches, a square)")
    parser.add_argument("--batch", type=int, default=8 if cuda else 4)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps run under torch.profiler")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if cuda else "float32",
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--backend", default="auto", choices=CHOICES,
                        help="fasttx.patch(model, backend=...)")
    parser.add_argument("--compile", action="store_true",
                        help="also profile both variants under torch.compile")
    parser.add_argument("--device", help="default: cuda if there is a GPU, else cpu")
    parser.add_argument("--top", type=int, default=25, help="rows of the kernel table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="profile-out", help="folder for traces, tables and the summary")
    parser.set_defaults(func=run)
