"""The host's time for one forward call: Python, dispatch, the autograd node and the launcher's work.

On a GPU, a call whose kernels take less time than this leaves the GPU waiting on the host (the
bench's "host ms" column shows where). Measured here on CPU tensors, so that it needs no GPU: every
Triton kernel is replaced by a stand-in that starts nothing, so that the "fasttx triton" column is
the path a GPU call takes up to the kernel launch itself (argument checks, backend choice, the op's
dispatch and autograd node, the launcher's checks, allocations and arguments), without the Triton
interpreter. Not in it: Triton's own launch (its binder and the driver call, ~10-40 us on a GPU by
Triton's version; a GPU run's host ms has it). Beside it, torch's own call and fasttx's torch
backend, both with their real CPU compute on tiny tensors (so an upper bound of their host time).
Inputs require grad, as in training; ``--backward`` adds the backward of the output's sum to each
call (the backward launchers run with their kernels stood in for too); ``--inference`` instead
runs every call under torch.no_grad() with the modules in eval mode, where torch.nn's modules take
their fused inference kernels. Per call, the best of ``--repeats`` runs of ``--calls`` calls (the
least disturbed by the rest of the machine).

    python -m fasttx.benchmarks.host_overhead [--calls N] [--repeats R] [--backward | --inference]
"""

import argparse
import contextlib
import functools
import importlib
import os
import time

import torch
import torch.nn.functional as F


# The modules whose kernels the launchers start.
TRITON_MODULES = ("attention_fwd", "attention_bwd", "layer_norm", "softmax")


class _NotLaunched:
    """Stands for a Triton kernel: ``kernel[grid](...)`` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def triton_kernels_not_launched():
    """Every Triton kernel of fasttx.triton_kernels replaced by _NotLaunched, so that a launcher does
    all its host work (checks, output allocation, arguments, autotuner-free grid) but starts nothing;
    TRITON_INTERPRET=1 so that the triton backend takes CPU tensors."""
    from triton.runtime.jit import KernelInterface

    interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    saved = []
    for module_name in TRITON_MODULES:
        module = importlib.import_module(f"fasttx.triton_kernels.{module_name}")
        for name, value in vars(module).items():
            if isinstance(value, KernelInterface):
                saved.append((module, name, value))
    for module, name, _ in saved:
        setattr(module, name, _NotLaunched())
    try:
        yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = interpret


def calls(inference=False):
    """{case: {provider: zero-argument call}} on tiny CPU tensors that require grad; ``inference``:
    the modules in eval mode."""
    import fasttx

    torch.manual_seed(0)
    q = torch.randn(2, 4, 8, 16, requires_grad=True)
    rows = torch.randn(16, 64, requires_grad=True)
    weight, bias = torch.randn(64, requires_grad=True), torch.randn(64, requires_grad=True)
    tokens = torch.randn(2, 8, 64)
    padding = torch.arange(8) >= torch.tensor([[8], [5]])  # (2, 8): the second sequence's last 3 tokens
    memory = torch.randn(2, 12, 64)  # cross-attention's keys and values, and their padding
    memory_padding = torch.arange(12) >= torch.tensor([[12], [7]])
    causal = torch.nn.Transformer.generate_square_subsequent_mask(8)  # (a float mask: 0 and -inf)
    torch_norms = {"LayerNorm": torch.nn.LayerNorm(64), "RMSNorm": torch.nn.RMSNorm(64), "Softmax": torch.nn.Softmax(-1)}
    fasttx_norms = {(name, b): getattr(fasttx.nn, name)(*([-1] if name == "Softmax" else [64]), backend=b)
                    for name in torch_norms for b in ("torch", "triton")}
    torch_mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    torch_layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    fasttx_mha, fasttx_layer = {}, {}
    for b in ("torch", "triton"):
        fasttx_mha[b] = fasttx.nn.MultiheadAttention(64, 4, batch_first=True, backend=b)
        fasttx_mha[b].load_state_dict(torch_mha.state_dict())
        fasttx_layer[b] = fasttx.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, backend=b)
        fasttx_layer[b].load_state_dict(torch_layer.state_dict())
    for module in (torch_mha, torch_layer, *fasttx_mha.values(), *fasttx_layer.values()):
        module.train(not inference)
    ours = {
        "attention (B, H, L, E)": lambda b: lambda: fasttx.scaled_dot_product_attention(q, q, q, backend=b),
        "layer_norm": lambda b: lambda: fasttx.layer_norm(rows, (64,), weight, bias, backend=b),
        "rms_norm": lambda b: lambda: fasttx.rms_norm(rows, (64,), weight, backend=b),
        "softmax": lambda b: lambda: fasttx.softmax(rows, -1, backend=b),
        **{f"nn.{name}": _module_call(fasttx_norms, name, rows) for name in torch_norms},
        "MultiheadAttention, self": lambda b: lambda: fasttx_mha[b](tokens, tokens, tokens, need_weights=False),
        "MultiheadAttention, self, key padding": lambda b: lambda: fasttx_mha[b](
            tokens, tokens, tokens, key_padding_mask=padding, need_weights=False),
        "MultiheadAttention, cross, key padding, weights": lambda b: lambda: fasttx_mha[b](
            tokens, memory, memory, key_padding_mask=memory_padding),
        "MultiheadAttention, self, causal mask, weights": lambda b: lambda: fasttx_mha[b](
            tokens, tokens, tokens, attn_mask=causal),
        "TransformerEncoderLayer": lambda b: lambda: fasttx_layer[b](tokens),
    }
    theirs = {
        "attention (B, H, L, E)": lambda: F.scaled_dot_product_attention(q, q, q),
        "layer_norm": lambda: F.layer_norm(rows, (64,), weight, bias),
        "rms_norm": lambda: F.rms_norm(rows, (64,), weight),
        "softmax": lambda: torch.softmax(rows, -1),
        **{f"nn.{name}": functools.partial(module, rows) for name, module in torch_norms.items()},
        "MultiheadAttention, self": lambda: torch_mha(tokens, tokens, tokens, need_weights=False),
        "MultiheadAttention, self, key padding": lambda: torch_mha(tokens, tokens, tokens, key_padding_mask=padding,
                                                                   need_weights=False),
        "MultiheadAttention, cross, key padding, weights": lambda: torch_mha(tokens, memory, memory,
                                                                            key_padding_mask=memory_padding),
        "MultiheadAttention, self, causal mask, weights": lambda: torch_mha(tokens, tokens, tokens, attn_mask=causal),
        "TransformerEncoderLayer": lambda: torch_layer(tokens),
    }
    _add_timm_attention(ours, theirs, inference)
    return {case: {"torch": theirs[case], "fasttx torch": make("torch"), "fasttx triton (not launched)": make("triton")}
            for case, make in ours.items()}


def _add_timm_attention(ours, theirs, inference):
    """timm's ViT Attention (dim 64, 4 heads, 17 tokens), stock and converted by fasttx.patch, where timm
    is installed: on the triton backend the converted forward is the GPU path's host work (its code on
    fasttx's SDPA, library_modules._forward_on_fasttx_sdpa)."""
    try:
        from timm.layers.attention import Attention
    except ImportError:
        return
    import copy

    import fasttx

    stock = Attention(64, num_heads=4).train(not inference)
    converted = {b: fasttx.patch(copy.deepcopy(stock), backend=b) for b in ("torch", "triton")}
    x = torch.randn(2, 17, 64, requires_grad=True)
    ours["timm ViT Attention"] = lambda b: functools.partial(converted[b], x)
    theirs["timm ViT Attention"] = functools.partial(stock, x)


