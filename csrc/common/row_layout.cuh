#pragma once
// How the row-wise kernels (norms, softmax) map threads to rows of a contiguous (rows, cols) tensor.
//
// A row is handled by a row group: a power-of-2 number of consecutive threads of a 1-D block, a
// few lanes of a warp for short rows up to several warps for long ones. Each thread caches up to
// cache_elems values of the row per tensor in registers, so rows up to threads * cache_elems
// elements (a "chunk") are read from global memory once; longer rows are walked chunk by chunk.
// Vector j of a chunk lives in thread j % threads of the group: consecutive threads touch
// consecutive 16-byte pieces, so accesses are coalesced.

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/env.h"
#include "common/launch.h"
#include "common/reduce.h"

namespace fasttx {

// The layout's limits, fixed per kernel family.
struct RowLimits {
  int cache_elems;          // row values a thread caches per tensor
  int min_threads_per_row;  // power of 2
  int max_threads_per_row;  // power of 2, the kernels' __launch_bounds__
  int min_block_threads;    // blocks hold several row groups when rows need fewer threads
};

struct RowConfig {
  int threads_per_row;
  int threads;         // per block
  int rows_per_block;
  int chunk_cols;      // elements a row group caches: rows up to this long are read once
};

// The fewest threads per row whose caches hold the whole row, within the limits.
inline RowConfig row_config(int cols, const RowLimits& limits) {
  int per_row = limits.min_threads_per_row;
  while (per_row < limits.max_threads_per_row && per_row * limits.cache_elems < cols) per_row *= 2;
  const int threads = std::max(per_row, limits.min_block_threads);
  return {per_row, threads, threads / per_row, per_row * limits.cache_elems};
}

// This thread's place in the row-group layout of a 1-D block. kMinThreadsPerRow is the layout's
// RowLimits::min_threads_per_row. When groups are whole warps the compiler knows it (no sub-warp
// arithmetic): the norm backward, at its 168-register cap, spills without that.
template <int kMinThreadsPerRow>
struct RowGroup {
  static constexpr bool kWholeWarps = kMinThreadsPerRow >= kWarpSize;

  int warps;       // warps spanned: 1 for groups within a warp
  int size;        // threads per row
  int lanes;       // lanes of a warp in the group: min(size, 32)
  int rank;        // this thread's index within its row group
  int index;       // the row group's index within the block
  int first_warp;  // the warp holding the row group's first thread
  int per_block;   // row groups per block

  __device__ explicit RowGroup(int threads_per_row)
      : warps(kWholeWarps || threads_per_row >= kWarpSize ? threads_per_row / kWarpSize : 1),
        size(kWholeWarps ? warps * kWarpSize : threads_per_row),
        lanes(kWholeWarps || size >= kWarpSize ? kWarpSize : size),
        rank(static_cast<int>(threadIdx.x) % size),
        index(static_cast<int>(threadIdx.x) / size),
        first_warp(kWholeWarps ? index * warps : index * size / kWarpSize),
        per_block(static_cast<int>(blockDim.x) / size) {}

  // group_allreduce over this row group.
  template <int K, int kMaxWarps, typename Combine>
  __device__ __forceinline__ void allreduce(float (&v)[K], float (&scratch)[K][kMaxWarps], Combine combine) const {
    group_allreduce(v, scratch, lanes, warps, first_warp, combine);
  }
};

// What a row group holds of its row in a launch of launch_row_groups_split: row `row`, from column
// first_col on, `cols` of its row_cols columns. Without a split (row_split 1) the whole row; with one,
// chunk blockIdx.x % row_split (chunk_cols columns, the last one shorter), the block's only group.
struct RowPart {
  int64_t row;
  int first_col;
  int cols;
};

template <typename Group>
__device__ __forceinline__ RowPart row_part(const Group& grp, int row_cols, int chunk_cols, int row_split) {
  const int first_col = static_cast<int>(blockIdx.x % row_split) * chunk_cols;
  return {static_cast<int64_t>(blockIdx.x / row_split) * grp.per_block + grp.index, first_col,
          row_split > 1 ? min(row_cols - first_col, chunk_cols) : row_cols};
}

// Combines v over the `blocks` blocks of this block's cluster, where every thread holds its block's
// total already (RowGroup::allreduce of a one-group block): every thread of every block ends with the
// same bits, the blocks' totals combined in rank order. slot: K floats of the caller's __shared__
// memory, read by the other blocks until the caller's last cluster_wait(), which it must call once its
// stores are done: a block's shared memory has to outlive the cluster's reads of it.
template <int K, typename Combine>
__device__ __forceinline__ void cluster_allreduce(float (&v)[K], float* slot, int blocks, Combine combine) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) slot[k] = v[k];
  }
  cluster_arrive();
  cluster_wait();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = load_cluster_shared(&slot[k], 0);
  for (int rank = 1; rank < blocks; ++rank) {
    float other[K];
#pragma unroll
    for (int k = 0; k < K; ++k) other[k] = load_cluster_shared(&slot[k], rank);
    combine(v, other);
  }
  cluster_arrive();  // this block is done reading the others' slots
}

