#pragma once
// Host emulation of csrc/common/launch.h: found first on the emulator's include path, it replaces
// the real header, so the real row-wise kernels (norms: norm.cpp, softmax: softmax.cpp) and their
// launch code run on the host, one fiber per GPU thread (tests/cuda_emulator/cta.h). It also models the
// built-ins those kernels use directly: static __shared__ arrays (one per kernel instance, which
// every thread of the running CTA sees: CTAs run one at a time), warp shuffles and __syncthreads
// (cta.h), rsqrtf and __fmul_rn. (exp2f, fmaf and fmaxf are the C library's: exp2f within the
// device's 2 ulp, fmaf and fmaxf exact on both.)

#include <cuda_runtime_api.h>

#include <cmath>

#include "common/ceil_div.h"
#include "cuda_emulator/cta.h"

#undef __shared__
#define __shared__ static
#undef __maxnreg__
#define __maxnreg__(n)

namespace fasttx {

// The device's rsqrt is approximate (2 ulp); the emulation rounds 1 / sqrt once more than that.
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// A product rounded on its own, never contracted into an fma (ISO C++ mode: -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }

// What resident_blocks reports: sms x blocks per SM of the emulated device, set by the caller
// (emu_set_resident_blocks) so that tests choose how many rows each persistent block walks.
inline int emulated_resident_blocks = 1;

template <typename Kernel>
cudaError_t resident_blocks(Kernel, int, int* blocks) {
  *blocks = emulated_resident_blocks;
  return cudaSuccess;
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, const Args&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("empty grid (an invalid launch on a GPU)", nullptr);
  run_grid(grid, block, [] {}, [&] { kernel(args...); });
}

}  // namespace fasttx
