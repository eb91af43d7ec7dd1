"""The program ``make gpu-check`` runs under compute-sanitizer (memcheck, racecheck, synccheck): every
CUDA C++ kernel (torch.ops.fasttx.*_cuda), forward and backward, once per layout branch, on small
shapes (the tools slow kernels down by 10-100x).

Branches, from csrc/:
- norms (layer_norm/layer_norm_layout.cuh): the forward caches 32 values per thread in a row group of 1
  to 8 warps: one warp per row (4 rows per block) up to N = 1024, 2, 4 and 8 warps up to 2048, 4096
  and 8192; the backward 16 in 1 to 16 warps: one warp up to 512, 2 (2 rows per block), 4, 8 and 16
  up to 1024, 2048, 4096 and 8192 (persistent, the next row prefetched); both walk rows in
  8192-element chunks beyond (re-read for the second pass), except vector-aligned rows on sm_90, split
  over a cluster of 2-3 blocks in both directions (distributed shared memory; the backward's clusters
  persistent: two clusters walking the 5 rows; also run with the split off);
  with and without weight / bias; 16-bit (8-element vectors) and fp32 (4-element) input.
- softmax (softmax/softmax_layout.cuh): 32 cached values per thread, 1 thread per row up to C = 32,
  then sub-warp groups (2-16 threads), a warp at C <= 1024, multi-warp groups up to 512 threads at
  C <= 16384, and beyond, on sm_90, each row split over a cluster of 2-3 blocks (distributed shared
  memory), else the online (chunked) pass, also run on sm_90 with the split off; bool and float
  masks, causal.
- attention (attention/): one kernel per head dim 32, 64, 96, 128, 256 and direction; causal,
  bool and float masks, dropout, grouped-query heads, L != S and lengths that leave partial tiles;
  and the sm_90a forward, dK/dV and dQ kernels (attention/sm90, switched on for their cases: head dim
  128, no mask (the 176-key tile, its 2-stage ring refilled), GQA, causal with L < S leaving key blocks
  no query sees; a bool mask with GQA; a float
  mask with dropout; the other tiles at head dims 64, 96 and 256, forward and backward, at 256 a
  causal bool-mask case and a causal GQA dropout case; the opt-in atomic dQ at 128 and 96; on other
  devices these run the sm_80 kernels).

    python -m fasttx.cli.gpu_sanitize [--backend cuda] [--only SUBSTRING]

Prints one line per case and exits 1 if any case fails its float64 check or raises. ``--backend
torch`` runs the same cases on CPU (how the CPU test keeps this program from rotting).
"""

import argparse
import sys
import time

import torch

from .._attention_kernels import HEAD_DIMS
from . import gpu_cases

NORM_HIDDEN = (1, 100, 1024, 1025, 4096, 8192, 8193, 20000)
SOFTMAX_COLS = (7, 33, 300, 1024, 2000, 16384, 16385, 40000)


def cases():
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    norm, soft, att = gpu_cases.norm_case, gpu_cases.softmax_case, gpu_cases.attention_case
    selected = [norm("layer_norm", 5, n, bf16) for n in NORM_HIDDEN]
    selected += [norm("rms_norm", 5, n, fp32) for n in NORM_HIDDEN]
    selected += [norm("layer_norm", 5, 1000, fp16, weight=False), norm("rms_norm", 3, 9000, fp16, weight=False),
                 norm("layer_norm", 6, 3000, fp32, bias=False), norm("layer_norm", 3, 20000, bf16, clusters=False)]
    selected += [soft(5, c, bf16) for c in SOFTMAX_COLS]
    selected += [soft(5, 300, fp16, mask="bool", is_causal=True), soft(5, 16385, bf16, mask="bool", is_causal=True),
                 soft(5, 1024, fp32, mask="float"), soft(3, 40000, fp32, mask="float"), soft(4, 2000, fp32),
                 soft(3, 40000, bf16, mask="bool", is_causal=True, clusters=False)]
    for dim in HEAD_DIMS:
        selected += [att(1, 2, 130, 130, dim, bf16, is_causal=True), att(2, 2, 70, 150, dim, fp16, mask="float"),
                     att(1, 4, 150, 70, dim, bf16, mask="bool", kv_heads=2),
                     att(1, 2, 97, 97, dim, fp16, is_causal=True, dropout_p=0.25)]
    selected += [att(1, 2, 130, 400, 128, bf16, sm90=True),
                 att(2, 4, 200, 200, 128, fp16, is_causal=True, kv_heads=2, sm90=True),
                 att(1, 4, 70, 300, 128, bf16, is_causal=True, kv_heads=1, sm90=True),
                 att(2, 4, 150, 200, 128, fp16, mask="bool", kv_heads=2, sm90=True),
                 att(1, 4, 100, 200, 128, bf16, mask="float", kv_heads=2, dropout_p=0.2, sm90=True)]
    # the sm_90a forward's other tiles (attention_fwd_sm90.cuh, Sm90Fwd): E = 64 and 96 (128 x 128, 96
    # a half-filled column block), 256 (128 x 80, 2 stages); their backward runs the sm_90a dK/dV and dQ
    # kernels (E = 256: dK/dV in two passes, the dK pass with one stage; dQ 64 rows a CTA), causal with
    # dropout at E = 256 too (its forward: sm_80's)
    selected += [att(1, 2, 150, 210, 64, fp16, is_causal=True, sm90=True),
                 att(2, 2, 100, 170, 96, bf16, mask="bool", kv_heads=1, sm90=True),
                 att(1, 2, 130, 170, 256, bf16, mask="float", dropout_p=0.2, sm90=True),
                 att(2, 2, 150, 200, 256, fp16, mask="bool", is_causal=True, sm90=True),
                 att(1, 4, 130, 200, 256, bf16, is_causal=True, kv_heads=2, dropout_p=0.2, sm90=True)]
    # the opt-in atomic dQ (deterministic=False: the dK/dV kernel's kKVAtomicQ instance, its dS^T and
    # dQ halves passed through shared memory, no dQ kernel), at E = 128 (dQ's product after dV's and
    # dK's) and 96
    selected += [att(2, 4, 150, 300, 128, bf16, is_causal=True, kv_heads=2, sm90=True, deterministic=False),
                 att(1, 2, 100, 170, 96, fp16, mask="bool", dropout_p=0.2, sm90=True, deterministic=False)]
    return selected


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.cli.gpu_sanitize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda", help="fasttx backend to launch (default cuda)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    from ..testing import TOLERANCE

    device = "cuda" if args.backend == "cuda" or torch.cuda.is_available() else "cpu"
    failures = 0
    for case in cases():
        if args.only not in case.name:
            continue
        begin = time.perf_counter()
        try:
            run, expected = gpu_cases.prepare(case, device)
            got = run(args.backend)
            if device == "cuda":
                torch.cuda.synchronize()
            err = gpu_cases.max_error(got, expected) if case.checked else None
            ok = err is None or err <= TOLERANCE[case.dtype]
            verdict = "ok" if ok else "FAIL"
            detail = "ran (dropout: not compared)" if err is None else f"max rel err {err:.2e}"
        except Exception as e:  # report and go on: the sanitizer's report says more
            ok, verdict, detail = False, "ERROR", f"{type(e).__name__}: {e}"[:300]
        failures += not ok
        print(f"{verdict:5} {case.name}: {detail} ({time.perf_counter() - begin:.2f} s)", flush=True)
    print(f"gpu_sanitize: {failures} case(s) failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
