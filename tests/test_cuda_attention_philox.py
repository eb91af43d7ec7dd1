"""The attention kernels' dropout draw, checked against an independent oracle: a NumPy Philox-4x32-7
(from the Random123 definition, not from Triton's or philox.h's code; FlashAttention-2's 7 rounds, not
Random123's default 10) and the keep rule written out here. Element (b, h, i, j) is kept iff the 16-bit
value j % 8 of the words of Philox counter ((b H + h) L + i) ceil(S / 8) + j // 8 (value 2w the low half
of word w, 2w + 1 its high half) is >= the threshold min(round(p 2^16), 2^16 - 1), ties to even.
csrc/attention/philox.h (what the CUDA kernels draw and compare with) is compiled into a small host
program whose words, thresholds and keep mask (through the kernels' compare of both values of a word at
once) must be the oracle's, as must tl.randint4x's words and the Triton kernels' dropout_keep_mask (which
the emulated CUDA kernels' tests compare their keep masks with), so that both backends drop the same
elements for the same seed."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fasttx.triton_kernels.attention_common import PHILOX_ROUNDS

from .conftest import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")

# (seed, first counter): seeds with both key words set, counters crossing the counter's 32-bit words.
CASES = [(0, 0), (1, 12345), (2**62 - 1, 2**32 - 40), (123456789012345, 2**40 + 7), (2**33 + 5, 987654321)]
COUNT = 64

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "attention/philox.h"
using namespace fasttx::philox;
int main(int argc, char** argv) {
  if (std::strcmp(argv[1], "threshold") == 0) {  // threshold P...: dropout_threshold of each
    for (int i = 2; i < argc; ++i) std::printf("%u\n", dropout_threshold(std::strtod(argv[i], nullptr)));
    return 0;
  }
  const unsigned long long seed = std::strtoull(argv[2], nullptr, 10);
  if (std::strcmp(argv[1], "words") == 0) {  // words SEED FIRST COUNT: each counter's words
    const unsigned long long first = std::strtoull(argv[3], nullptr, 10);
    for (int i = 0; i < std::atoi(argv[4]); ++i) {
      const Words w = words(seed, first + i);
      for (int k = 0; k < 4; ++k) std::printf("%u\n", w.w[k]);
    }
  } else {  // keep SEED ROWS S P: the keep mask of ROWS = B H L score rows of S keys, a line each
    const long rows = std::atol(argv[3]);
    const int keys = std::atoi(argv[4]);
    const unsigned threshold = dropout_threshold(std::strtod(argv[5], nullptr));
    for (long r = 0; r < rows; ++r) {
      for (int j = 0; j < keys; ++j) {
        // The kernels' compare: both values of the word at once, value j % 8 at bit 15 + 16 (j % 2).
        const unsigned word = words(seed, dropout_counter(r, keys, j)).w[j % 8 / 2];
        std::putchar(halves_at_least(word, threshold * 0x10001u) >> (15 + 16 * (j % 2)) & 1u ? '1' : '0');
      }
      std::putchar('\n');
    }
  }
}
"""


# ---- the oracle ----------------------------------------------------------------------------------


ROUNDS = 7  # of every dropout draw (csrc/attention/philox.h kRounds, Triton's PHILOX_ROUNDS)


def philox4x32(counter, key, rounds):
    """Philox-4x32-``rounds`` (Salmon et al. 2011, Random123): the 4 output words (uint64 arrays of 32-bit
    values) of the 4 counter words (arrays or ints) under the 2 key words."""
    mask = np.uint64(0xFFFFFFFF)
    c = [np.asarray(w, dtype=np.uint64) for w in counter]
    k0, k1 = key
    for _ in range(rounds):
        p0 = np.uint64(0xD2511F53) * c[0]  # < 2^64: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
             p0 & mask]
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c


def philox_words(seed: int, counters) -> np.ndarray:
    """(len(counters), 4): the words the kernels draw for int64 counters, Philox-4x32-7 with key (seed
    low, seed high) and counter (counter low, counter high, 0, 0)."""
    counters = np.asarray(counters, dtype=np.uint64)
    zero = np.zeros_like(counters)
    words = philox4x32((counters & np.uint64(0xFFFFFFFF), counters >> np.uint64(32), zero, zero),
                       (seed & 0xFFFFFFFF, seed >> 32), ROUNDS)
    return np.stack(words, axis=-1)


def oracle_threshold(p: float) -> int:
    return min(round(p * 2**16), 2**16 - 1)


