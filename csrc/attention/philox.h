#pragma once
// Dropout draws bit-identical to Triton's (Triton 3.6 to 3.8, triton/language/random.py).
//
// words(seed, counter) is tl.randint4x(seed, counter, n_rounds=7) for an int64 counter: Philox-4x32-7
// with key (seed low word, seed high word) and counter (counter low word, counter high word, 0, 0), its
// four output words in tl.randint4x's order.
//
// Seven rounds, not Random123's default ten: Philox-4x32-7 passes TestU01's BigCrush (Salmon et al.
// 2011, whose ten are a safety margin over that), and FlashAttention-2 (so torch's flash SDPA) draws its
// dropout with seven. The three rounds saved are ~12 of the ~76 instructions a draw costs in the sm_90a
// forward (benchmarks/notes/attention.md, "Dropout: seven Philox rounds").
//
// The attention kernels keep element (b, h, i, j) of the (B, H, L, S) scores iff the 16-bit value m of
// words(seed, dropout_counter((b H + h) L + i, S, j)), m = j % 8, is >= dropout_threshold(p), value m
// being the low 16 bits of word m / 2 for even m, its high 16 bits for odd m (the call's 128 bits
// read as eight little-endian 16-bit values). One Philox call serves the 8 consecutive keys 8k ..
// 8k + 7 of a row: an eighth of the Philox work of one call per score (Triton's dropout_keep in
// triton_kernels/attention_common.py; keep_group and keep_bits_* in attention_common.cuh).
// The kept elements are scaled by 1 / (1 - p) as torch's dropout does: the drop probability the
// threshold gives, dropout_threshold(p) / 2^16, is within 2^-17 of p (far below the sampling noise of
// any tensor dropout is used on), but for p > 1 - 2^-17, clamped to 1 - 2^-16.
//
// Plain C++ callable from host and device, so that a host program can check it against Triton and an
// independent NumPy Philox (tests/test_cuda_attention_philox.py).

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTTX_HOST_DEVICE __host__ __device__ __forceinline__
#define FASTTX_PHILOX_UNROLL _Pragma("unroll")
#else
#define FASTTX_HOST_DEVICE inline
#define FASTTX_PHILOX_UNROLL  // host compilers (the binding's dropout_threshold, the test) warn on nvcc's pragma
#endif

namespace fasttx {
namespace philox {

// a b, 64 bits. On the device one mul.wide.u32, whose two words ptxas takes from the one IMAD.WIDE.U32:
// written in C++, nvcc rewrote Philox's rounds into 64-bit arithmetic (masks, 64-bit multiplies and
// XORs), and a mul.hi.u32 beside a mul.lo.u32 of the same operands cost an IMAD.WIDE and an IMAD.
FASTTX_HOST_DEVICE uint64_t mul_wide(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  uint64_t p;
  asm("mul.wide.u32 %0, %1, %2;" : "=l"(p) : "r"(a), "r"(b));
  return p;
#else
  return static_cast<uint64_t>(a) * b;
#endif
}

// Rounds of every draw; triton_kernels/attention_common.py PHILOX_ROUNDS is the same number (the
// oracle of tests/test_cuda_attention_philox.py checks both).
constexpr int kRounds = 7;

struct Words {
  uint32_t w[4];
};

// The four output words of Philox-4x32-7 for the counter (lo, hi, 0, 0): tl.randint4x(..., n_rounds=7).
FASTTX_HOST_DEVICE Words words(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  FASTTX_PHILOX_UNROLL
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t p0 = mul_wide(0xD2511F53u, c0), p2 = mul_wide(0xCD9E8D57u, c2);
    c0 = static_cast<uint32_t>(p2 >> 32) ^ c1 ^ k0;
    c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p2);
    c3 = static_cast<uint32_t>(p0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Words{{c0, c1, c2, c3}};
}

// Bits 15 and 31: whether the low and the high 16-bit value of `word` are >= the threshold t (< 2^16),
// given as t2 = t 0x10001 (t in both halves), both at once and without a predicate (the kernels'
// compare, attention_common.cuh keep_group); the other bits are junk. With t', v' the low 15 bits of
// t and of a value v, (v | 2^15) - t' stays within v's 16 bits and has bit 15 set iff v' >= t';
// v >= t iff v's bit 15 is set and t's clear, or they are equal and v' >= t'.
FASTTX_HOST_DEVICE uint32_t halves_at_least(uint32_t word, uint32_t t2) {
  const uint32_t low = (word | 0x80008000u) - (t2 & 0x7FFF7FFFu);
  return (word & ~t2) | (~(word ^ t2) & low);
}

// The groups of 8 keys of a score row with `keys` (S) keys: ceil(S / 8), the Philox counters a row takes.
FASTTX_HOST_DEVICE uint64_t dropout_row_groups(int keys) { return static_cast<uint64_t>((keys + 7) / 8); }

// The Philox counter of key j of score row `row` (= (b H + h) L + i) with `keys` (S) keys a row: the
// row's groups of 8 keys are counted after those of the rows before it.
FASTTX_HOST_DEVICE uint64_t dropout_counter(uint64_t row, int keys, int j) {
  return row * dropout_row_groups(keys) + static_cast<uint64_t>(j / 8);
}

// The drop threshold of dropout probability p in [0, 1), computed once on the host (the binding; the
// Triton launchers' dropout_threshold computes the same from the same double): p 2^16 (exact in double)
// rounded to the nearest integer, ties to even (nearbyint in the default rounding mode, Python's
// round), at most 2^16 - 1 so that the kernels may compare it with both 16-bit halves of a word at once
// (attention_common.cuh keep_group; Triton's dropout_keep shifts it into a word's high half).
inline uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::fmin(std::nearbyint(p * 65536.0), 65535.0));
}

}  // namespace philox
}  // namespace fasttx
