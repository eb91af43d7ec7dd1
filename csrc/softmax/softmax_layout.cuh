#pragma once
// The softmax kernels' row layout (common/row_layout.cuh), shared by the forward and the backward.
//
// Each thread caches 32 values of a row per tensor (x and the float mask in the forward, y and dy
// in the backward), so a row group of up to 512 threads reads rows of up to 16384 elements once.
// Short rows get fewer threads, down to one per row (C <= 32), so that each thread's cache is at
// least half full (C >= 16): attention rows of 128-256 keys fill whole warps, several rows each,
// instead of leaving most lanes of a warp-per-row layout idle. Longer rows get one 512-thread
// block each and are walked in 16384-element chunks: the first pass reads them all, the second
// reads all but the last again. That re-read hits L2 while the rows in flight fit in it (H100:
// 132 SMs x 1 block x 4C bytes < 50 MB for fp32 C <= ~95K, 16-bit C <= ~190K); beyond that it
// costs a second HBM read of the row. On devices that launch thread block clusters (sm_90) rows of
// up to 16 chunks are split over a cluster instead, a chunk a block, and read once.

#include "common/row_layout.cuh"

namespace fasttx {
namespace softmax {

using Layout = RowLayout<
    // kCacheElems, row values each thread caches per tensor: two cached tensors of 32 fp32 values
    // are 64 registers, within the 128 a 512-thread block may use (64 values would not fit); 16-bit
    // tensors are cached as stored, two values a register, so that 16-bit kernels fit the 64 of two
    // blocks per SM (softmax_fwd.cu, softmax_bwd.cu).
    32,
    // kMinThreadsPerRow: down to one thread per row (see above).
    1,
    // kMaxThreads, the largest row group and block, the kernels' __launch_bounds__: 16 warps cache
    // 16384 elements, the single-pass limit of the Triton kernels too.
    512,
    // kMinBlockThreads, the smallest block: 4 warps, so that kernels with short rows still reach
    // full occupancy within the 32-resident-blocks-per-SM limit.
    128>;

}  // namespace softmax
}  // namespace fasttx
