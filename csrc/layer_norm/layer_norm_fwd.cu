// Forward of LayerNorm and RMSNorm over the last dim of an (M, N) tensor, one kernel template for
// both (kIsRMS):
//   LayerNorm: y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps), var biased
//   RMSNorm:   y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
// All arithmetic is fp32 whatever the storage types; y is rounded once, at the store.
//
// Variance: within a chunk (see layer_norm_layout.cuh) the values sit in registers, so it is computed in
// two passes (mean, then sum of squared deviations) instead of E[x^2] - E[x]^2, which cancels
// catastrophically when |mean| >> std. Chunks of long rows are merged with Chan et al.'s pairwise
// update, which is just as stable. Where the device runs clusters (sm_90), a vector-aligned row longer
// than a chunk is split over a cluster instead, a chunk a block (launch_row_groups_split, the kSplit
// instances): the blocks merge their chunks' statistics the same way through distributed shared
// memory, and each writes its chunk from registers, so x is read once however long the row.

#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "layer_norm/layer_norm.h"
#include "layer_norm/layer_norm_layout.cuh"

namespace fasttx {

using layer_norm::Layout;

namespace {

// Merges {count, mean, sum of squared deviations} of two disjoint parts of a row (Chan et al.):
// a <- a + b. Not symmetric in its rounding: the blocks of a cluster merge their parts in rank order.
struct ChanMerge {
  __device__ __forceinline__ void operator()(float (&a)[3], const float (&b)[3]) const {
    const float total = a[0] + b[0];
    const float delta = b[1] - a[1];
    a[1] += delta * (b[0] / total);
    a[2] += b[2] + delta * delta * (a[0] * (b[0] / total));
    a[0] = total;
  }
};

// T: activation type, W: parameter type. A thread handles vectors of kVec = 16 bytes of T
// consecutive elements; kAligned (N a multiple of kVec, 16-byte aligned tensors) moves them with
// 128-bit accesses, otherwise element by element with the row's tail masked. One row group per
// row, the grid covering all rows; kSplit (row_split > 1, aligned rows only): row_split blocks of a
// cluster per row, a chunk each. A compile-time switch: the split's indexing cost the other instances
// registers (ptxas chose 77 instead of 64 for fp32, spilled in unaligned 16-bit ones).
template <bool kIsRMS, typename T, typename W, bool kAligned, bool kSplit>
__global__ void __launch_bounds__(Layout::kMaxThreads)
    norm_fwd_kernel(const NormFwdParams p, const int threads_per_row, const int row_split) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(Layout::kCacheElems % kVec == 0, "a thread caches whole vectors");
  constexpr int kIters = Layout::kCacheElems / kVec;  // vectors a thread caches
  static_assert(!kSplit || kAligned, "split rows are vector-aligned");
  if constexpr (kSplit && !clusters_compiled()) {
    __trap();
    return;
  }
  __shared__ float scratch[1][Layout::kMaxWarps];
  __shared__ float cluster_slot[kSplit ? 3 : 1];  // this block's statistics, read by its cluster

  const Layout::Group grp(threads_per_row);
  // Below, "the row" is the part of it this group holds, columns counted from its first. (Without
  // kSplit, a split of 1 known at compile time: the whole row, as before the split existed.)
  const RowPart part = row_part(grp, p.cols, grp.size * Layout::kCacheElems, kSplit ? row_split : 1);
  const int64_t row = part.row;
  const int first_col = part.first_col;
  const int cols = part.cols;
  // Rows past M (last block only) still take part in the block-wide reductions.
  const bool valid = row < p.rows;
  const int64_t offset = (valid ? row : 0) * p.cols + first_col;
  const T* __restrict__ x = static_cast<const T*>(p.x) + offset;  // (cols,) this row's part
  T* __restrict__ y = static_cast<T*>(p.y) + offset;              // (cols,) this row's part
  const W* __restrict__ w = static_cast<const W*>(p.weight);      // (N,) or nullptr
  const W* __restrict__ b = static_cast<const W*>(p.bias);        // (N,) or nullptr
  const int nvec = ceil_div(cols, kVec);
  const int chunk = grp.size * kIters;  // vectors per chunk
  // Elements of vector j < nvec inside the row (kVec except for an unaligned row's last vector).
  const auto vec_elems = [&](int j) { return kAligned ? kVec : min(kVec, cols - j * kVec); };