def oracle_keep(seed: int, rows: int, S: int, p: float) -> torch.Tensor:
    """The (rows, S) keep mask of the flat (B H L, S) scores."""
    j = np.arange(S, dtype=np.uint64)
    counters = np.arange(rows, dtype=np.uint64)[:, None] * np.uint64((S + 7) // 8) + j[None, :] // np.uint64(8)
    words = philox_words(seed, counters.reshape(-1)).reshape(rows, S, 4)
    word = np.take_along_axis(words, (j % np.uint64(8) // np.uint64(2)).astype(np.int64)[None, :, None], -1)[..., 0]
    value = (word >> (np.uint64(16) * (j % np.uint64(2)))[None, :]) & np.uint64(0xFFFF)
    return torch.from_numpy(value >= oracle_threshold(p))


# Random123's known-answer vectors of Philox-4x32 (its kat_vectors file): rounds -> (counter, key, words),
# for the inputs 0, all ones and pi's digits. Both round counts pin the oracle's round function and key
# schedule; 7 is what the kernels draw.
KNOWN_ANSWERS = {
    7: [((0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A))],
    10: [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
         ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
         ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
          (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))],
}


@pytest.mark.parametrize("rounds", sorted(KNOWN_ANSWERS))
def test_oracle_philox_known_answers(rounds):
    for counter, key, words in KNOWN_ANSWERS[rounds]:
        assert tuple(int(w) for w in philox4x32(counter, key, rounds)) == words, (counter, key)


# ---- philox.h and Triton against it --------------------------------------------------------------


@triton.jit
def _philox_kernel(Words, seed, first, COUNT: tl.constexpr):
    """Words[4 i + k] = word k of tl.randint4x(seed, first + i) with the attention kernels' rounds."""
    offs = tl.arange(0, COUNT)
    w0, w1, w2, w3 = tl.randint4x(seed, first + offs, PHILOX_ROUNDS)
    tl.store(Words + 4 * offs, w0)
    tl.store(Words + 4 * offs + 1, w1)
    tl.store(Words + 4 * offs + 2, w2)
    tl.store(Words + 4 * offs + 3, w3)


@pytest.fixture(scope="module")
def host_program(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    tmp = tmp_path_factory.mktemp("philox")
    (tmp / "main.cpp").write_text(PROGRAM)
    exe = tmp / "philox"
    subprocess.run([CXX, "-std=c++17", "-O2", "-I", os.path.join(ROOT, "csrc"), str(tmp / "main.cpp"), "-o", str(exe)],
                   check=True)
    return str(exe)


def _host(program, *args):
    return subprocess.run([program, *map(str, args)], capture_output=True, text=True, check=True).stdout.split("\n")


@pytest.mark.parametrize("seed,first", CASES, ids=str)
def test_philox_words_match_the_oracle(host_program, seed, first):
    ours = torch.tensor([int(w) for w in _host(host_program, "words", seed, first, COUNT) if w], dtype=torch.int64)
    oracle = torch.from_numpy(philox_words(seed, range(first, first + COUNT)).reshape(-1).astype(np.int64))
    triton_words = torch.empty(4 * COUNT, dtype=torch.int32, device=DEVICE)
    # int64 arguments, as the attention kernels' counters are: first's high word is the counter's c1.
    _philox_kernel[(1,)](triton_words, seed, first, COUNT=COUNT)
    assert torch.equal(ours, oracle), (ours[:4], oracle[:4])
    assert torch.equal(triton_words.cpu().to(torch.int64) & 0xFFFFFFFF, oracle), (triton_words[:4], oracle[:4])


# Ties (k + 1/2) / 2^16 round to even; the largest p clamp to 2^16 - 1.
THRESHOLD_PS = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.9, 2**-18, 2**-17, 3 * 2**-17, 5 * 2**-17, 0.5 - 2**-17,
                1 - 2**-16, 1 - 3 * 2**-17, 1 - 2**-17, 1 - 2**-18, 1 - 2**-40]


def test_thresholds_match_the_oracle(host_program):
    from fasttx.triton_kernels.attention_common import dropout_threshold

    oracle = [oracle_threshold(p) for p in THRESHOLD_PS]
    assert [int(t) for t in _host(host_program, "threshold", *map(repr, THRESHOLD_PS)) if t] == oracle
    assert [dropout_threshold(p) for p in THRESHOLD_PS] == oracle
    assert oracle[8:11] == [0, 2, 2] and oracle[-3:] == [65535] * 3  # ties to even; the clamp


# (B, H, L, S): S not a multiple of 8 (a row's last group is partial), one query, several heads.
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 2, 1, 5), (2, 1, 3, 130), (1, 3, 1, 131), (1, 1, 33, 64),
                                   (1, 1, 17, 200)], ids=str)
# Thresholds 19661, 32768, 58982, 0, 65535: the top bit of t clear and set, every value kept, all but 65535
# dropped (philox::halves_at_least compares by t's top bit and its low 15 bits).
@pytest.mark.parametrize("p", [0.3, 0.5 + 2**-17, 0.9, 2**-18, 1 - 2**-18])
def test_keep_mask_is_the_specified_draw(host_program, shape, p):
    from fasttx.triton_kernels.attention import dropout_keep_mask

    B, H, L, S = shape
    seed = 2**40 + 2**33 + 12345
    oracle = oracle_keep(seed, B * H * L, S, p)
    lines = _host(host_program, "keep", seed, B * H * L, S, repr(p))[:B * H * L]
    ours = torch.tensor([[c == "1" for c in line] for line in lines], dtype=torch.bool).reshape(B * H * L, S)
    assert torch.equal(ours, oracle)
    assert torch.equal(dropout_keep_mask(seed, B, H, L, S, p, DEVICE).cpu().reshape(B * H * L, S), oracle)
