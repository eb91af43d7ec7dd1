#pragma once
// The LayerNorm / RMSNorm backward's rows longer than a chunk (N > 8192) where no cluster splits them
// (layer_norm_bwd.cu, which includes this and holds the derivation and the plan): a block walks its
// row chunk by chunk, dw and db either in its shared memory or from a second, column-parallel kernel.

#include "common/launch.h"
#include "common/vec.h"
#include "layer_norm/layer_norm.h"
#include "layer_norm/layer_norm_layout.cuh"

namespace fasttx {

using layer_norm::BwdLayout;

namespace {

// Column-parallel dw/db kernel: one thread per vector of columns.
constexpr int kParamThreads = 256;

// dx for rows longer than a chunk: a block is one row group (a row longer than a chunk takes the
// largest group, the whole block), walking its row chunk by chunk, twice (the row sums, then dx), every
// chunk but the last read again for the second pass (layer_norm_layout.cuh). The grid steps over the
// rows by gridDim.x.
// params_in_shared: the grid is G persistent blocks, and the first pass also adds each row's dy * xhat
// and dy into dw, db accumulators for every column of the row in the block's dynamic shared memory
// (BwdPlan::param_shared_bytes), which the block writes to its workspace row at the end: x and dy are
// read once from HBM (the second pass mostly from L2). Each thread adds into the columns it holds, the
// same in every row, so no other thread reads them and no barrier guards them. The accumulators are
// float4 planes, [kVec / 4][vectors of the row]: a warp's 16-byte accesses are then consecutive, free
// of bank conflicts. Otherwise (the accumulators would not fit) dw and db come from
// norm_bwd_param_kernel.
template <bool kIsRMS, typename T, typename W, bool kAligned>
__global__ void __launch_bounds__(BwdLayout::kMaxThreads)
    norm_bwd_long_rows_kernel(const NormBwdParams p, const int warps_per_row, const bool params_in_shared) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(BwdLayout::kCacheElems % kVec == 0 && kVec % 4 == 0, "a thread caches whole vectors");
  constexpr int kIters = BwdLayout::kCacheElems / kVec;  // vectors a thread caches per tensor
  constexpr int kPacks = kVec / 4;                       // float4s per vector
  constexpr int kSums = kIsRMS ? 1 : 2;                  // row sums of g * xhat and (LayerNorm) g
  __shared__ float scratch[kSums][BwdLayout::kMaxWarps];

  const BwdLayout::Group grp(warps_per_row * kWarpSize);
  const W* __restrict__ w = static_cast<const W*>(p.weight);  // (N,) or nullptr
  const int nvec = ceil_div(p.cols, kVec);
  const int chunk = grp.size * kIters;  // vectors per chunk
  const int last = (nvec - 1) / chunk * chunk;
  const auto vec_elems = [&](int j) { return kAligned ? kVec : min(kVec, p.cols - j * kVec); };

