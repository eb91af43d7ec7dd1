#pragma once
// Conversions to and from fp32 and vectorized (up to 128-bit) global loads/stores.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

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

// Elements of T that one access of a kVec-element vector moves: 16 bytes' worth, or the whole
// vector when it is smaller (a bool mask's 4 or 8 bytes next to 16-bit activations).
template <typename T, int kVec>
constexpr int access_elems() {
  return kVec * static_cast<int>(sizeof(T)) < kVecBytes ? kVec : kVecBytes / static_cast<int>(sizeof(T));
}

// Loads the kVec elements at ptr and converts each with `convert` (T -> U).
// kAligned: ptr is aligned to the access size (access_elems * sizeof(T) bytes) and all kVec
// elements exist; they are loaded with the widest accesses. Otherwise only the first n elements
// exist (n <= 0 allowed): they are loaded one by one and the rest are set to `fill` (rows whose
// length is not a multiple of kVec, or misaligned tensors).
template <int kVec, bool kAligned, typename T, typename U, typename Convert>
__device__ __forceinline__ void load_vec(const T* ptr, U (&out)[kVec], int n, U fill, Convert convert) {
  constexpr int kPer = access_elems<T, kVec>();
  static_assert(kVec % kPer == 0, "vectors are whole accesses");
  if constexpr (kAligned) {
#pragma unroll
    for (int a = 0; a < kVec / kPer; ++a) {
      const Pack<T, kPer> pack = reinterpret_cast<const Pack<T, kPer>*>(ptr)[a];
#pragma unroll
      for (int e = 0; e < kPer; ++e) out[a * kPer + e] = convert(pack.v[e]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = e < n ? convert(ptr[e]) : fill;
  }
}

// load_vec into fp32, padding with 0.
template <int kVec, bool kAligned, typename T>
__device__ __forceinline__ void load_vec(const T* ptr, float (&out)[kVec], int n) {
  load_vec<kVec, kAligned>(ptr, out, n, 0.f, [](T v) { return to_float(v); });
}

// Stores kVec fp32 values to ptr as T; same conventions as load_vec (only the first n are
// written unless kAligned).
template <int kVec, bool kAligned, typename T>
__device__ __forceinline__ void store_vec(T* ptr, const float (&in)[kVec], int n) {
  constexpr int kPer = access_elems<T, kVec>();
  static_assert(kVec % kPer == 0, "vectors are whole accesses");
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

// Bit casts of the 16-bit types, for RawVec.
template <typename T>
__device__ __forceinline__ uint16_t to_bits(T v);
template <>
__device__ __forceinline__ uint16_t to_bits<__half>(__half v) { return __half_as_ushort(v); }
template <>
__device__ __forceinline__ uint16_t to_bits<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <typename T>
__device__ __forceinline__ T from_bits(uint16_t v);
template <>
__device__ __forceinline__ __half from_bits<__half>(uint16_t v) { return __ushort_as_half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(uint16_t v) { return __ushort_as_bfloat16(v); }

// kVec elements of T as stored, for a load issued well before its values are used (the next row,
// prefetched while this one is reduced, or a cache that must fit few registers): 16-bit values
// stay two to a 32-bit word, so a row held this way takes half the registers of its fp32 values.
// load() follows load_vec's conventions (kAligned: 16-byte accesses; otherwise the first n
// elements, `stride` elements apart, the rest 0).
template <typename T, int kVec>
struct RawVec {
  static constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));
  static_assert(kVec * sizeof(T) % kVecBytes == 0, "vectors are whole 16-byte accesses");
  using Word = std::conditional_t<sizeof(T) == 4, T, uint32_t>;
  static constexpr int kWords = kVec / kPerWord;
  Word words[kWords];

  template <bool kAligned>
  __device__ __forceinline__ void load(const T* ptr, int n, int64_t stride = 1) {
    if constexpr (kAligned) {
#pragma unroll
      for (int a = 0; a < kWords / 4; ++a) {
        const Pack<Word, 4> pack = reinterpret_cast<const Pack<Word, 4>*>(ptr)[a];
#pragma unroll
        for (int k = 0; k < 4; ++k) words[a * 4 + k] = pack.v[k];
      }
    } else if constexpr (kPerWord == 1) {
#pragma unroll
      for (int k = 0; k < kWords; ++k) words[k] = k < n ? ptr[k * stride] : T(0);
    } else {
#pragma unroll
      for (int k = 0; k < kWords; ++k) {
        const uint32_t lo = 2 * k < n ? to_bits(ptr[2 * k * stride]) : 0u;
        const uint32_t hi = 2 * k + 1 < n ? to_bits(ptr[(2 * k + 1) * stride]) : 0u;
        words[k] = lo | (hi << 16);
      }
    }
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int k = 0; k < kWords; ++k) words[k] = Word(0);
  }
  // Zeroes elements n .. kVec - 1: what a whole-vector load read past a limit inside the row.
  __device__ __forceinline__ void zero_from(int n) {
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      if constexpr (kPerWord == 1) {
        if (k >= n) words[k] = T(0);
      } else if (2 * k >= n) {
        words[k] = 0u;
      } else if (2 * k + 1 >= n) {
        words[k] &= 0xffffu;  // element 2k + 1 is the high half
      }
    }
  }
  __device__ __forceinline__ float operator[](int e) const {
    if constexpr (kPerWord == 1) {
      return words[e];
    } else {
      return to_float(from_bits<T>(static_cast<uint16_t>(words[e / 2] >> (16 * (e % 2)))));
    }
  }
};

// Host side: may a kernel use `bytes`-wide accesses at p? (nullptr, an absent tensor, passes.)
inline bool is_aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
inline bool is_vec_aligned(const void* p) { return is_aligned(p, kVecBytes); }

}  // namespace fasttx