def _module_call(modules, name, x):
    """backend -> a call of modules[name, backend] on x."""
    return lambda backend: lambda: modules[name, backend](x)


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


def _then_backward(fn):
    """fn() and the backward of its output's sum (a module's output: the first of its tuple)."""
    def step():
        out = fn()
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return step


def measure(calls_per_run=2000, repeats=5, backward=False, inference=False):
    """{case: {provider: us per call}}: per forward call, with ``backward`` per forward and backward,
    with ``inference`` per forward in eval mode under torch.no_grad()."""
    if backward and inference:
        raise ValueError("backward and inference exclude each other")
    with triton_kernels_not_launched(), torch.set_grad_enabled(not inference):
        return {case: {name: host_us(_then_backward(fn) if backward else fn, calls_per_run, repeats)
                       for name, fn in providers.items()}
                for case, providers in calls(inference).items()}


def table(results):
    providers = list(next(iter(results.values())))
    lines = [f"| case | {' | '.join(f'{p} us' for p in providers)} |", "|---" * (len(providers) + 1) + "|"]
    lines += [f"| {case} | {' | '.join(f'{row[p]:.1f}' for p in providers)} |" for case, row in results.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.benchmarks.host_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported (default 5)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--backward", action="store_true",
                      help="time the forward and the backward of its output's sum, not the forward alone")
    mode.add_argument("--inference", action="store_true",
                      help="time the forward under torch.no_grad() with the modules in eval mode")
    args = parser.parse_args(argv)
    timed = "forward + backward" if args.backward else "inference forward" if args.inference else "forward"
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; us per {timed} call, best of {args.repeats}")
    print(table(measure(args.calls, args.repeats, args.backward, args.inference)))


if __name__ == "__main__":
    main()
