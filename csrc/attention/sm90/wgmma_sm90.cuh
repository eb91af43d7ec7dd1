#pragma once
// The wgmma wrappers of primitives_sm90.cuh chosen by their N at compile time, so that a kernel templated
// on the head dim names one function. Its own header, apart from primitives_sm90.cuh, because the host
// emulator replaces that file (tests/attention_emulator) and compiles this one as it is.

#include <cstdint>

#include "attention/sm90/primitives_sm90.cuh"

namespace fasttx {
namespace attn {

// The m64nNk16 wgmma of a tile width N under one name, for kernels whose N follows the head dim (the
// forward's S = Q K^T: kBlockN, P V: kPvN; the backward's register-A gradient products).
template <typename T, int N>
__device__ __forceinline__ void sm90_wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (N == 128) {
    wgmma_m64n128k16_ss<T>(d, desc_a, desc_b, accumulate);
  } else {
    static_assert(N == 80, "no wgmma.m64nNk16 shared/shared wrapper for this N");
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

}  // namespace attn
}  // namespace fasttx
