#pragma once
// The normalization kernels' row layout (common/row_layout.cuh), shared by the forward and the
// backward.
//
// A row is handled by a group of 1, 2, 4 or 8 consecutive warps (N <= 1024: one warp per row and
// four rows per block; larger N: up to one 256-thread block per row). Each thread keeps up to
// kCacheElems fp32 values of the row in registers, so a row of up to 32 * kCacheElems * warps
// elements (a "chunk") is read from global memory once. Longer rows (N > 8192) are walked chunk by
// chunk and every chunk but the last is read again for the second pass. That re-read hits L2 while
// the rows in flight fit in it (H100: 132 SMs x 4 blocks x 2N bytes < 50 MB for 16-bit N <= ~40K);
// beyond that it costs a second HBM read, which is simpler than caching rows in shared memory
// that could not hold them anyway (a 128K-element fp16 row is 256 KB). On devices that launch thread
// block clusters (sm_90) the forward and the backward split vector-aligned rows of up to 16 chunks over
// a cluster instead, a chunk a block, and read them once (layer_norm_fwd.cu, layer_norm_bwd.cu). Where
// they do not, the backward keeps its dw, db sums for the whole row in shared memory when they fit, so
// that the walk is its only read of x and dy (layer_norm_bwd_long_rows.cuh).

#include "common/row_layout.cuh"

namespace fasttx {
namespace layer_norm {

using Layout = RowLayout<
    // kCacheElems, row values each thread caches per tensor: one warp covers N = 1024 and 8 warps
    // N = 8192 in a single chunk.
    32,
    // kMinThreadsPerRow, at least a warp: norm rows are hidden sizes, rarely shorter than a few
    // hundred.
    kWarpSize,
    // kMaxThreads, the largest block (the forward kernel's __launch_bounds__).
    256,
    // kMinBlockThreads, the smallest block: 4 warps, so that warp-per-row kernels still reach full
    // occupancy within the 32-resident-blocks-per-SM limit.
    128>;

// The backward's: half the forward's cache a thread, twice the threads a row (a warp covers N = 512,
// 16 warps N = 8192). Its persistent kernel holds, for each of its columns, the row being reduced
// and the next one (x and dy as stored, in flight meanwhile) and the dw, db accumulators: at 32
// columns a thread that took 128 registers in 16-bit types and 192 in fp32, past the cap that keeps
// two or three blocks an SM; at 16 it fits 128 (__launch_bounds__(512); fp32 only with half of the
// next row loaded later in the iteration, layer_norm_bwd.cu). The same 8192-column chunk
// bounds the rows whose dw, db it accumulates (layer_norm_bwd.cu).
using BwdLayout = RowLayout<16, kWarpSize, 512, 128>;

}  // namespace layer_norm
}  // namespace fasttx
