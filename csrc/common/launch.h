#pragma once
// What the row-wise kernels (norms, softmax) ask of the CUDA runtime: launches and occupancy. It is
// their only such header, so that a host emulator (tests/rowwise_emulator) can substitute it as a
// whole and run the real kernels and launch code on the CPU.

#include <cuda_runtime.h>

#include <algorithm>

#include "common/ceil_div.h"

namespace fasttx {

// kernel<<<grid, block, 0, stream>>>(args...); launch errors are left for cudaGetLastError.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
  kernel<<<grid, block, 0, stream>>>(args...);
}

// Blocks of `kernel` with `threads` threads each that the current device keeps resident at once:
// the size of a grid that fills the GPU exactly once (persistent kernels).
template <typename Kernel>
cudaError_t resident_blocks(Kernel kernel, int threads, int* blocks) {
  int device = 0;
  int sms = 0;
  int per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
  *blocks = std::max(1, sms * per_sm);
  return err;
}

}  // namespace fasttx
