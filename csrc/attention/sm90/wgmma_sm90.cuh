#pragma once
// The wgmma wrappers of primitives_sm90.cuh chosen by their N at compile time, so that a kernel templated
// on the head dim names one function. Its own header, apart from primitives_sm90.cuh, because the host
// emulator replaces that file (tests/attention_emulator) and compiles this one as it is.

#include <cstdint>

#include "attention/sm90/primitives_sm90.cuh"

namespace fasttx {
namespace attn {

// The m64nNk16 wgmma of a tile width N under one name, for kernels whose N follows the head dim (the
// forward's S = Q K^T: kBlockN; the register-A products of sm90_accumulate; the MN-major products of
// sm90_accumulate_mn).
template <typename T, int N, bool kMnMajor = false>
__device__ __forceinline__ void sm90_wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (N == 128) {
    wgmma_m64n128k16_ss<T, kMnMajor>(d, desc_a, desc_b, accumulate);
  } else if constexpr (N == 96) {
    wgmma_m64n96k16_ss<T, kMnMajor>(d, desc_a, desc_b, accumulate);
  } else if constexpr (N == 64) {
    wgmma_m64n64k16_ss<T, kMnMajor>(d, desc_a, desc_b, accumulate);
  } else if constexpr (N == 176) {
    static_assert(!kMnMajor, "no MN-major wgmma.m64n176k16 wrapper");
    wgmma_m64n176k16_ss<T>(d, desc_a, desc_b, accumulate);
  } else {
    static_assert(N == 80 && !kMnMajor, "no wgmma.m64nNk16 shared/shared wrapper for this N");
    wgmma_m64n80k16_ss<T>(d, desc_a, desc_b, accumulate);
  }
}
template <typename T, int N>
__device__ __forceinline__ void sm90_wgmma_rs_tn(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (N == 128) {
    wgmma_m64n128k16_rs_tn<T>(d, a, desc_b);
  } else if constexpr (N == 96) {
    wgmma_m64n96k16_rs_tn<T>(d, a, desc_b);
  } else {
    static_assert(N == 64, "no wgmma.m64nNk16 register/shared wrapper for this N");
    wgmma_m64n64k16_rs_tn<T>(d, a, desc_b);
  }
}

// d (64 x kE) += A B issued (neither fenced nor committed), A (64 x 16 kSteps) from registers, one
// fragment a k16 step, B the first 16 kSteps rows of a tile of kRows rows x kE columns, read N-major:
// k16 step kk's rows 16 kk .. start 2 atoms (16 rows) further each step, the column blocks LBO apart.
// One wgmma covers kN = min(kE, 128) columns; d's columns 128 c .. (E = 256: c = 0, 1) are d[64 c ..],
// the D layout's column tiles 16 c .., and column block 2 c of the tile. The forward's O += P V
// (kRows = kBlockN keys), the backward's dV += P^T dO, dK += dS^T Q (kRows = 64 queries) and
// dQ += dS K (kRows = 64 keys).
template <typename T, int kE, int kRows, int kSteps>
__device__ __forceinline__ void sm90_accumulate(float (&d)[kE / 2], const uint32_t (&a)[kSteps][4], uint32_t tile) {
  constexpr int kN = kE < 128 ? kE : 128;
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
#pragma unroll
    for (int c = 0; c < kE / kN; ++c) {
      const uint32_t b = tile + kk * 2 * kSwizzleAtomBytes + c * (kN / kSwizzleCols) * kRows * kSwizzleBytes;
      sm90_wgmma_rs_tn<T, kN>(*reinterpret_cast<float(*)[kN / 2]>(d + c * kN / 2), a[kk],
                              smem_desc_128b(b, kRows * kSwizzleBytes, kSwizzleAtomBytes));
    }
  }
}

// d (64 x kE) = A B issued (neither fenced nor committed), both from shared memory MN-major, over 16
// kSteps of K: A (64 x 16 kSteps) stored transposed at `a_rows`, row k holding A's column k (64 16-bit
// values, one swizzled row), B 16 kSteps rows of kE columns at `b_rows`, inside a tile of kTileRows
// rows whose column blocks lie kTileRows rows apart (read as sm90_accumulate reads its B). k16 step kk
// starts 2 atoms further in both. One wgmma covers kE <= 128. The atomic-dQ backward's dQ = dS K: A =
// dS from a consumer's stored dS^T rows, B = its rows of the K tile (kTileRows = 128 keys).
template <typename T, int kE, int kTileRows, int kSteps>
__device__ __forceinline__ void sm90_accumulate_mn(float (&d)[kE / 2], uint32_t a_rows, uint32_t b_rows) {
  static_assert(kE <= 128, "one MN-major wgmma per k16 step: N = kE <= 128");
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    const uint32_t step = kk * 2 * kSwizzleAtomBytes;
    // A's M is 64, one swizzled row: its LBO (the next 64 of M) is never used.
    sm90_wgmma_ss<T, kE, true>(d, smem_desc_128b(a_rows + step, kTileRows * kSwizzleBytes, kSwizzleAtomBytes),
                               smem_desc_128b(b_rows + step, kTileRows * kSwizzleBytes, kSwizzleAtomBytes), kk > 0);
  }
}

}  // namespace attn
}  // namespace fasttx
