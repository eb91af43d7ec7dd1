"""``python -m fasttx train``: train a small byte-level GPT (fasttx.models, patched by fasttx.patch; or with
``--model hf:llama|hf:qwen2|hf:gpt2`` a transformers causal LM from a config) on text that needs no
download: by default the Python standard library's source files.

Runs alone or under torchrun (DDP: gloo on CPU, NCCL on GPU). ``--batch-size`` is the global
batch per optimizer step, split over the processes and then into ``--grad-accum`` micro-batches,
and every step's data windows and RNG are functions of (seed, step): a run gives the same
losses whatever the number of processes, and a resumed run the same losses as an uninterrupted
one. ``--compare`` trains the torch.nn model and the fasttx-patched one from the same seed and
reports loss curves, tokens/s and peak memory side by side.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import sysconfig
import time

import torch
import torch.distributed as dist

from .. import models
from ..backends import CHOICES
from .bench import DTYPES

VARIANTS = ("torch", "fasttx")  # torch.nn layers as built, or after fasttx.patch
VOCAB = 256  # bytes
DATA, DROPOUT, VALIDATION = range(3)  # random streams, see _seed


# ---- data ---------------------------------------------------------------------------------------

def stdlib_corpus(max_bytes):
    """The standard library's .py files in sorted path order (site-packages left out), joined,
    up to ``max_bytes``; the same bytes on every run with this Python."""
    root = sysconfig.get_paths()["stdlib"]
    chunks, size = [], 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                chunks.append(f.read())
            size += len(chunks[-1])
            if size >= max_bytes:
                return b"".join(chunks)[:max_bytes]
    return b"".join(chunks)


def load_splits(args):
    """(train, val) byte tensors (uint8): the text's last ``val_fraction`` is validation."""
    if args.data:
        with open(args.data, "rb") as f:
            text = f.read(args.max_bytes)
    else:
        text = stdlib_corpus(args.max_bytes)
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    n_val = max(args.seq + 2, int(len(tokens) * args.val_fraction))
    if len(tokens) - n_val < args.seq + 2:
        raise ValueError(f"the text has {len(tokens)} bytes: too few for --seq {args.seq} with "
                         f"--val-fraction {args.val_fraction}")
    return tokens[:-n_val], tokens[-n_val:]


def windows(tokens, starts, seq):
    """(inputs, next-token targets), each (len(starts), seq), as int64."""
    rows = tokens[starts[:, None] + torch.arange(seq + 1)].long()
    return rows[:, :-1], rows[:, 1:]


def _seed(*parts):
    """One torch seed from ints (run seed, stream, step, rank): a tuple of ints hashes the same in
    every process, so data and dropout depend on these numbers only."""
    return hash(parts) % 2**63


def step_starts(n_tokens, seq, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seq - 1, (count,), generator=generator)


# ---- one training run ---------------------------------------------------------------------------

