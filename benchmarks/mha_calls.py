"""MultiheadAttention called as torch.nn's users call it: fasttx.patch's copy against torch.nn's module.

Each case is one call of ``MultiheadAttention(E, H)`` with the weights returned (``need_weights=True``,
torch.nn's default, unless the case says otherwise) and a mask: self- or cross-attention (S keys for L
queries), batch_first or seq-first, a key-padding mask (N, S) (sequence b keeps S/2 .. S keys), a
float causal attn_mask (L, L) or a bool per-head one (N * H, L, S). Training: the forward and the
backward of the output's sum; inference: the forward under torch.no_grad() in eval mode. Both modules
hold the same parameters, and the outputs are compared.

Useful work, the FLOP formula (matrix products only, batch N, L queries, S keys, width E), forward:
    2 N E^2 (2 L + 2 S)  (projections: q and output from L tokens, k and v from S)  +  4 N L S E  (QK^T, PV)
and twice that for the backward. GFLOP/s is that over the measured time, for both modules. Time: the
best of ``--rounds`` rounds, each timing both modules in turn over ~0.1 s (small calls are host-bound:
the best round is the least disturbed by the rest of the machine; interleaving shares its drift).

    python -m fasttx.benchmarks.mha_calls [--preset quick|cpu] [--device cpu|cuda] [--rounds R]
"""

import argparse
import copy

import torch

from .._patch import patch
from .common import VERSUS_TORCH_NN_HEADER, interleaved_ms, versus_torch_nn, versus_torch_nn_cells

# (name, d_model, heads, batch, queries, keys, mask, batch_first)
CASES = [
    ("cross, key padding", 64, 4, 4, 16, 32, "key padding", True),
    ("cross, key padding, seq-first", 64, 4, 4, 16, 32, "key padding", False),
    ("cross, per-head bool mask", 64, 4, 4, 16, 32, "per head", True),
    ("self, causal float mask", 64, 4, 4, 16, 16, "causal", True),
    ("self, key padding", 64, 4, 4, 16, 16, "key padding", True),
    ("cross, key padding", 256, 8, 8, 64, 96, "key padding", True),
    ("self, causal float mask", 256, 8, 8, 64, 64, "causal", True),
]
PRESETS = {"quick": CASES[:1], "cpu": CASES}


def flops(batch, queries, keys, width):
    return 2 * batch * width**2 * (2 * queries + 2 * keys) + 4 * batch * queries * keys * width


def _inputs(batch, queries, keys, width, heads, mask, batch_first, self_attention, device):
    def tokens(count):
        return torch.randn((batch, count, width) if batch_first else (count, batch, width), device=device)

    query = tokens(queries)
    memory = query if self_attention else tokens(keys)
    if mask == "key padding":
        masks = {"key_padding_mask": torch.arange(keys, device=device) >= torch.randint(
            keys // 2, keys + 1, (batch, 1), device=device)}
    elif mask == "causal":
        masks = {"attn_mask": torch.nn.Transformer.generate_square_subsequent_mask(queries, device=device)}
    else:
        per_head = torch.rand(batch * heads, queries, keys, device=device) < 0.3
        per_head[..., 0] = False  # (no row without a key: torch.nn gives it NaN)
        masks = {"attn_mask": per_head}
    return query, memory, masks


def run(preset="cpu", device="cpu", rounds=15):
    """One row per case and mode: each module's ms and GFLOP/s, speed-up, max |difference| of the outputs."""
    rows = []
    for name, width, heads, batch, queries, keys, mask, batch_first in PRESETS[preset]:
        torch.manual_seed(0)
        theirs = torch.nn.MultiheadAttention(width, heads, batch_first=batch_first, device=device)
        ours = patch(copy.deepcopy(theirs))
        query, memory, masks = _inputs(batch, queries, keys, width, heads, mask, batch_first,
                                       name.startswith("self"), device)
        for mode in ("train", "inference"):
            for module in (theirs, ours):
                module.train(mode == "train")

            def call(module):
                if mode == "train":
                    module(query, memory, memory, **masks)[0].sum().backward()
                    return None
                with torch.no_grad():
                    return module(query, memory, memory, **masks)[0]

            providers = {"torch.nn": lambda: call(theirs), "fasttx": lambda: call(ours)}
            with torch.no_grad():
                difference = (theirs(query, memory, memory, **masks)[0]
                              - ours(query, memory, memory, **masks)[0]).abs().max().item()
            best = interleaved_ms(providers, device, rounds, min, seconds=0.1)
            work = flops(batch, queries, keys, width) * (3 if mode == "train" else 1)
            rows.append(versus_torch_nn(best, work, difference, case=name, d_model=width, heads=heads, batch=batch,
                                        queries=queries, keys=keys, batch_first=batch_first, mode=mode))
    return rows


def table(rows):
    lines = ["| case | d_model, heads | N x L x S | mode " + VERSUS_TORCH_NN_HEADER, "|---" * 10 + "|"]
    lines += [f"| {r['case']} | {r['d_model']}, {r['heads']} | {r['batch']} x {r['queries']} x {r['keys']} | {r['mode']} "
              + versus_torch_nn_cells(r, 3) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.benchmarks.mha_calls", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; the best is reported (default 15)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; MultiheadAttention calls "
          f"with the weights, best of {args.rounds} interleaved rounds")
    print(table(run(args.preset, args.device, args.rounds)))


if __name__ == "__main__":
    main()
