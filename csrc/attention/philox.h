#pragma once
// Dropout draws bit-identical to Triton's (Triton 3.6 to 3.8, triton/language/random.py).
//
// words(seed, counter) is tl.randint4x(seed, counter) for an int64 counter: Philox-4x32-10 with key
// (seed low word, seed high word) and counter (counter low word, counter high word, 0, 0), its four
// output words in tl.randint4x's order. uniform(word) is tl.rand's conversion of one word: read as
// int32, folded onto [0, 2^31) by x < 0 ? ~x : x, times 4.6566127342e-10f.
//
// The attention kernels keep element (b, h, i, j) of the (B, H, L, S) scores iff
// uniform(words(seed, dropout_counter((b H + h) L + i, S, j))[j % 4]) >= p: one Philox call serves
// the 4 consecutive keys 4k .. 4k + 3 of a row, a quarter of the Philox work of one call per score
// (triton_kernels/attention_common.py dropout_keep; csrc/attention/attention_common.cuh keep_bits_*).
//
// Plain C++ callable from host and device, so that a host program can check it against Triton
// (tests/test_cuda_attention_philox.py).

#include <cstdint>

#if defined(__CUDACC__)
#define FASTTX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTTX_HOST_DEVICE inline
#endif

namespace fasttx {
namespace philox {

FASTTX_HOST_DEVICE uint32_t mulhi(uint32_t a, uint32_t b) {
  // nvcc lowers this to one mul.hi.u32.
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

struct Words {
  uint32_t w[4];
};

// The four output words of Philox-4x32-10 for the counter (lo, hi, 0, 0): tl.randint4x.
FASTTX_HOST_DEVICE Words words(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = mulhi(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Words{{c0, c1, c2, c3}};
}

// tl.rand's conversion of one word: uniform in [0, 1).
FASTTX_HOST_DEVICE float uniform(uint32_t word) {
  const int32_t x = static_cast<int32_t>(word);
  return static_cast<float>(x < 0 ? ~x : x) * 4.6566127342e-10f;
}

// The Philox counter of key j of score row `row` (= (b H + h) L + i) with `keys` (S) keys a row: the
// row's groups of 4 keys are counted after those of the rows before it, ceil(S / 4) a row.
FASTTX_HOST_DEVICE uint64_t dropout_counter(uint64_t row, int keys, int j) {
  return row * static_cast<uint64_t>((keys + 3) / 4) + static_cast<uint64_t>(j / 4);
}

}  // namespace philox
}  // namespace fasttx
