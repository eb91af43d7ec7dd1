"""The host's time for one forward call: Python, dispatch and the autograd node, before any kernel.

On a GPU, a call whose kernels take less time than this leaves the GPU waiting on the host (the
bench's "host ms" column shows where). Measured here on CPU tensors, so that it needs no GPU: the
Triton launchers are replaced by their ops' fakes (the allocations of the outputs), so that the
"fasttx triton" column is the path a GPU call takes up to the launch (argument checks, backend
choice, the custom op's dispatch and autograd) and nothing of the Triton interpreter. Beside it,
torch's own call and fasttx's torch backend, both with their real CPU compute on tiny tensors (so
an upper bound of their host time). Inputs require grad, as in training; per call, the best of
``--repeats`` runs of ``--calls`` calls (the least disturbed by the rest of the machine).

    python -m fasttx.benchmarks.host_overhead [--calls N] [--repeats R]
"""

import argparse
import contextlib
import importlib
import os
import time

import torch
import torch.nn.functional as F

from .._declarations import DECLARATIONS

# The Triton launcher each op's forward calls (fasttx._declarations imports it at call time).
LAUNCHERS = {"attention": ("attention", "attention_fwd"), "layer_norm": ("layer_norm", "layer_norm_fwd"),
             "rms_norm": ("rms_norm", "rms_norm_fwd"), "softmax": ("softmax", "softmax_fwd")}


@contextlib.contextmanager
def stubbed_triton_launchers():
    """The Triton forward launchers replaced by their ops' fakes (same arguments, outputs allocated,
    nothing computed); TRITON_INTERPRET=1 so that the triton backend takes CPU tensors."""
    interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    saved = []
    for op, (module_name, launcher) in LAUNCHERS.items():
        module = importlib.import_module(f"fasttx.triton_kernels.{module_name}")
        saved.append((module, launcher, getattr(module, launcher)))
        setattr(module, launcher, DECLARATIONS[op].fwd_fake)
    try:
        yield
    finally:
        for module, launcher, fn in saved:
            setattr(module, launcher, fn)
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = interpret


def calls():
    """{case: {provider: zero-argument call}} on tiny CPU tensors that require grad."""
    import fasttx

    torch.manual_seed(0)
    q = torch.randn(2, 4, 8, 16, requires_grad=True)
    rows = torch.randn(16, 64, requires_grad=True)
    weight, bias = torch.randn(64, requires_grad=True), torch.randn(64, requires_grad=True)
    tokens = torch.randn(2, 8, 64)
    torch_mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    fasttx_mha = {b: fasttx.nn.MultiheadAttention(64, 4, batch_first=True, backend=b) for b in ("torch", "triton")}
    for module in fasttx_mha.values():
        module.load_state_dict(torch_mha.state_dict())
    ours = {
        "attention (B, H, L, E)": lambda b: lambda: fasttx.scaled_dot_product_attention(q, q, q, backend=b),
        "layer_norm": lambda b: lambda: fasttx.layer_norm(rows, (64,), weight, bias, backend=b),
        "rms_norm": lambda b: lambda: fasttx.rms_norm(rows, (64,), weight, backend=b),
        "softmax": lambda b: lambda: fasttx.softmax(rows, -1, backend=b),
        "MultiheadAttention, self": lambda b: lambda: fasttx_mha[b](tokens, tokens, tokens, need_weights=False),
    }
    theirs = {
        "attention (B, H, L, E)": lambda: F.scaled_dot_product_attention(q, q, q),
        "layer_norm": lambda: F.layer_norm(rows, (64,), weight, bias),
        "rms_norm": lambda: F.rms_norm(rows, (64,), weight),
        "softmax": lambda: torch.softmax(rows, -1),
        "MultiheadAttention, self": lambda: torch_mha(tokens, tokens, tokens, need_weights=False),
    }
    return {case: {"torch": theirs[case], "fasttx torch": make("torch"), "fasttx triton (launch stubbed)": make("triton")}
            for case, make in ours.items()}


def host_us(fn, calls, repeats):
    for _ in range(max(calls // 10, 1)):  # warm-up: first-call caches, lazy imports
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def measure(calls_per_run=2000, repeats=5):
    """{case: {provider: us per call}}."""
    with stubbed_triton_launchers():
        return {case: {name: host_us(fn, calls_per_run, repeats) for name, fn in providers.items()}
                for case, providers in calls().items()}


def table(results):
    providers = list(next(iter(results.values())))
    lines = [f"| case | {' | '.join(f'{p} us' for p in providers)} |", "|---" * (len(providers) + 1) + "|"]
    lines += [f"| {case} | {' | '.join(f'{row[p]:.1f}' for p in providers)} |" for case, row in results.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.benchmarks.host_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported (default 5)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; us per forward call, best of {args.repeats}")
    print(table(measure(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
