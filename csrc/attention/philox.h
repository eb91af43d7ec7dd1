#pragma once
// Dropout draws bit-identical to Triton's tl.rand(seed, offset) for an int64 offset (Triton 3.x,
// triton/language/random.py): Philox-4x32-10 with key (seed low word, seed high word) and counter
// (offset low word, offset high word, 0, 0); the first output word, read as int32 and folded onto
// [0, 2^31) by x < 0 ? ~x : x, times 4.6566127342e-10f. Forward and backward of the CUDA and Triton
// attention kernels then drop the same elements for the same seed.
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

// The first of the four output words of Philox-4x32-10 for the counter (lo, hi, 0, 0).
FASTTX_HOST_DEVICE uint32_t first_word(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
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
  return c0;
}

// tl.rand: uniform in [0, 1).
FASTTX_HOST_DEVICE float uniform(uint64_t seed, uint64_t offset) {
  const int32_t x = static_cast<int32_t>(first_word(seed, offset));
  return static_cast<float>(x < 0 ? ~x : x) * 4.6566127342e-10f;
}

}  // namespace philox
}  // namespace fasttx
