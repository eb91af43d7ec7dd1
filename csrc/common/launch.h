#pragma once
// What the row-wise kernels (norms, softmax) ask of the CUDA runtime: launches, occupancy and thread
// block clusters. It is their only such header, so that a host emulator (tests/rowwise_emulator) can
// substitute it as a whole and run the real kernels and launch code on the CPU.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "common/ceil_div.h"

namespace fasttx {

// kernel<<<grid, block, shared_bytes, stream>>>(args...): each block with `shared_bytes` of dynamic
// shared memory (dynamic_shared), within dynamic_shared_limit(kernel); launch errors are left for
// cudaGetLastError.
template <typename... Params, typename... Args>
void launch_kernel_shared(void (*kernel)(Params...), dim3 grid, dim3 block, int shared_bytes, cudaStream_t stream,
                          const Args&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
}

// The same without dynamic shared memory.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
  launch_kernel_shared(kernel, grid, block, 0, stream, args...);
}

// The block's dynamic shared memory (launch_kernel_shared), 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char dynamic_shared_bytes[];
  return reinterpret_cast<T*>(dynamic_shared_bytes);
}

// Blocks of `kernel` with `threads` threads (and `shared_bytes` of dynamic shared memory) each that the
// current device keeps resident at once: the size of a grid that fills the GPU exactly once (persistent
// kernels).
template <typename Kernel>
cudaError_t resident_blocks(Kernel kernel, int threads, int* blocks, int shared_bytes = 0) {
  int device = 0;
  int sms = 0;
  int per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes);
  *blocks = std::max(1, sms * per_sm);
  return err;
}

// The most dynamic shared memory a block of `kernel` may have on the current device: the opt-in limit
// a block (A100 163 KB, H100 / H200 227 KB, sm_86 / sm_89 99 KB) less the kernel's static shared
// memory, which the kernel is then allowed (past the default 48 KB, cudaFuncAttributeMaxDynamicSharedMemorySize)
// for every later launch and occupancy query. Cached per (device, kernel), as resident_clusters; 0 where
// a query fails (its error cleared).
template <typename Kernel>
int dynamic_shared_limit(Kernel kernel) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int> known;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const auto key = std::make_pair(device, reinterpret_cast<const void*>(kernel));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int optin = 0;
  cudaFuncAttributes attributes{};
  int limit = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
      cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess) {
    limit = std::max(0, optin - static_cast<int>(attributes.sharedSizeBytes));
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit) != cudaSuccess) limit = 0;
  }
  cudaGetLastError();  // a refused query is an answer (0), not an error for the next launch
  known.emplace(key, limit);
  return limit;
}

// ---- thread block clusters (sm_90): one row split over the blocks of a cluster ------------------

// The most blocks a cluster may hold: 8 is portable, up to 16 run on H100 / H200 when the kernel asks
// for non-portable sizes (cudaFuncAttributeNonPortableClusterSizeAllowed).
constexpr int kMaxClusterBlocks = 16;
constexpr int kMaxPortableClusterBlocks = 8;

// The launch of `grid` blocks of `block` threads in 1-D clusters of `cluster` blocks; `attribute`, which
// holds the cluster size, must outlive the configuration's use.
inline cudaLaunchConfig_t cluster_launch_config(dim3 grid, dim3 block, int cluster, cudaStream_t stream,
                                                cudaLaunchAttribute& attribute) {
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return config;
}

// How many clusters of `cluster` blocks (1-D) of `threads` threads of `kernel` the current device keeps
// resident at once (the grid of a persistent kernel of clusters), 0 where it cannot run them: the device
// launches no clusters, the kernel's code is not sm_90's or later (its sm_80 build traps in the cluster
// functions below: a library built without sm_90 code must not take this path), or no such cluster fits
// the GPU. Cached per (device, kernel, cluster, threads): the occupancy query costs more than a row-wise
// kernel's host time. A failed query clears its error and says 0.
template <typename Kernel>
int resident_clusters(Kernel kernel, int threads, int cluster) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int, int>, int> known;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), cluster, threads);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int supported = 0;
  cudaFuncAttributes attributes{};
  bool ok = cluster >= 1 && cluster <= kMaxClusterBlocks &&
            cudaDeviceGetAttribute(&supported, cudaDevAttrClusterLaunch, device) == cudaSuccess && supported &&
            cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess && attributes.binaryVersion >= 90;
  if (ok && cluster > kMaxPortableClusterBlocks) {
    ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
  }
  int clusters = 0;
  if (ok) {
    cudaLaunchAttribute attribute{};
    const cudaLaunchConfig_t config = cluster_launch_config(dim3(cluster), dim3(threads), cluster, nullptr, attribute);
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) clusters = 0;
  }
  cudaGetLastError();  // a refused query is an answer (0), not an error for the next launch
  known.emplace(key, clusters);
  return clusters;
}

// kernel<<<grid, block, 0, stream>>>(args...) in 1-D clusters of `cluster` blocks (grid.x a multiple
// of it); launch errors are left for cudaGetLastError.
template <typename... Params, typename... Args>
void launch_kernel_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, int cluster, cudaStream_t stream,
                           const Args&... args) {
  cudaLaunchAttribute attribute{};
  const cudaLaunchConfig_t config = cluster_launch_config(grid, block, cluster, stream, attribute);
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// Whether this compilation's code can run clusters: false in device code before sm_90, where a kernel
// instance made for clusters only is built (one translation unit serves every architecture) but never
// launched (resident_clusters asks for sm_90 code); such an instance then compiles to a trap alone.
__host__ __device__ constexpr bool clusters_compiled() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  return false;
#else
  return true;
#endif
}

// The cluster barrier, split: cluster_arrive() releases this thread's earlier shared-memory writes to
// the cluster, cluster_wait() returns once every thread of every block of the cluster has arrived, and
// acquires their writes. Every thread of each block calls both, in turn.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
  __trap();
#endif
}

// The float at `shared` (a __shared__ object of this block) in block `rank` of the cluster
// (distributed shared memory), addressed through the 32-bit shared::cluster window: a generic 64-bit
// address (mapa.u64, then a generic load) took the fp32 softmax backward 12 registers more on sm_90a.
__device__ __forceinline__ float load_cluster_shared(const float* shared, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t local = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  uint32_t remote;
  float value;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(value) : "r"(remote) : "memory");
  return value;
#else
  __trap();
  return 0.f;
#endif
}

}  // namespace fasttx