  // Dynamic shared memory: [dw planes (kPacks, nvec) float4, if dw][db planes (kPacks, nvec), if db].
  const bool with_dw = params_in_shared && p.dweight_partials != nullptr;
  const bool with_db = params_in_shared && p.dbias_partials != nullptr;
  Pack<float, 4>* const acc_dw = dynamic_shared<Pack<float, 4>>();
  Pack<float, 4>* const acc_db = acc_dw + (with_dw ? kPacks * nvec : 0);
  // Calls f(j) for each vector j of the row this thread holds (its float4s: planes[a * nvec + j]).
  const auto for_own_vectors = [&](auto f) {
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int j = c0 + i * grp.size + grp.rank;
        if (j < nvec) f(j);
      }
    }
  };
  if (with_dw || with_db) {
    for_own_vectors([&](int j) {
#pragma unroll
      for (int a = 0; a < kPacks; ++a) {
        if (with_dw) acc_dw[a * nvec + j] = Pack<float, 4>{};
        if (with_db) acc_db[a * nvec + j] = Pack<float, 4>{};
      }
    });
  }

  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t offset = row * p.cols;
    const T* __restrict__ x = static_cast<const T*>(p.x) + offset;    // (N,) this row
    const T* __restrict__ dy = static_cast<const T*>(p.dy) + offset;  // (N,) this row
    T* __restrict__ dx = static_cast<T*>(p.dx) + offset;              // (N,) this row
    const float mean = kIsRMS ? 0.f : p.mean[row];
    const float rstd = p.rstd[row];

    // The cached chunk holds xhat and g = dy * w, all dx needs once the row sums are known.
    float xhat[kIters][kVec];
    float g[kIters][kVec];
    // Padding (past the row's end) gets xhat = g = 0 and adds nothing. accumulate: the first pass,
    // adding dy * xhat and dy into the shared accumulators.
    const auto load_chunk = [&](int c0, bool accumulate) {
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int j = c0 + i * grp.size + grp.rank;
        if (j < nvec) {
          const int elems = vec_elems(j);
          float wv[kVec];
          load_vec<kVec, kAligned>(x + j * kVec, xhat[i], elems);
          load_vec<kVec, kAligned>(dy + j * kVec, g[i], elems);
          if (w != nullptr) {
            load_vec<kVec, kAligned>(w + j * kVec, wv, elems);
          } else {
#pragma unroll
            for (int e = 0; e < kVec; ++e) wv[e] = 1.f;
          }
#pragma unroll
          for (int e = 0; e < kVec; ++e) xhat[i][e] = (xhat[i][e] - mean) * rstd;
          if (accumulate) {
#pragma unroll
            for (int a = 0; a < kPacks; ++a) {  // g is still dy here
              if (with_dw) {
                Pack<float, 4> sum = acc_dw[a * nvec + j];
#pragma unroll
                for (int e = 0; e < 4; ++e) sum.v[e] += g[i][a * 4 + e] * xhat[i][a * 4 + e];
                acc_dw[a * nvec + j] = sum;
              }
              if (with_db) {
                Pack<float, 4> sum = acc_db[a * nvec + j];
#pragma unroll
                for (int e = 0; e < 4; ++e) sum.v[e] += g[i][a * 4 + e];
                acc_db[a * nvec + j] = sum;
              }
            }
          }
#pragma unroll
          for (int e = 0; e < kVec; ++e) g[i][e] *= wv[e];
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) xhat[i][e] = g[i][e] = 0.f;
        }
      }
    };

    float sums[kSums] = {};
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      load_chunk(c0, true);
#pragma unroll
      for (int i = 0; i < kIters; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          sums[0] += g[i][e] * xhat[i][e];
          if constexpr (!kIsRMS) sums[1] += g[i][e];
        }
    }
    group_allreduce_sum(sums, scratch, grp.warps, grp.first_warp);
    const float mean_gxhat = sums[0] / static_cast<float>(p.cols);
    const float mean_g = kIsRMS ? 0.f : sums[kSums - 1] / static_cast<float>(p.cols);

    const auto store_dx = [&](int c0) {
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int j = c0 + i * grp.size + grp.rank;
        if (j >= nvec) continue;
        float dxv[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) dxv[e] = rstd * (g[i][e] - (xhat[i][e] * mean_gxhat + mean_g));
        store_vec<kVec, kAligned>(dx + j * kVec, dxv, vec_elems(j));
      }
    };
    // The last chunk is still in registers; earlier ones are read again.
    store_dx(last);
    for (int c0 = 0; c0 < last; c0 += chunk) {
      load_chunk(c0, false);
      store_dx(c0);
    }
  }

  // This block's workspace row (G, N): its accumulators, vector by vector.
  const int64_t out = static_cast<int64_t>(blockIdx.x) * p.cols;
  const auto write = [&](const Pack<float, 4>* acc, float* partials) {
    for_own_vectors([&](int j) {
      float v[kVec];
#pragma unroll
      for (int a = 0; a < kPacks; ++a)
#pragma unroll
        for (int e = 0; e < 4; ++e) v[a * 4 + e] = acc[a * nvec + j].v[e];
      store_vec<kVec, kAligned>(partials + out + j * kVec, v, vec_elems(j));
    });
  };
  if (with_dw) write(acc_dw, p.dweight_partials);
  if (with_db) write(acc_db, p.dbias_partials);
}

// dw/db partial sums for rows longer than a chunk. Grid (ceil(nvec / kParamThreads), G): thread
// column vector j, partial row blockIdx.y summing rows blockIdx.y, blockIdx.y + G, ...
template <typename T, bool kAligned>
__global__ void __launch_bounds__(kParamThreads) norm_bwd_param_kernel(const NormBwdParams p) {
  constexpr int kVec = kVecBytes / sizeof(T);
  const int j = static_cast<int>(blockIdx.x) * kParamThreads + static_cast<int>(threadIdx.x);
  if (j >= ceil_div(p.cols, kVec)) return;
  const int elems = kAligned ? kVec : min(kVec, p.cols - j * kVec);
  const T* __restrict__ x = static_cast<const T*>(p.x) + j * kVec;    // vector j of row 0
  const T* __restrict__ dy = static_cast<const T*>(p.dy) + j * kVec;  // vector j of row 0
  float dw[kVec] = {};
  float db[kVec] = {};
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const float mean = p.mean != nullptr ? p.mean[row] : 0.f;
    const float rstd = p.rstd[row];
    float xv[kVec];
    float dyv[kVec];
    load_vec<kVec, kAligned>(x + row * p.cols, xv, elems);
    load_vec<kVec, kAligned>(dy + row * p.cols, dyv, elems);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      dw[e] += dyv[e] * ((xv[e] - mean) * rstd);
      db[e] += dyv[e];
    }
  }
  const int64_t out = static_cast<int64_t>(blockIdx.y) * p.cols + j * kVec;
  if (p.dweight_partials != nullptr) store_vec<kVec, kAligned>(p.dweight_partials + out, dw, elems);
  if (p.dbias_partials != nullptr) store_vec<kVec, kAligned>(p.dbias_partials + out, db, elems);
}

}  // namespace
}  // namespace fasttx
