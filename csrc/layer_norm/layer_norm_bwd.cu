// Backward of LayerNorm and RMSNorm over the last dim of an (M, N) tensor, one kernel template for
// both (kIsRMS). Per row, with xhat = (x - mean) * rstd (RMSNorm: xhat = x * rstd), y = xhat * w + b:
//
//   d xhat_j / d x_i = rstd * (delta_ij - 1/N - xhat_i * xhat_j / N)     (RMSNorm: no 1/N term)
//
// so with g = dy * w (g = dy without weight) and means taken over the row,
//
//   dx = rstd * (g - (xhat * mean(g * xhat) + mean(g)))                 LayerNorm
//   dx = rstd * (g - xhat * mean(g * xhat))                             RMSNorm
//   dw = sum over rows of dy * xhat,   db = sum over rows of dy.
//
// dx needs two row sums and then a second sweep over the row; the row stays in registers for it
// (layer_norm_layout.cuh). dw and db are reduced over rows without atomics, so they are bitwise
// reproducible: the grid has a fixed number G of blocks, each owns a row of a (G, N) fp32
// workspace and writes its column sums there once, and reduce_partials_kernel adds the G rows per
// column in a fixed order and rounds to the parameter dtype.
//  - Rows up to a chunk long (N <= 8192): norm_bwd_kernel is persistent (G blocks, each looping over
//    rows) and accumulates dw, db in registers next to the cached row, so x and dy are read once.
//    Several row groups of one block are folded together through shared memory in a fixed order.
//  - Longer rows: a thread's columns no longer fit in registers, so norm_bwd_kernel computes dx only
//    and norm_bwd_param_kernel reads x and dy again, column-parallel, for dw and db.
// All arithmetic is fp32.

#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "layer_norm/layer_norm.h"
#include "layer_norm/layer_norm_layout.cuh"

namespace fasttx {

using layer_norm::Layout;

namespace {

// Each row group folds at least this many rows into its partial sums (when M allows), so that the
// (G, N) workspace stays a fraction of the activations even for small M.
constexpr int kMinRowsPerGroup = 4;
// Shared memory for folding the row groups of a block: groups 1.. of a smallest block, each with
// its chunk of cached columns (blocks hold several row groups only when they are the smallest).
constexpr int kFoldFloats = (Layout::kMinBlockThreads - kWarpSize) * Layout::kCacheElems;
// Column-parallel dw/db kernel (rows longer than a chunk): one thread per vector of columns.
constexpr int kParamThreads = 256;
// Partial-sum reduction: a warp reads 32 consecutive columns (128 bytes) of one workspace row, and
// 32 warps split the G rows, so each thread adds about G / 32 values and the latency stays short.
constexpr int kFinalCols = 32;
constexpr int kFinalSlices = 32;

// Stores this block's column sums `acc` (the thread's vectors j = i * grp.size + grp.rank of a
// single-chunk row) as row blockIdx.x of partials (G, N). Called by every thread of the block.
template <bool kAligned, int kIters, int kVec>
__device__ void write_partials(const float (&acc)[kIters][kVec], float* __restrict__ partials, float* fold,
                               const Layout::Group& grp, int cols) {
  float* out = partials + static_cast<int64_t>(blockIdx.x) * cols;  // (N,)
  const int nvec = ceil_div(cols, kVec);
  if (grp.per_block == 1) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = i * grp.size + grp.rank;
      if (j < nvec) store_vec<kVec, kAligned>(out + j * kVec, acc[i], cols - j * kVec);
    }
    return;
  }
  // Group g > 0 parks its sums in slot g - 1; group 0 adds the slots in order and stores.
  const int slot = grp.size * Layout::kCacheElems;
  if (grp.index > 0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = i * grp.size + grp.rank;
      if (j >= nvec) continue;
#pragma unroll
      for (int e = 0; e < kVec; ++e) fold[(grp.index - 1) * slot + j * kVec + e] = acc[i][e];
    }
  }
  __syncthreads();
  if (grp.index == 0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = i * grp.size + grp.rank;
      if (j >= nvec) continue;
      float sum[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        sum[e] = acc[i][e];
        for (int g = 1; g < grp.per_block; ++g) sum[e] += fold[(g - 1) * slot + j * kVec + e];
      }
      store_vec<kVec, kAligned>(out + j * kVec, sum, cols - j * kVec);
    }
  }
  __syncthreads();  // fold is reused by the next call
}

