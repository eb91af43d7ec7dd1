// Forward of LayerNorm and RMSNorm over the last dim of an (M, N) tensor, one kernel template for
// both (kIsRMS):
//   LayerNorm: y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps), var biased
//   RMSNorm:   y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
// All arithmetic is fp32 whatever the storage types; y is rounded once, at the store.
//
// Variance: within a chunk (see layer_norm_layout.cuh) the values sit in registers, so it is computed in
// two passes (mean, then sum of squared deviations) instead of E[x^2] - E[x]^2, which cancels
// catastrophically when |mean| >> std. Chunks of long rows are merged with Chan et al.'s pairwise
// update, which is just as stable.

#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "layer_norm/layer_norm.h"
#include "layer_norm/layer_norm_layout.cuh"

namespace fasttx {

using layer_norm::Layout;

namespace {

// T: activation type, W: parameter type. A thread handles vectors of kVec = 16 bytes of T
// consecutive elements; kAligned (N a multiple of kVec, 16-byte aligned tensors) moves them with
// 128-bit accesses, otherwise element by element with the row's tail masked. One row group per
// row; the grid covers all rows.
template <bool kIsRMS, typename T, typename W, bool kAligned>
__global__ void __launch_bounds__(Layout::kMaxThreads) norm_fwd_kernel(const NormFwdParams p, const int warps_per_row) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(Layout::kCacheElems % kVec == 0, "a thread caches whole vectors");
  constexpr int kIters = Layout::kCacheElems / kVec;  // vectors a thread caches
  __shared__ float scratch[1][Layout::kMaxWarps];

  const Layout::Group grp(warps_per_row * kWarpSize);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * grp.per_block + grp.index;
  // Rows past M (last block only) still take part in the block-wide reductions.
  const bool valid = row < p.rows;
  const int64_t offset = (valid ? row : 0) * p.cols;
  const T* __restrict__ x = static_cast<const T*>(p.x) + offset;  // (N,) this row
  T* __restrict__ y = static_cast<T*>(p.y) + offset;              // (N,) this row
  const W* __restrict__ w = static_cast<const W*>(p.weight);      // (N,) or nullptr
  const W* __restrict__ b = static_cast<const W*>(p.bias);        // (N,) or nullptr
  const int nvec = ceil_div(p.cols, kVec);
  const int chunk = grp.size * kIters;  // vectors per chunk
  // Elements of vector j < nvec inside the row (kVec except for an unaligned row's last vector).
  const auto vec_elems = [&](int j) { return kAligned ? kVec : min(kVec, p.cols - j * kVec); };

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

  // Running statistics of the chunks so far, identical in every thread of the group. For RMSNorm
  // m2 is the plain sum of squares and mean stays 0.
  float mean = 0.f;
  float m2 = 0.f;
  float seen = 0.f;
  for (int c0 = 0; c0 < nvec; c0 += chunk) {
    load_chunk(c0);
    if constexpr (kIsRMS) {
      float sq[1] = {0.f};
#pragma unroll
      for (int i = 0; i < kIters; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) sq[0] += v[i][e] * v[i][e];
      group_allreduce_sum(sq, scratch, grp.warps, grp.first_warp);
      m2 += sq[0];
    } else {
      const float n = static_cast<float>(min(chunk * kVec, p.cols - c0 * kVec));  // elements in the chunk
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
      const float total = seen + n;
      const float delta = chunk_mean - mean;
      mean += delta * (n / total);
      m2 += dev[0] + delta * delta * (seen * (n / total));
      seen = total;
    }
  }
  const float rstd = rsqrtf(m2 / static_cast<float>(p.cols) + p.eps);
  if (valid && grp.rank == 0) {
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
      if (w != nullptr) load_vec<kVec, kAligned>(w + j * kVec, wv, elems);
      if (b != nullptr) load_vec<kVec, kAligned>(b + j * kVec, bv, elems);
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
}

using FwdKernel = void (*)(NormFwdParams, int);

FwdKernel select_fwd_kernel(const NormFwdParams& p) {
  FwdKernel kernel = nullptr;
  FASTTX_BOOL_SWITCH(p.is_rms, kIsRMS, [&] {
    FASTTX_DTYPE_SWITCH(p.input_dtype, T, [&] {
      FASTTX_FP32_OR_SWITCH(p.param_dtype == DType::kFloat32, T, W, [&] {
        constexpr int kVec = kVecBytes / sizeof(T);
        // Rows start 16-byte aligned only when N is a multiple of the vector width.
        const bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.x) && is_vec_aligned(p.y) &&
                             is_vec_aligned(p.weight) && is_vec_aligned(p.bias);
        FASTTX_BOOL_SWITCH(aligned, kAligned, [&] { kernel = norm_fwd_kernel<kIsRMS, T, W, kAligned>; });
      });
    });
  });
  return kernel;
}

}  // namespace

void norm_fwd_launch(const NormFwdParams& p, cudaStream_t stream) {
  const RowConfig cfg = Layout::config(p.cols);
  launch_row_groups(select_fwd_kernel(p), cfg, p.rows, stream, p, cfg.threads_per_row / kWarpSize);
}

}  // namespace fasttx
