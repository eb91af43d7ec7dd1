"""The CUDA attention kernels' dropout draw (csrc/attention/philox.h) is bit for bit Triton's, so that
both backends drop the same elements for the same seed. The header is plain C++ (host and device):
here it is compiled into a small host program and its four Philox words and their uniforms compared
with tl.randint4x and tl.rand4x; and the keep mask it forms on the host from the specification
(element (b, h, i, j) kept iff word j % 4 of Philox counter ((b H + h) L + i) ceil(S / 4) + j // 4, as
a uniform, is >= p) with the Triton kernels' dropout_keep_mask."""

import os
import shutil
import subprocess

import pytest
import torch
import triton
import triton.language as tl

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
  const unsigned long long seed = std::strtoull(argv[2], nullptr, 10);
  if (std::strcmp(argv[1], "words") == 0) {  // words SEED FIRST COUNT: each counter's words, uniforms
    const unsigned long long first = std::strtoull(argv[3], nullptr, 10);
    for (int i = 0; i < std::atoi(argv[4]); ++i) {
      const Words w = words(seed, first + i);
      for (int k = 0; k < 4; ++k) std::printf("%u %a\n", w.w[k], uniform(w.w[k]));
    }
  } else {  // keep SEED ROWS S P: the keep mask of ROWS = B H L score rows of S keys, a line each
    const long rows = std::atol(argv[3]);
    const int keys = std::atoi(argv[4]);
    const float p = std::strtof(argv[5], nullptr);
    for (long r = 0; r < rows; ++r) {
      for (int j = 0; j < keys; ++j) {
        std::putchar(uniform(words(seed, dropout_counter(r, keys, j)).w[j % 4]) >= p ? '1' : '0');
      }
      std::putchar('\n');
    }
  }
}
"""


@triton.jit
def _philox_kernel(Words, Uniforms, seed, first, COUNT: tl.constexpr):
    """Words[4 i + k] = word k of tl.randint4x(seed, first + i), Uniforms the same of tl.rand4x."""
    offs = tl.arange(0, COUNT)
    w0, w1, w2, w3 = tl.randint4x(seed, first + offs)
    u0, u1, u2, u3 = tl.rand4x(seed, first + offs)
    tl.store(Words + 4 * offs, w0)
    tl.store(Words + 4 * offs + 1, w1)
    tl.store(Words + 4 * offs + 2, w2)
    tl.store(Words + 4 * offs + 3, w3)
    tl.store(Uniforms + 4 * offs, u0)
    tl.store(Uniforms + 4 * offs + 1, u1)
    tl.store(Uniforms + 4 * offs + 2, u2)
    tl.store(Uniforms + 4 * offs + 3, u3)


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
def test_philox_words_match_triton_randint4x(host_program, seed, first):
    lines = [x.split() for x in _host(host_program, "words", seed, first, COUNT) if x]
    words = torch.tensor([int(w) for w, _ in lines], dtype=torch.int64)
    uniforms = torch.tensor([float.fromhex(u) for _, u in lines], dtype=torch.float32)
    theirs_w = torch.empty(4 * COUNT, dtype=torch.int32, device=DEVICE)
    theirs_u = torch.empty(4 * COUNT, dtype=torch.float32, device=DEVICE)
    # int64 arguments, as the attention kernels' counters are: first's high word is the counter's c1.
    _philox_kernel[(1,)](theirs_w, theirs_u, seed, first, COUNT=COUNT)
    assert torch.equal(words, theirs_w.cpu().to(torch.int64) & 0xFFFFFFFF), (words[:4], theirs_w[:4])
    assert torch.equal(uniforms, theirs_u.cpu()), (uniforms[:4], theirs_u[:4])
    assert 0.0 <= uniforms.min() and uniforms.max() < 1.0


# (B, H, L, S): S not a multiple of 4 (a row's last group is partial), one query, several heads.
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 2, 1, 5), (2, 1, 3, 130), (1, 3, 1, 130), (1, 1, 33, 64)],
                         ids=str)
def test_keep_mask_is_the_specified_draw(host_program, shape):
    from fasttx.triton_kernels.attention import dropout_keep_mask

    B, H, L, S = shape
    seed, p = 2**40 + 2**33 + 12345, 0.3
    lines = _host(host_program, "keep", seed, B * H * L, S, p)[:B * H * L]
    ours = torch.tensor([[c == "1" for c in line] for line in lines], dtype=torch.bool).reshape(B, H, L, S)
    assert torch.equal(ours, dropout_keep_mask(seed, B, H, L, S, p, DEVICE).cpu())
