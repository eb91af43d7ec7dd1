#pragma once
// Conversions to and from fp32 and 128-bit vectorized global loads/stores.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fasttx {

// Widest single global access (LDG.128 / STG.128).
constexpr int kVecBytes = 16;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N elements moved as one access; the alignment makes the compiler emit a single vector instruction.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Loads the kVec elements at ptr (kVec * sizeof(T) a multiple of 16 bytes) into fp32.
// kAligned: ptr is 16-byte aligned and all kVec elements exist; loaded 16 bytes at a time.
// Otherwise only the first n elements exist (n <= 0 allowed): they are loaded one by one and the
// rest are set to 0 (rows whose length is not a multiple of kVec, or misaligned tensors).
template <int kVec, bool kAligned, typename T>
__device__ __forceinline__ void load_vec(const T* ptr, float (&out)[kVec], int n) {
  constexpr int kPer = kVecBytes / static_cast<int>(sizeof(T));
  static_assert(kVec % kPer == 0, "vectors are whole 16-byte accesses");
  if constexpr (kAligned) {
#pragma unroll
    for (int a = 0; a < kVec / kPer; ++a) {
      const Pack<T, kPer> pack = reinterpret_cast<const Pack<T, kPer>*>(ptr)[a];
#pragma unroll
      for (int e = 0; e < kPer; ++e) out[a * kPer + e] = to_float(pack.v[e]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = e < n ? to_float(ptr[e]) : 0.f;
  }
}

// Stores kVec fp32 values to ptr as T; same conventions as load_vec (only the first n are
// written unless kAligned).
template <int kVec, bool kAligned, typename T>
__device__ __forceinline__ void store_vec(T* ptr, const float (&in)[kVec], int n) {
  constexpr int kPer = kVecBytes / static_cast<int>(sizeof(T));
  static_assert(kVec % kPer == 0, "vectors are whole 16-byte accesses");
  if constexpr (kAligned) {
#pragma unroll
    for (int a = 0; a < kVec / kPer; ++a) {
      Pack<T, kPer> pack;
#pragma unroll
      for (int e = 0; e < kPer; ++e) pack.v[e] = from_float<T>(in[a * kPer + e]);
      reinterpret_cast<Pack<T, kPer>*>(ptr)[a] = pack;
    }
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      if (e < n) ptr[e] = from_float<T>(in[e]);
    }
  }
}

// Host side: may a kernel use 16-byte accesses at p? (nullptr, an absent tensor, passes.)
inline bool is_vec_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVecBytes == 0; }

}  // namespace fasttx