// dx for every row; with accumulate_params (single-chunk rows only) also this block's dw/db partial
// sums. Block b handles rows b * per_block + group index, stepping by gridDim.x * per_block.
// Vectors and kAligned as in the forward (layer_norm_fwd.cu).
// 168 registers (fewer than the compiler picks for LayerNorm unbounded) let three 128-thread blocks,
// 12 warps, share an SM rather than two; what each instance takes and spills at that cap is in
// csrc/README.md, "Registers". (__maxnreg__ excludes __launch_bounds__; 256 x 168 fits an SM's 64K
// registers.)
template <bool kIsRMS, typename T, typename W, bool kAligned>
__global__ void __maxnreg__(168)
    norm_bwd_kernel(const NormBwdParams p, const int warps_per_row, const bool accumulate_params) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(Layout::kCacheElems % kVec == 0, "a thread caches whole vectors");
  constexpr int kIters = Layout::kCacheElems / kVec;  // vectors a thread caches per tensor
  constexpr int kSums = kIsRMS ? 1 : 2;       // row sums of g * xhat and (LayerNorm) g
  __shared__ float scratch[kSums][Layout::kMaxWarps];
  __shared__ float fold[kFoldFloats];

  const Layout::Group grp(warps_per_row * kWarpSize);
  const W* __restrict__ w = static_cast<const W*>(p.weight);  // (N,) or nullptr
  const int nvec = ceil_div(p.cols, kVec);
  const int chunk = grp.size * kIters;  // vectors per chunk
  const int last = (nvec - 1) / chunk * chunk;
  // Elements of vector j < nvec inside the row (kVec except for an unaligned row's last vector).
  const auto vec_elems = [&](int j) { return kAligned ? kVec : min(kVec, p.cols - j * kVec); };

  // The cached chunk holds xhat and g = dy * w, all dx needs once the row sums are known.
  float xhat[kIters][kVec];
  float g[kIters][kVec];
  float acc_dw[kIters][kVec] = {};  // sum over this group's rows of dy * xhat
  float acc_db[kIters][kVec] = {};  // sum over this group's rows of dy (LayerNorm only)

  // The loop bound depends on the block only: row groups without a row (past M) keep going through
  // the block-wide reductions.
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * grp.per_block;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * grp.per_block; first < p.rows; first += row_stride) {
    const int64_t row = first + grp.index;
    const bool valid = row < p.rows;
    const int64_t offset = (valid ? row : 0) * p.cols;
    const T* __restrict__ x = static_cast<const T*>(p.x) + offset;    // (N,) this row
    const T* __restrict__ dy = static_cast<const T*>(p.dy) + offset;  // (N,) this row
    T* __restrict__ dx = static_cast<T*>(p.dx) + offset;              // (N,) this row
    const float mean = (kIsRMS || !valid) ? 0.f : p.mean[row];
    const float rstd = valid ? p.rstd[row] : 0.f;

    // Fills xhat and g for a chunk; with `accumulate` also adds the chunk's dw, db terms.
    // Padding (past the row's end or past M) gets xhat = g = 0 and adds nothing anywhere.
    const auto load_chunk = [&](int c0, bool accumulate) {
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int j = c0 + i * grp.size + grp.rank;
        if (valid && j < nvec) {
          const int elems = vec_elems(j);
          float dyv[kVec];
          float wv[kVec];
          load_vec<kVec, kAligned>(x + j * kVec, xhat[i], elems);
          load_vec<kVec, kAligned>(dy + j * kVec, dyv, elems);
          if (w != nullptr) {
            load_vec<kVec, kAligned>(w + j * kVec, wv, elems);
          } else {
#pragma unroll
            for (int e = 0; e < kVec; ++e) wv[e] = 1.f;
          }
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            xhat[i][e] = (xhat[i][e] - mean) * rstd;
            g[i][e] = dyv[e] * wv[e];
            if (accumulate) {
              acc_dw[i][e] += dyv[e] * xhat[i][e];
              if constexpr (!kIsRMS) acc_db[i][e] += dyv[e];
            }
          }
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) xhat[i][e] = g[i][e] = 0.f;
        }
      }
    };

    // accumulate_params implies a single chunk, so acc_dw/acc_db always see the same columns.
    float sums[kSums] = {};
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      load_chunk(c0, accumulate_params);
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
        if (!valid || j >= nvec) continue;
        float dxv[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) dxv[e] = rstd * (g[i][e] - (xhat[i][e] * mean_gxhat + mean_g));
        store_vec<kVec, kAligned>(dx + j * kVec, dxv, vec_elems(j));
      }
    };
    // The last chunk is still in registers; earlier ones (rows longer than a chunk) are read again.
    store_dx(last);
    for (int c0 = 0; c0 < last; c0 += chunk) {
      load_chunk(c0, false);
      store_dx(c0);
    }
  }

  if (!accumulate_params) return;
  if (p.dweight_partials != nullptr) write_partials<kAligned>(acc_dw, p.dweight_partials, fold, grp, p.cols);
  if constexpr (!kIsRMS) {
    if (p.dbias_partials != nullptr) write_partials<kAligned>(acc_db, p.dbias_partials, fold, grp, p.cols);
  }
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

// out_y[c] = sum over g of partials_y[g, c] in a fixed order; blockIdx.y picks (partials, out).
template <typename P>
__global__ void __launch_bounds__(kFinalCols* kFinalSlices)
    reduce_partials_kernel(const float* partials0, P* out0, const float* partials1, P* out1, int num_partials,
                           int cols) {
  __shared__ float slice_sums[kFinalSlices][kFinalCols];
  const float* partials = blockIdx.y == 0 ? partials0 : partials1;  // (G, N)
  P* out = blockIdx.y == 0 ? out0 : out1;                            // (N,)
  const int col = static_cast<int>(blockIdx.x) * kFinalCols + static_cast<int>(threadIdx.x);
  float sum = 0.f;
  if (col < cols) {
    for (int g = threadIdx.y; g < num_partials; g += kFinalSlices) {
      sum += partials[static_cast<int64_t>(g) * cols + col];
    }
  }
  slice_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = slice_sums[0][threadIdx.x];
    for (int s = 1; s < kFinalSlices; ++s) total += slice_sums[s][threadIdx.x];
    out[col] = from_float<P>(total);
  }
}

