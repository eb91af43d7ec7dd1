"""The CUDA attention kernels' dropout draw (csrc/attention/philox.h) is bit for bit Triton's
tl.rand, so that both backends drop the same elements for the same seed. The header is plain C++
(host and device): here it is compiled into a small host program and compared with tl.rand."""

import os
import shutil
import subprocess

import pytest
import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")

# (seed, first offset): seeds with both key words set, offsets crossing the counter's 32-bit words.
CASES = [(0, 0), (1, 12345), (2**62 - 1, 2**32 - 40), (123456789012345, 2**40 + 7), (2**33 + 5, 987654321)]
COUNT = 64

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "attention/philox.h"
int main(int argc, char** argv) {
  const unsigned long long seed = std::strtoull(argv[1], nullptr, 10);
  const unsigned long long first = std::strtoull(argv[2], nullptr, 10);
  for (int i = 0; i < std::atoi(argv[3]); ++i) std::printf("%a\n", fasttx::philox::uniform(seed, first + i));
}
"""


@triton.jit
def _rand_kernel(Out, seed, first, COUNT: tl.constexpr):
    offs = tl.arange(0, COUNT)
    tl.store(Out + offs, tl.rand(seed, first + offs))


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


@pytest.mark.parametrize("seed,first", CASES, ids=str)
def test_philox_uniform_matches_triton_rand(host_program, seed, first):
    out = subprocess.run([host_program, str(seed), str(first), str(COUNT)], capture_output=True, text=True, check=True)
    ours = torch.tensor([float.fromhex(x) for x in out.stdout.split()], dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = torch.empty(COUNT, dtype=torch.float32, device=device)
    # int64 arguments, as the attention kernels' counters are: first's high word is the counter's c1.
    _rand_kernel[(1,)](theirs, seed, first, COUNT=COUNT)
    assert torch.equal(ours, theirs.cpu()), (ours[:4], theirs[:4])
    assert 0.0 <= ours.min() and ours.max() < 1.0