  // Vector j of the row lives in thread j % grp.size of the group: consecutive threads touch
  // consecutive 16-byte pieces, so accesses are coalesced.
  float v[kIters][kVec];
  const auto load_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      if (valid && j < nvec) {
        load_vec<kVec, kAligned>(x + j * kVec, v[i], vec_elems(j));
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) v[i][e] = 0.f;
      }
    }
  };

  // Running statistics of the chunks so far, {count, mean, m2}, identical in every thread of the group.
  // For RMSNorm m2 is the plain sum of squares and mean stays 0.
  float stats[3] = {0.f, 0.f, 0.f};
  for (int c0 = 0; c0 < nvec; c0 += chunk) {
    load_chunk(c0);
    if constexpr (kIsRMS) {
      float sq[1] = {0.f};
#pragma unroll
      for (int i = 0; i < kIters; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) sq[0] += v[i][e] * v[i][e];
      group_allreduce_sum(sq, scratch, grp.warps, grp.first_warp);
      stats[2] += sq[0];
    } else {
      const float n = static_cast<float>(min(chunk * kVec, cols - c0 * kVec));  // elements in the chunk
      float sum[1] = {0.f};
#pragma unroll
      for (int i = 0; i < kIters; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) sum[0] += v[i][e];
      group_allreduce_sum(sum, scratch, grp.warps, grp.first_warp);
      const float chunk_mean = sum[0] / n;
      float dev[1] = {0.f};
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        // Padding zeros are not samples: each would add chunk_mean^2.
        const int j = c0 + i * grp.size + grp.rank;
        if (j >= nvec) continue;
        const int elems = vec_elems(j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          if (e < elems) dev[0] += (v[i][e] - chunk_mean) * (v[i][e] - chunk_mean);
        }
      }
      group_allreduce_sum(dev, scratch, grp.warps, grp.first_warp);
      ChanMerge{}(stats, {n, chunk_mean, dev[0]});
    }
  }
  if constexpr (kSplit) {
    if constexpr (kIsRMS) {
      float sq[1] = {stats[2]};
      cluster_allreduce(sq, cluster_slot, row_split, SumOp{});
      stats[2] = sq[0];
    } else {
      cluster_allreduce(stats, cluster_slot, row_split, ChanMerge{});
    }
  }
  const float mean = stats[1];
  const float rstd = rsqrtf(stats[2] / static_cast<float>(p.cols) + p.eps);
  if (valid && grp.rank == 0 && first_col == 0) {
    if constexpr (!kIsRMS) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }

  const auto store_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      if (!valid || j >= nvec) continue;
      const int elems = vec_elems(j);
      float wv[kVec];
      float bv[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        wv[e] = 1.f;
        bv[e] = 0.f;
      }
      if (w != nullptr) load_vec<kVec, kAligned>(w + first_col + j * kVec, wv, elems);
      if (b != nullptr) load_vec<kVec, kAligned>(b + first_col + j * kVec, bv, elems);
      float out[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) out[e] = (v[i][e] - mean) * rstd * wv[e] + bv[e];
      store_vec<kVec, kAligned>(y + j * kVec, out, elems);
    }
  };
  // The last chunk is still in registers; the others (rows longer than a chunk) are read again.
  const int last = (nvec - 1) / chunk * chunk;
  store_chunk(last);
  for (int c0 = 0; c0 < last; c0 += chunk) {
    load_chunk(c0);
    store_chunk(c0);
  }
  if constexpr (kSplit) cluster_wait();  // the cluster has read cluster_slot: it may go
}

using FwdKernel = void (*)(NormFwdParams, int, int);

// The kernel that walks the rows, and the one that splits long rows over a cluster (nullptr for
// unaligned rows: they walk).
struct FwdKernels {
  FwdKernel walk = nullptr;
  FwdKernel split = nullptr;
};

FwdKernels select_fwd_kernels(const NormFwdParams& p) {
  FwdKernels kernels;
  FASTTX_BOOL_SWITCH(p.is_rms, kIsRMS, [&] {
    FASTTX_DTYPE_SWITCH(p.input_dtype, T, [&] {
      FASTTX_FP32_OR_SWITCH(p.param_dtype == DType::kFloat32, T, W, [&] {
        constexpr int kVec = kVecBytes / sizeof(T);
        // Rows start 16-byte aligned only when N is a multiple of the vector width.
        const bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.x) && is_vec_aligned(p.y) &&
                             is_vec_aligned(p.weight) && is_vec_aligned(p.bias);
        if (aligned) {
          kernels = {norm_fwd_kernel<kIsRMS, T, W, true, false>, norm_fwd_kernel<kIsRMS, T, W, true, true>};
        } else {
          kernels.walk = norm_fwd_kernel<kIsRMS, T, W, false, false>;
        }
      });
    });
  });
  return kernels;
}

}  // namespace

void norm_fwd_launch(const NormFwdParams& p, cudaStream_t stream) {
  const RowConfig cfg = Layout::config(p.cols);
  const FwdKernels kernels = select_fwd_kernels(p);
  launch_row_groups_split(kernels.walk, kernels.split, cfg, p.rows, p.cols, stream, p);
}

}  // namespace fasttx
