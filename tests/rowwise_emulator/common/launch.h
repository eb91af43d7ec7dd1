#pragma once
// Host emulation of csrc/common/launch.h: found first on the emulator's include path, it replaces
// the real header, so the real row-wise kernels (norms: norm.cpp, softmax: softmax.cpp) and their
// launch code run on the host, one fiber per GPU thread (tests/cuda_emulator/cta.h). It also models the
// built-ins those kernels use directly: static __shared__ arrays (one per kernel instance and host
// thread, which every thread of the running CTA sees: CTAs run one at a time, but those of a cluster
// at once, each on a host thread), dynamic shared memory (a buffer a host thread, NaN before each CTA,
// within emulated_shared_limit), warp shuffles and __syncthreads (cta.h), rsqrtf and __fmul_rn; and
// clusters (cta.h's barrier and load_cluster_shared), on a device that launches clusters of up to
// emulated_max_cluster CTAs. (exp2f, fmaf and fmaxf are the C library's: exp2f within the
// device's 2 ulp, fmaf and fmaxf exact on both.)

#include <cuda_runtime_api.h>

#include <cmath>
#include <utility>
#include <vector>

#include "common/ceil_div.h"
#include "cuda_emulator/cta.h"

#undef __shared__
#define __shared__ static thread_local
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
cudaError_t resident_blocks(Kernel, int, int* blocks, int = 0) {
  *blocks = emulated_resident_blocks;
  return cudaSuccess;
}

// What dynamic_shared_limit reports: the emulated device's dynamic shared memory a block, set by the
// caller (emu_set_shared_limit); an H100's 227 KB unless set.
inline int emulated_shared_limit = 227 * 1024;
// The most dynamic shared memory a launch has asked for since this was last read, for the tests to
// see which path a launch took.
inline int largest_shared_launched = 0;

template <typename Kernel>
int dynamic_shared_limit(Kernel) {
  return emulated_shared_limit;
}

// The running CTA's dynamic shared memory: a host thread's, as the static __shared__ objects are,
// refilled with NaN before each CTA (a kernel must write what it reads).
inline thread_local std::vector<float> emulated_dynamic_shared;

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(emulated_dynamic_shared.data());
}

// The largest cluster the emulated device launches, set by the caller (emu_set_max_cluster): 1, none
// (an sm_80 device, or a library without sm_90 code); 16, an H100's largest.
inline int emulated_max_cluster = 1;
// The largest cluster launched since emulated_max_cluster was set or this was last read (1: plain
// launches only), for the tests to see which path each launch took.
inline int largest_cluster_launched = 0;

// Clusters resident at once: the resident blocks in clusters of `cluster` (at least one), on a device
// that launches that size; 0 elsewhere.
template <typename Kernel>
int resident_clusters(Kernel, int, int cluster) {
  return cluster >= 1 && cluster <= emulated_max_cluster ? max(1, emulated_resident_blocks / cluster) : 0;
}

// The emulation runs every kernel instance, cluster ones included: none is a trap here.
constexpr bool clusters_compiled() { return true; }
inline void __trap() { fail("__trap", nullptr); }

template <typename... Params, typename... Args>
void launch_kernel_shared(void (*kernel)(Params...), dim3 grid, dim3 block, int shared_bytes, cudaStream_t,
                          const Args&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("empty grid (an invalid launch on a GPU)", nullptr);
  if (shared_bytes > emulated_shared_limit) fail("more dynamic shared memory than the device allows", nullptr);
  largest_cluster_launched = max(largest_cluster_launched, 1);
  largest_shared_launched = max(largest_shared_launched, shared_bytes);
  const size_t floats = (static_cast<size_t>(shared_bytes) + sizeof(float) - 1) / sizeof(float);
  run_grid(grid, block, [&] { emulated_dynamic_shared.assign(floats, std::nanf("")); }, [&] { kernel(args...); });
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
  launch_kernel_shared(kernel, grid, block, 0, stream, args...);
}

template <typename... Params, typename... Args>
void launch_kernel_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, int cluster, cudaStream_t,
                           const Args&... args) {
  if (grid.x == 0 || cluster > emulated_max_cluster) fail("a cluster launch the device refuses", nullptr);
  largest_cluster_launched = max(largest_cluster_launched, cluster);
  run_clusters(grid, block, cluster, [&] { kernel(args...); });
}

}  // namespace fasttx

// The emulated device's largest cluster (1: none, the sm_80 path), and the largest cluster launched
// since it was set or last read (1: plain launches only; 0: none): entry points of every row-wise
// emulator.
extern "C" void emu_set_max_cluster(int blocks) {
  fasttx::emulated_max_cluster = blocks;
  fasttx::largest_cluster_launched = 0;
}
extern "C" int emu_largest_cluster_launched() { return std::exchange(fasttx::largest_cluster_launched, 0); }

// The emulated device's dynamic shared memory a block (dynamic_shared_limit), and the most a launch
// asked for since this was last read (0: none).
extern "C" void emu_set_shared_limit(int bytes) { fasttx::emulated_shared_limit = bytes; }
extern "C" int emu_largest_shared_launched() { return std::exchange(fasttx::largest_shared_launched, 0); }