struct BwdKernels {
  void (*rows)(NormBwdParams, int, bool);
  void (*params)(NormBwdParams);
  int vec;  // elements per vector of both
};

// Must pick the same kernels for norm_bwd_num_partials and norm_bwd_launch: it only looks at fields
// set before the workspace exists. The workspace itself is freshly allocated, hence 16-byte
// aligned, and its rows are whole vectors whenever N is.
BwdKernels select_bwd_kernels(const NormBwdParams& p) {
  BwdKernels k{};
  FASTTX_BOOL_SWITCH(p.is_rms, kIsRMS, [&] {
    FASTTX_DTYPE_SWITCH(p.input_dtype, T, [&] {
      FASTTX_FP32_OR_SWITCH(p.param_dtype == DType::kFloat32, T, W, [&] {
        constexpr int kVec = kVecBytes / sizeof(T);
        // Rows start 16-byte aligned only when N is a multiple of the vector width.
        const bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.x) && is_vec_aligned(p.dy) &&
                             is_vec_aligned(p.dx) && is_vec_aligned(p.weight);
        FASTTX_BOOL_SWITCH(aligned, kAligned, [&] {
          k = {norm_bwd_kernel<kIsRMS, T, W, kAligned>, norm_bwd_param_kernel<T, kAligned>, kVec};
        });
      });
    });
  });
  return k;
}

// Whether norm_bwd_kernel accumulates dw/db itself (rows of a single chunk).
bool fuses_param_grads(const RowConfig& cfg, int cols) { return cols <= cfg.chunk_cols; }

}  // namespace

cudaError_t norm_bwd_num_partials(const NormBwdParams& p, int* num_partials) {
  const RowConfig cfg = Layout::config(p.cols);
  const BwdKernels k = select_bwd_kernels(p);
  int resident = 0;
  cudaError_t err;
  int64_t g;
  if (fuses_param_grads(cfg, p.cols)) {
    // One persistent wave of norm_bwd_kernel.
    err = resident_blocks(k.rows, cfg.threads, &resident);
    g = std::min<int64_t>(resident, ceil_div<int64_t>(p.rows, int64_t{cfg.rows_per_block} * kMinRowsPerGroup));
  } else {
    // Enough row slices that the column-parallel grid fills one wave of norm_bwd_param_kernel.
    err = resident_blocks(k.params, kParamThreads, &resident);
    const int col_blocks = ceil_div(ceil_div(p.cols, k.vec), kParamThreads);
    g = std::min<int64_t>(ceil_div(resident, col_blocks), ceil_div<int64_t>(p.rows, kMinRowsPerGroup));
  }
  *num_partials = static_cast<int>(g);
  return err;
}

void norm_bwd_launch(const NormBwdParams& p, cudaStream_t stream) {
  const RowConfig cfg = Layout::config(p.cols);
  const BwdKernels k = select_bwd_kernels(p);
  const bool fused = fuses_param_grads(cfg, p.cols);
  const bool param_grads = p.dweight_partials != nullptr || p.dbias_partials != nullptr;
  // Fused: the G persistent blocks own the workspace rows. Otherwise one row group per row.
  const int64_t blocks = fused ? p.num_partials : ceil_div<int64_t>(p.rows, cfg.rows_per_block);
  const int warps_per_row = cfg.threads_per_row / kWarpSize;
  launch_kernel(k.rows, static_cast<unsigned>(blocks), cfg.threads, stream, p, warps_per_row, fused && param_grads);
  if (!param_grads) return;
  if (!fused) {
    const dim3 grid(ceil_div(ceil_div(p.cols, k.vec), kParamThreads), p.num_partials);
    launch_kernel(k.params, grid, kParamThreads, stream, p);
  }
  const float* partials[2] = {p.dweight_partials, p.dbias_partials};
  void* outs[2] = {p.dweight, p.dbias};
  if (p.dweight_partials == nullptr) {  // only db: it goes first
    partials[0] = p.dbias_partials;
    outs[0] = p.dbias;
  }
  const int num_outputs = (p.dweight_partials != nullptr) + (p.dbias_partials != nullptr);
  const dim3 grid(ceil_div(p.cols, kFinalCols), num_outputs);
  const dim3 block(kFinalCols, kFinalSlices);
  FASTTX_DTYPE_SWITCH(p.param_dtype, P, [&] {
    launch_kernel(reduce_partials_kernel<P>, grid, block, stream, partials[0], static_cast<P*>(outs[0]), partials[1],
                  static_cast<P*>(outs[1]), p.num_partials, p.cols);
  });
}

}  // namespace fasttx
