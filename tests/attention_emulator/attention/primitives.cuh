#pragma once
// Host emulation of csrc/attention/primitives.cuh: found first on the emulator's include path, it
// replaces the real header, so the real kernels run on the host, one fiber per GPU thread
// (tests/cuda_emulator/cta.h). Warp-collective instructions exchange operands through a per-warp
// buffer between two warp barriers; cp.async copies are deferred until the cp.async.wait_group that
// would make them visible, so a missing wait reads stale shared memory (poisoned with NaN before
// every CTA). Out-of-range or misaligned shared or global addresses abort with a message.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "cuda_emulator/cta.h"

namespace fasttx {
namespace attn {

// ---- the emulated machine --------------------------------------------------------------------

constexpr int kMaxSmem = 228 * 1024;
alignas(128) inline unsigned char smem[kMaxSmem];  // the running CTA's dynamic shared memory
inline int smem_bytes = 0;

inline void check_smem(const void* p, size_t bytes, size_t align) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < smem || c + bytes > smem + smem_bytes) fail("shared access out of the dynamic shared memory", p);
  if (reinterpret_cast<uintptr_t>(p) % align != 0) fail("misaligned shared access", p);
}

// What ldmatrix and mma.sync exchange between the lanes of a warp.
struct Warp {
  const void* ptr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
};
inline Warp warps[kMaxWarpsPerCta];

inline Warp& my_warp() { return warps[warp_id()]; }

// ---- primitives ------------------------------------------------------------------------------

inline uint16_t ld16(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(row) + 2 * col, 2);
  return v;
}

template <bool kTrans>
inline void ldmatrix(uint32_t (&r)[4], const void* row) {
  check_smem(row, 16, 16);
  Warp& w = my_warp();
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  w.ptr[lane] = row;
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    if (kTrans) {
      r[i] = ld16(w.ptr[8 * i + 2 * t], g) | (uint32_t{ld16(w.ptr[8 * i + 2 * t + 1], g)} << 16);
    } else {
      r[i] = ld16(w.ptr[8 * i + g], 2 * t) | (uint32_t{ld16(w.ptr[8 * i + g], 2 * t + 1)} << 16);
    }
  }
  __syncwarp();
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix<false>(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix<true>(r, row); }

template <typename T>
inline float half_to_float(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Warp& w = my_warp();
  const int lane = lane_id();
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  w.b[lane][0] = b0;
  w.b[lane][1] = b1;
  __syncwarp();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = half_to_float<T>(w.a[l][0] >> (16 * h));
      A[g + 8][2 * t + h] = half_to_float<T>(w.a[l][1] >> (16 * h));
      A[g][2 * t + 8 + h] = half_to_float<T>(w.a[l][2] >> (16 * h));
      A[g + 8][2 * t + 8 + h] = half_to_float<T>(w.a[l][3] >> (16 * h));
      B[2 * t + h][g] = half_to_float<T>(w.b[l][0] >> (16 * h));
      B[2 * t + 8 + h][g] = half_to_float<T>(w.b[l][1] >> (16 * h));
    }
  }
  __syncwarp();
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    double sum = c[e];
    for (int k = 0; k < 16; ++k) sum += double{A[row][k]} * B[k][col];
    c[e] = static_cast<float>(sum);
  }
}

template <typename T>
inline uint32_t pack2(float lo, float hi) {
  T l, h;
  if constexpr (std::is_same_v<T, __half>) {
    l = __float2half_rn(lo);
    h = __float2half_rn(hi);
  } else {
    l = __float2bfloat16_rn(lo);
    h = __float2bfloat16_rn(hi);
  }
  uint16_t lb, hb;
  std::memcpy(&lb, &l, 2);
  std::memcpy(&hb, &h, 2);
  return lb | (uint32_t{hb} << 16);
}

struct Copy {
  void* dst;
  const void* src;
  bool valid;
};
// Each thread's cp.async groups: the one open, those committed and not yet awaited.
inline std::vector<Copy> open_groups[kMaxThreadsPerCta];
inline std::deque<std::vector<Copy>> committed_groups[kMaxThreadsPerCta];

inline void cp_async_16(void* dst, const void* src, bool valid) {
  check_smem(dst, 16, 16);
  if (valid) {
    check_global(src, 16);
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) fail("misaligned cp.async source", src);
  }
  open_groups[thread_rank].push_back({dst, src, valid});
}

inline void cp_async_commit() {
  committed_groups[thread_rank].push_back(std::move(open_groups[thread_rank]));
  open_groups[thread_rank].clear();
}

template <int kPending>
inline void cp_async_wait() {
  std::deque<std::vector<Copy>>& committed = committed_groups[thread_rank];
  while (committed.size() > kPending) {
    for (const Copy& c : committed.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    }
    committed.pop_front();
  }
}

inline float shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }
inline uint32_t shfl_xor(uint32_t v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }

template <typename T>
inline T load_global(const void* p) {
  check_global(p, sizeof(T));
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) fail("misaligned global load", p);
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

inline float exp2_approx(float x) { return std::exp2(x); }

// Every kernel launched, in order, for the tests to ask which ran (emulator_sm90_bwd.cpp); its user clears it.
inline std::vector<const void*> launched_kernels;
// The last launch's grid and threads a CTA, for the tests to ask which tile ran (emulator_sm90.cpp).
inline dim3 launched_grid;
inline int launched_threads = 0;

// Runs the grid (cta.h), each CTA with its dynamic shared memory poisoned.
template <typename Kernel, typename Params>
void launch(Kernel kernel, dim3 grid, int threads, int smem_size, cudaStream_t, const Params& params) {
  if (smem_size > kMaxSmem) fail("more dynamic shared memory than an H100 has", nullptr);
  launched_kernels.push_back(reinterpret_cast<const void*>(kernel));
  launched_grid = grid;
  launched_threads = threads;
  smem_bytes = smem_size;
  run_grid(
      grid, threads,
      [&] { std::memset(smem, 0xff, smem_bytes); },  // NaN in fp16 and bf16: unfilled tiles poison results
      [&] {
        kernel(params);
        if (!open_groups[thread_rank].empty() || !committed_groups[thread_rank].empty()) {
          fail("thread exited with cp.async copies pending", nullptr);
        }
      });
}

}  // namespace attn
}  // namespace fasttx