// Launches a row-wise kernel with one row group per row: enough blocks of cfg.threads for `rows`.
template <typename Kernel, typename... Args>
void launch_row_groups(Kernel kernel, const RowConfig& cfg, int64_t rows, cudaStream_t stream, const Args&... args) {
  const int64_t blocks = ceil_div<int64_t>(rows, cfg.rows_per_block);
  launch_kernel(kernel, static_cast<unsigned>(blocks), cfg.threads, stream, args...);
}

// Whether rows longer than a chunk may be split over a cluster (launch_row_groups_split): yes unless
// FASTTX_CUDA_CLUSTERS=0, the switch with which the benchmarks' "fasttx cuda (no clusters)" times the
// chunk-walking path beside the split on the same GPU. Read at each launch of long rows only.
inline bool cluster_splits_allowed() { return !env_is("FASTTX_CUDA_CLUSTERS", "0"); }

// The blocks a row of `cols` columns is split over, a chunk (cfg.chunk_cols) each, by the kernel `split`
// (nullptr: none): ceil(cols / chunk_cols) where that is more than one, the split is allowed
// (cluster_splits_allowed) and the device runs `split` in clusters of that many blocks of cfg.threads
// (resident_clusters); 1 otherwise, where one row group walks the row chunk by chunk. The one place that
// decides, for launch_row_groups_split and the norm backward's persistent clusters.
template <typename Kernel>
int row_split_for(Kernel split, const RowConfig& cfg, int cols) {
  const int blocks = ceil_div(cols, cfg.chunk_cols);
  return blocks > 1 && split != nullptr && cluster_splits_allowed() && resident_clusters(split, cfg.threads, blocks) > 0
             ? blocks
             : 1;
}

// Launches a row-wise kernel taking (args..., threads_per_row, row_split). Rows of one chunk or less
// (cfg.chunk_cols): `walk`, one row group per row, row_split 1. Longer rows split (row_split_for, a grid
// within 2^31 blocks): `split`, each row over a cluster of row_split blocks (cfg.threads_per_row is then
// the whole block), block r of a cluster holding chunk r in its registers, so that no chunk is read twice;
// the row's reductions are combined across the cluster (cluster_allreduce). Otherwise `walk`: one row
// group walks the row chunk by chunk, row_split 1. (`walk` and `split` may be one kernel, branching on
// row_split.)
template <typename Kernel, typename... Args>
void launch_row_groups_split(Kernel walk, Kernel split, const RowConfig& cfg, int64_t rows, int cols,
                             cudaStream_t stream, const Args&... args) {
  const int row_split = rows * ceil_div(cols, cfg.chunk_cols) <= INT32_MAX ? row_split_for(split, cfg, cols) : 1;
  if (row_split > 1) {
    launch_kernel_cluster(split, static_cast<unsigned>(rows * row_split), cfg.threads, row_split, stream, args...,
                          cfg.threads_per_row, row_split);
    return;
  }
  launch_row_groups(walk, cfg, rows, stream, args..., cfg.threads_per_row, 1);
}

// A kernel family's layout, its RowLimits fixed at compile time for the kernels'
// __launch_bounds__, register caches and scratch sizes. Each op declares its own in its namespace
// (layer_norm::Layout, softmax::Layout) with the reasons for its numbers.
template <int kCacheElems_, int kMinThreadsPerRow_, int kMaxThreads_, int kMinBlockThreads_>
struct RowLayout {
  static constexpr int kCacheElems = kCacheElems_;
  static constexpr int kMinThreadsPerRow = kMinThreadsPerRow_;
  static constexpr int kMaxThreads = kMaxThreads_;
  static constexpr int kMaxWarps = kMaxThreads / kWarpSize;
  static constexpr int kMinBlockThreads = kMinBlockThreads_;
  using Group = RowGroup<kMinThreadsPerRow>;

  static RowConfig config(int cols) {
    return row_config(cols, RowLimits{kCacheElems, kMinThreadsPerRow, kMaxThreads, kMinBlockThreads});
  }
};

}  // namespace fasttx
