"""Padded batches through a TransformerEncoder in inference: torch.nn's stack against fasttx.patch's copy.

In eval mode without grad, with a left-aligned key-padding mask, torch.nn.TransformerEncoder runs its
layers on nested tensors (the real tokens only); fasttx's packs the real tokens into rows instead
(fasttx/nn/transformer.py, _packed_forward), or on small CPU inputs runs the padded batch through
the layers (torch's fused kernel per layer). Both write 0 at padded positions, so the outputs are
compared whole. Sequence b of a batch of N keeps L * (1 - 2 p (b + 1) / (N + 1)) tokens (rounded, at least 1),
p the padding preset: on average a fraction ~p of the batch is padding.

Useful work, the FLOP formula (per layer, T real tokens, lengths l_b, width E, feed-forward F):
    2 T (4 E^2 + 2 E F)  (projections and feed-forward)  +  4 E sum_b l_b^2  (QK^T and PV)
GFLOP/s is that over the measured time, for both providers. Time: the median of ``--rounds`` rounds,
each timing both providers in turn (the machine's load drifts; interleaving shares the drift).

    python -m fasttx.benchmarks.encoder_inference [--preset quick|cpu] [--device cpu|cuda] [--rounds R]
"""

import argparse
import copy
import statistics
import warnings

import torch

from .._patch import patch
from .common import VERSUS_TORCH_NN_HEADER, interleaved_ms, versus_torch_nn, versus_torch_nn_cells

# (d_model, heads, layers, batch, seq, padding fraction)
PRESETS = {
    "quick": [(32, 2, 2, 2, 8, 0.5)],
    "cpu": [(256, 8, 2, batch, seq, pad) for batch, seq in ((8, 64), (8, 128), (8, 256), (4, 512))
            for pad in (0.0, 0.25, 0.5)] + [(512, 8, 2, 8, 256, pad) for pad in (0.0, 0.5)],
}


def lengths(batch, seq, pad):
    return [max(1, round(seq * (1 - 2 * pad * (b + 1) / (batch + 1)))) for b in range(batch)]


def flops(width, layers, lengths_):
    tokens = sum(lengths_)
    return layers * (2 * tokens * (4 * width**2 + 2 * width * 4 * width) + 4 * width * sum(n * n for n in lengths_))


def run(preset="cpu", device="cpu", rounds=5):
    """One row per case: shape, real tokens, each provider's ms and GFLOP/s, speed-up, max |difference|."""
    rows = []
    for width, heads, layers, batch, seq, pad in PRESETS[preset]:
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                                 device=device)
        theirs = torch.nn.TransformerEncoder(layer, layers).eval()
        ours = patch(copy.deepcopy(theirs))
        x = torch.randn(batch, seq, width, device=device)
        kept = lengths(batch, seq, pad)
        padding = torch.arange(seq, device=device)[None, :] >= torch.tensor(kept, device=device)[:, None]
        providers = {"torch.nn": lambda: theirs(x, src_key_padding_mask=padding),
                     "fasttx": lambda: ours(x, src_key_padding_mask=padding)}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "nested tensors are a prototype" warning
            difference = (providers["torch.nn"]() - providers["fasttx"]()).abs().max().item()
            ms = interleaved_ms(providers, device, rounds, statistics.median, seconds=0.2)
        work = flops(width, layers, kept)
        rows.append(versus_torch_nn(ms, work, difference, d_model=width, heads=heads, layers=layers, batch=batch,
                                    seq=seq, real=sum(kept) / (batch * seq)))
    return rows


def table(rows):
    lines = ["| d_model, layers | batch x seq | real tokens " + VERSUS_TORCH_NN_HEADER, "|---" * 9 + "|"]
    lines += [f"| {r['d_model']}, {r['layers']} | {r['batch']} x {r['seq']} | {r['real']:.0%} "
              + versus_torch_nn_cells(r, 2) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.benchmarks.encoder_inference",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; inference forward of "
          f"a padded batch, median of {args.rounds} rounds")
    print(table(run(args.preset, args.device, args.rounds)))


if __name__ == "__main__":
    main()