class Context:
    """Rank, world size and device of this process; joins torchrun's process group when there is one."""

    def __init__(self, device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and device.index is None:
            # One GPU per process, by LOCAL_RANK; never a silent fallback to another device.
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"fasttx train: this process's LOCAL_RANK is {local_rank}, but there are only "
                                   f"{torch.cuda.device_count()} CUDA device(s): run at most that many processes per "
                                   f"node, or choose the device with --device (--device cpu: gloo on CPU)")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.owns_group = self.world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def mean(self, value):
        """The mean of a float over all processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def make_optimizer(model, lr, weight_decay, device):
    """AdamW, fused where torch has a fused kernel for ``device``; weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except RuntimeError:  # no fused kernel for this device in this torch
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def cosine_schedule(optimizer, warmup, total, min_ratio=0.1):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` of the peak at ``total``."""

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, else printed every ``every`` steps."""

    def __init__(self, total, enabled, every):
        self.total, self.enabled, self.every = total, enabled, every
        self.tty = sys.stderr.isatty()

    def update(self, step, text):
        if not self.enabled:
            return
        if self.tty:
            bar = "#" * (30 * step // self.total)
            sys.stderr.write(f"\r{step}/{self.total} [{bar:<30}] {text}")
            sys.stderr.flush()
        elif step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def message(self, text):
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _model_config(args):
    return {k: getattr(args, k) for k in ("model", "d_model", "layers", "heads", "seq")}


def _check_batch(args, world):
    if args.batch_size % (world * args.grad_accum):
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the number of processes "
                         f"({world}) times --grad-accum ({args.grad_accum})")
    return args.batch_size // (world * args.grad_accum)


def evaluate(model, val, args, ctx, dtype):
    """Mean loss over ``--eval-batches`` fixed batches of validation windows, over all processes.
    (In eval mode without autocast, an unswapped nn.TransformerEncoderLayer runs torch's fused
    fast path, which reads its norms' parameters directly: patched norms inside it do not run here.)"""
    model.eval()
    share = args.batch_size // ctx.world
    total = 0.0
    with torch.no_grad(), autocast(ctx.device, dtype):
        for index in range(args.eval_batches):
            starts = step_starts(len(val), args.seq, args.batch_size, _seed(args.seed, VALIDATION, index))
            x, y = windows(val, starts[ctx.rank * share:(ctx.rank + 1) * share], args.seq)
            total += model(x.to(ctx.device), y.to(ctx.device)).item()
    model.train()
    return ctx.mean(total / args.eval_batches)


def _save(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving never leaves a half-written checkpoint


def train_one(args, variant, ctx, out_dir):
    """Train ``variant`` ("torch" or "fasttx"); returns its record (losses, speed, memory)."""
    device, dtype = ctx.device, DTYPES[args.dtype]
    micro = _check_batch(args, ctx.world)
    train_tokens, val_tokens = load_splits(args)
    torch.manual_seed(args.seed)  # the same initial weights for every variant and process
    model = models.build(args.model, args.d_model, args.layers, args.heads, args.seq, VOCAB, args.dropout).to(device)
    swaps = {}
    if variant == "fasttx":
        model, swaps = models.patch_in_place(model, args.backend)
    models.set_activation_checkpointing(model, args.activation_checkpointing)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    scheduler = cosine_schedule(optimizer, args.warmup, args.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    record = {"variant": variant, "swapped": swaps, "losses": {}, "val_losses": {}, "lr": {}}
    start = 0
    if args.resume:
        state = torch.load(args.resume, map_location=device)
        if {"model": "gpt", **state["model_config"]} != _model_config(args):  # older checkpoints: the GPT
            raise ValueError(f"--resume {args.resume}: the checkpoint's model {state['model_config']} "
                             f"differs from this run's {_model_config(args)}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        for key in ("losses", "val_losses", "lr"):
            record[key] = {int(k): v for k, v in state["record"][key].items()}
    ddp = torch.nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    is_main = ctx.rank == 0
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        if swaps:
            print(f"fasttx.patch(backend={args.backend!r}) replaced: {swaps}", file=sys.stderr)
    progress = Progress(args.steps, is_main and not args.quiet, args.log_every)
    tokens_per_step = args.batch_size * args.seq
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = []
    for step in range(start + 1, args.steps + 1):
        begin = time.perf_counter()
        # Data and dropout depend on (seed, step, rank) only: what makes resume and any world size exact.
        torch.manual_seed(_seed(args.seed, DROPOUT, step, ctx.rank))
        starts = step_starts(len(train_tokens), args.seq, args.batch_size, _seed(args.seed, DATA, step))
        mine = starts.view(ctx.world, args.grad_accum, micro)[ctx.rank]
        loss_sum = 0.0
        for index in range(args.grad_accum):
            x, y = windows(train_tokens, mine[index], args.seq)
            sync = index == args.grad_accum - 1 or ctx.world == 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast(device, dtype):
                    loss = ddp(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) / args.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if args.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        record["lr"][step] = scheduler.get_last_lr()[0]
        scheduler.step()
        loss_value = ctx.mean(float(loss_sum))
        if not math.isfinite(loss_value) and dtype != torch.float16:  # fp16: the scaler skips such steps
            raise RuntimeError(f"fasttx train: the loss is {loss_value} at step {step}")
        record["losses"][step] = loss_value
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_seconds.append(time.perf_counter() - begin)
        progress.update(step, f"loss {loss_value:.4f} lr {record['lr'][step]:.2e} "
                              f"{tokens_per_step / step_seconds[-1]:,.0f} tok/s")
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            record["val_losses"][step] = evaluate(ddp, val_tokens, args, ctx, dtype)
            progress.message(f"step {step}: val loss {record['val_losses'][step]:.4f}")
        if is_main and ((args.save_every and step % args.save_every == 0) or step == args.steps):
            _save(os.path.join(out_dir, f"step_{step:06d}.pt"), {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "model_config": _model_config(args), "record": {k: record[k] for k in ("losses", "val_losses", "lr")}})
    progress.close()
    timed = step_seconds[1:] or step_seconds  # the first step pays for warm-up (allocator, autotuning)
    record["tokens_per_s"] = tokens_per_step * len(timed) / sum(timed) if timed else None
    record["step_ms"] = 1e3 * sum(timed) / len(timed) if timed else None
    record["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if is_main:
        with open(os.path.join(out_dir, "train_log.json"), "w") as f:
            json.dump({"config": vars(args), "world_size": ctx.world, **record}, f, indent=2, default=str)
    return record


# ---- --compare ----------------------------------------------------------------------------------

def _moving_mean(values, window):
    t = torch.tensor(values, dtype=torch.float64)
    return t.unfold(0, window, 1).mean(1)


def agreement(reference, other, window=10):
    """Whether two loss curves (lists, one loss per step) agree within noise.

    Both runs see the same batches from the same weights, so they differ only by rounding and
    the divergence it seeds. The noise scale is sigma, the step-to-step standard deviation of
    the reference's loss (std of its successive differences / sqrt 2: the slow trend cancels).
    Two independent runs' w-step means would differ with std sigma * sqrt(2 / w); the curves
    agree when their w-step moving means never differ by more than three times that (and by
    at most 1e-4 when the loss has no measurable noise)."""
    window = max(1, min(window, len(reference) // 2))
    ref = torch.tensor(reference, dtype=torch.float64)
    sigma = (ref.diff().std().item() / math.sqrt(2)) if len(ref) > 2 else 0.0
    tolerance = max(3 * sigma * math.sqrt(2 / window), 1e-4)
    gap = (_moving_mean(reference, window) - _moving_mean(other, window)).abs().max().item()
    return {"agree": gap <= tolerance, "max_gap": gap, "tolerance": tolerance, "window": window, "sigma": sigma,
            "max_step_difference": (ref - torch.tensor(other, dtype=torch.float64)).abs().max().item()}


def plot_curves(records, path):
    """Loss curves (train, validation as markers) per variant and their difference as a PNG;
    False, with a notice, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("fasttx train: matplotlib is not installed, skipping the PNG plot "
              "(pip install 'fasttx[train]')", file=sys.stderr)
        return False
    figure, (axes, below) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
    for name, record in records.items():
        line, = axes.plot(list(record["losses"]), list(record["losses"].values()), label=f"{name} train", lw=1)
        if record["val_losses"]:
            axes.plot(list(record["val_losses"]), list(record["val_losses"].values()), "o--",
                      color=line.get_color(), label=f"{name} validation")
    base, other = (records[v]["losses"] for v in VARIANTS)
    below.plot(list(base), [other[s] - base[s] for s in base], lw=1, color="black")
    below.set_ylabel("fasttx - torch.nn")
    below.set_xlabel("step")
    axes.set_ylabel("loss (nats per byte)")
    axes.legend()
    for panel in (axes, below):
        panel.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def cell(value, fmt):
    """``value`` formatted for a report, "-" when there is none (CPU memory, say)."""
    return "-" if value is None else format(value, fmt)


def compare(args, ctx):
    records = {}
    for variant in VARIANTS:
        if ctx.rank == 0 and not args.quiet:
            print(f"--compare: training the {variant} variant", file=sys.stderr)
        records[variant] = train_one(args, variant, ctx, os.path.join(args.out, variant))
    base, fast = (records[v] for v in VARIANTS)
    verdict = agreement(list(base["losses"].values()), list(fast["losses"].values()))
    last_val = {v: r["val_losses"][max(r["val_losses"])] for v, r in records.items()}
    verdict["val_difference"] = abs(last_val["torch"] - last_val["fasttx"])
    verdict["agree"] = verdict["agree"] and verdict["val_difference"] <= verdict["tolerance"]
    if ctx.rank != 0:
        return verdict
    summary = {"config": vars(args), "world_size": ctx.world, "agreement": verdict, "variants": {
        v: {k: r[k] for k in ("swapped", "tokens_per_s", "step_ms", "peak_memory_mb")}
        | {"final_train_loss": r["losses"][args.steps], "final_val_loss": last_val[v]} for v, r in records.items()}}
    speed = [records[v]["tokens_per_s"] for v in VARIANTS]
    summary["speed_up"] = speed[1] / speed[0] if all(speed) else None
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    lines = [f"# fasttx train --compare: {args.steps} steps, d_model {args.d_model}, {args.layers} layers, "
             f"{args.heads} heads, seq {args.seq}, global batch {args.batch_size}, {args.dtype}, "
             f"{ctx.device.type}, {ctx.world} process(es)", "",
             "| variant | final train loss | final val loss | tokens/s | step ms | peak memory MB | modules swapped |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v, row in summary["variants"].items():
        swapped = ", ".join(f"{k}: {n}" for k, n in row["swapped"].items()) or "-"
        label = "torch.nn" if v == "torch" else f"fasttx ({args.backend})"
        lines.append(f"| {label} | {row['final_train_loss']:.4f} | {row['final_val_loss']:.4f} | "
                     f"{cell(row['tokens_per_s'], ',.0f')} | {cell(row['step_ms'], '.1f')} | "
                     f"{cell(row['peak_memory_mb'], ',.0f')} | {swapped} |")
    lines += ["", f"Speed-up (tokens/s, fasttx / torch.nn): {cell(summary['speed_up'], '.3f')}", "",
              f"Curves {'agree' if verdict['agree'] else 'DISAGREE'}: largest gap of the {verdict['window']}-step "
              f"moving means {verdict['max_gap']:.3g} (final validation losses differ by "
              f"{verdict['val_difference']:.3g}) against a tolerance of {verdict['tolerance']:.3g} "
              f"(3 sigma sqrt(2/w), sigma = {verdict['sigma']:.3g} the torch.nn loss's step-to-step noise); "
              f"largest single-step difference {verdict['max_step_difference']:.3g}."]
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plotted = plot_curves(records, os.path.join(args.out, "loss_curves.png"))
    print("\n".join(lines))
    print(f"wrote {args.out}/compare.json, compare.md" + (", loss_curves.png" if plotted else ""))
    return verdict


def run(args):
    """The command: one run (returns its record) or --compare (returns the agreement verdict)."""
    ctx = Context(args.device)
    try:
        if not args.compare:
            record = train_one(args, args.variant, ctx, args.out)
            if ctx.rank == 0 and not args.quiet:
                print(f"{args.variant}: final loss {record['losses'][args.steps]:.4f}, val loss "
                      f"{record['val_losses'][args.steps]:.4f}, {cell(record['tokens_per_s'], ',.0f')} tokens/s, "
                      f"peak memory {cell(record['peak_memory_mb'], ',.0f')} MB; wrote {args.out}")
            return record
        verdict = compare(args, ctx)
        if not verdict["agree"]:
            sys.exit("fasttx train --compare: the torch.nn and fasttx loss curves disagree (see compare.md)")
        return verdict
    finally:
        ctx.close()


def command(args):
    """The CLI entry: run; a torchrun worker then leaves without interpreter finalization. Its work is
    written and its process group destroyed by then, but about one 2-process gloo run in 10-20 on the
    2-core CPU machine aborted at exit ("terminate called without an active exception", a C++ thread
    torn down during finalization; a barrier before destroy_process_group did not help), which
    torchrun reports as a failed run."""
    run(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def add_arguments(parser):
    cuda = torch.cuda.is_available()
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=("gpt", *models.HF_MODELS), default="gpt",
                       help="gpt: the byte-level GPT of fasttx.models; hf:...: a transformers causal LM "
                            "from a config with random weights (needs fasttx[hf])")
    model.add_argument("--d-model", type=int, default=512 if cuda else 128)
    model.add_argument("--layers", type=int, default=8 if cuda else 2)
    model.add_argument("--heads", type=int, default=8 if cuda else 4)
    model.add_argument("--seq", type=int, default=512 if cuda else 128, help="context length in bytes")
    model.add_argument("--dropout", type=float, default=0.0)
    model.add_argument("--variant", choices=VARIANTS, default="fasttx",
                       help="torch: the torch.nn model as built; fasttx: after fasttx.patch (default)")
    model.add_argument("--backend", default="auto", choices=CHOICES,
                       help="fasttx.patch(model, backend=...)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="a text file (default: the Python standard library's .py files)")
    data.add_argument("--max-bytes", type=int, default=16_000_000, help="read at most this much text")
    data.add_argument("--val-fraction", type=float, default=0.05)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    optim.add_argument("--batch-size", type=int, default=32 if cuda else 8,
                       help="global batch in sequences per step, over all processes and micro-batches")
    optim.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step and process")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    optim.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay")
    optim.add_argument("--weight-decay", type=float, default=0.1)
    optim.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    optim.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if cuda else "float32",
                       help="autocast dtype (float16 adds a GradScaler; float32: no autocast)")
    optim.add_argument("--activation-checkpointing", action="store_true", help="recompute each layer in backward")
    optim.add_argument("--seed", type=int, default=0)
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", help="default: cuda if there is a GPU (the one numbered by this process's LOCAL_RANK; an "
                                                "error when there is no such GPU), else cpu")
    run_group.add_argument("--out", default="train-out", help="folder for checkpoints, logs and reports")
    run_group.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    run_group.add_argument("--resume", help="a checkpoint (OUT/step_NNNNNN.pt) to continue from")
    run_group.add_argument("--eval-every", type=int, default=100, help="validation every N steps (and at the end)")
    run_group.add_argument("--eval-batches", type=int, default=4)
    run_group.add_argument("--log-every", type=int, default=10, help="progress lines when stderr is not a terminal")
    run_group.add_argument("--quiet", action="store_true")
    run_group.add_argument("--compare", action="store_true",
                           help="train the torch and fasttx variants from the same seed and compare them")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx train", description=__doc__)
    add_arguments(parser)
    return parser.parse_args(argv)


def add_parser(commands):
    parser = commands.add_parser("train", help="train a small GPT on the standard library's source",
                                 description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=command)
