#pragma once
// Launch helpers.

#include <cuda_runtime.h>

#include <algorithm>

namespace fasttx {

template <typename I>
__host__ __device__ constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
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
