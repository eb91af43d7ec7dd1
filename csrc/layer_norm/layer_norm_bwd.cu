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
// reproducible: the grid has a fixed number G of blocks (or of clusters, below), each owns a row of a
// (G, N) fp32 workspace and writes its column sums there once, and reduce_partials_kernel adds the G
// rows per column in a fixed order and rounds to the parameter dtype.
//  - Rows up to a chunk long (N <= 8192): norm_bwd_kernel is persistent (G blocks, each looping over
//    rows, the next row's loads in flight while it works on this one) and accumulates dw, db in
//    registers next to the cached row, so x and dy are read once. Several row groups of one block
//    are folded together through shared memory in a fixed order.
//  - Longer rows, where the device runs clusters (sm_90) and the row is vector-aligned and at most 16
//    chunks long: the same kernel with the row split over a cluster of blocks, a chunk each (kSplit),
//    their row sums combined through distributed shared memory; G clusters are persistent and each
//    block accumulates dw, db for its chunk's columns of its cluster's workspace row, so x and dy are
//    still read once.
//  - Other longer rows: a thread's columns no longer fit in registers, so norm_bwd_long_rows_kernel
//    walks each row twice (the row sums, then dx), reading each chunk but the last again. Where the
//    fp32 dw, db accumulators of a whole row fit the block's shared memory (8N bytes: N up to ~20000
//    on an A100), its G blocks are persistent and add into them on the first walk, so x and dy are read
//    once from HBM (the second walk mostly hits L2). Otherwise norm_bwd_param_kernel reads x and dy
//    again, column-parallel, for dw and db. (Both kernels: layer_norm_bwd_long_rows.cuh.)
// All arithmetic is fp32.

#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "layer_norm/layer_norm.h"
#include "layer_norm/layer_norm_bwd_long_rows.cuh"
#include "layer_norm/layer_norm_layout.cuh"

namespace fasttx {

using layer_norm::BwdLayout;

namespace {

// Each row group folds at least this many rows into its partial sums (when M allows), so that the
// (G, N) workspace stays a fraction of the activations even for small M.
constexpr int kMinRowsPerGroup = 4;
// Shared memory for folding the row groups of a block: groups 1.. of a smallest block, each with
// its chunk of cached columns (blocks hold several row groups only when they are the smallest).
constexpr int kFoldFloats = (BwdLayout::kMinBlockThreads - kWarpSize) * BwdLayout::kCacheElems;
// Partial-sum reduction: a warp reads 32 consecutive columns (128 bytes) of one workspace row, and
// 32 warps split the G rows, so each thread adds about G / 32 values and the latency stays short.
constexpr int kFinalCols = 32;
constexpr int kFinalSlices = 32;

// Stores this block's column sums `acc` (the thread's vectors j = i * grp.size + grp.rank of the `cols`
// columns it holds of a row) at `out`, the same columns of its row of the (G, N) partials. Called by
// every thread of the block.
template <bool kAligned, int kIters, int kVec>
__device__ void write_partials(const float (&acc)[kIters][kVec], float* __restrict__ out, float* fold,
                               const BwdLayout::Group& grp, int cols) {
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
  const int slot = grp.size * BwdLayout::kCacheElems;
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

// dx and this block's dw/db partial sums for rows of a single chunk (N <= 8192), persistent: block b
// handles rows b * per_block + group index, stepping by gridDim.x * per_block, accumulating dw, db
// in registers (a thread's columns are the same in every row). Vectors and kAligned as in the
// forward (layer_norm_fwd.cu).
// kSplit (row_split > 1, vector-aligned rows of 2-16 chunks): the grid is G persistent clusters of
// row_split blocks; cluster c handles rows c, c + G, ..., block r of it chunk r of each row (a block is
// one row group), and the row sums of the blocks are combined in rank order (cluster_allreduce), so every
// block computes dx with the same bits. Block r's dw, db partial sums cover chunk r's columns of
// workspace row c. Each row costs two cluster barriers (the second keeps a block's slot of sums alive
// until the others have read it), passed while the next row's loads are in flight. A compile-time switch,
// as in the forward, so that the other instances compile as before.
//
// Bytes in flight: the next row's x, dy, mean and rstd are loaded, as stored, at the top of each
// iteration, before this row's arithmetic, reduction and dx stores, so every row group always has a
// row of loads in flight (a row of x and dy: 16 KB at N = 4096, 32 KB at 8192, in 16-bit types).
// The two passes over the row (sums, then dx) both read the raw values: packed 16-bit registers hold
// the current and the next row in what one fp32 row took, and dx is written in a form,
// rstd w dy - (c1 (x - mean) + c0), that shares no subexpression with the first pass, so the
// compiler recomputes it instead of keeping fp32 copies alive across the reduction. The weight,
// converted once, waits in shared memory: each thread reads back only what it wrote.
// fp32 values take twice the registers: two whole rows and the accumulators (96 of the 128 registers
// 512 threads allow, LayerNorm) spilled up to 168 B. So in fp32 only the first half of the next row's
// vectors is loaded at the top; each of the others is loaded in the dx pass right after this row's
// copy of it is stored, into the registers that copy held (kLate). Half a row is still in flight
// through the reduction (32 KB at N = 8192, a 512-thread block), the other half from its dx store on.
// What each instance takes is in csrc/README.md, "Registers".
template <bool kIsRMS, typename T, typename W, bool kAligned, bool kSplit>
__global__ void __launch_bounds__(BwdLayout::kMaxThreads)
    norm_bwd_kernel(const NormBwdParams p, const int warps_per_row, const int row_split) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(BwdLayout::kCacheElems % kVec == 0 && kVec % 4 == 0, "a thread caches whole vectors");
  constexpr int kIters = BwdLayout::kCacheElems / kVec;  // vectors a thread holds per tensor
  constexpr int kPacks = kVec / 4;                       // float4s of the weight per vector
  constexpr int kSums = kIsRMS ? 1 : 2;                  // row sums of g * xhat and (LayerNorm) g
  // The next row's vectors from kLate on are loaded in the dx pass, not at the top (see above).
  constexpr int kLate = sizeof(T) == 4 ? kIters / 2 : kIters;
  static_assert(!kSplit || kAligned, "split rows are vector-aligned");
  if constexpr (kSplit && !clusters_compiled()) {
    __trap();
    return;
  }
  __shared__ float scratch[kSums][BwdLayout::kMaxWarps];
  __shared__ float cluster_slot[kSplit ? kSums : 1];  // this block's row sums, read by its cluster
  __shared__ float fold[kFoldFloats];
  __shared__ Pack<float, 4> weight_cache[kIters * kPacks][BwdLayout::kMaxThreads];  // [pack][thread]: conflict-free

  const BwdLayout::Group grp(warps_per_row * kWarpSize);
  // Below, "the row" is the part of it this group holds, columns counted from its first. (Without
  // kSplit, a split of 1 known at compile time: the whole row.)
  const int split = kSplit ? row_split : 1;
  const RowPart part = row_part(grp, p.cols, grp.size * BwdLayout::kCacheElems, split);
  const T* __restrict__ x = static_cast<const T*>(p.x) + part.first_col;       // (M, N) from the part
  const T* __restrict__ dy = static_cast<const T*>(p.dy) + part.first_col;     // (M, N) from the part
  T* __restrict__ dx = static_cast<T*>(p.dx) + part.first_col;                 // (M, N) from the part
  const W* __restrict__ w = static_cast<const W*>(p.weight);                   // (N,) or nullptr
  if (w != nullptr) w += part.first_col;
  const int nvec = ceil_div(part.cols, kVec);
  const auto vec = [&](int i) { return i * grp.size + grp.rank; };  // the thread's i-th vector of the row
  // Elements of vector j < nvec inside the row (kVec except for an unaligned row's last vector).
  const auto vec_elems = [&](int j) { return kAligned ? kVec : min(kVec, part.cols - j * kVec); };

  if (w != nullptr) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      float wv[kVec] = {};
      if (vec(i) < nvec) load_vec<kVec, kAligned>(w + vec(i) * kVec, wv, vec_elems(vec(i)));
#pragma unroll
      for (int e = 0; e < kVec; ++e) weight_cache[i * kPacks + e / 4][threadIdx.x].v[e % 4] = wv[e];
    }
  }
  const auto weight = [&](int i, float (&wv)[kVec]) {
#pragma unroll
    for (int a = 0; a < kPacks; ++a) {
      const Pack<float, 4> pack =
          w != nullptr ? weight_cache[i * kPacks + a][threadIdx.x] : Pack<float, 4>{{1, 1, 1, 1}};
#pragma unroll
      for (int e = 0; e < 4; ++e) wv[a * 4 + e] = pack.v[e];
    }
  };

  // A row's x and dy as stored, with its statistics. Padding (past the row's end or past M) is zero
  // throughout (dy = 0, rstd = 0), so it adds nothing anywhere.
  struct Row {
    RawVec<T, kVec> x[kIters];
    RawVec<T, kVec> dy[kIters];
    float mean;
    float rstd;
  };
  // Vector i of a row's x and dy, zero past the row's end or past M.
  const auto load_vec_of = [&](int64_t row, int i, Row& r) {
    const int j = vec(i);
    if (row < p.rows && j < nvec) {
      const int64_t offset = row * p.cols + j * kVec;
      r.x[i].template load<kAligned>(x + offset, vec_elems(j));
      r.dy[i].template load<kAligned>(dy + offset, vec_elems(j));
    } else {
      r.x[i].zero();
      r.dy[i].zero();
    }
  };
  // A row's statistics and its vectors before `late`.
  const auto load_row = [&](int64_t row, Row& r, int late) {
    const bool valid = row < p.rows;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (i < late) load_vec_of(row, i, r);
    }
    r.mean = (kIsRMS || !valid) ? 0.f : p.mean[row];
    r.rstd = valid ? p.rstd[row] : 0.f;
  };

  float acc_dw[kIters][kVec] = {};  // sum over this group's rows of dy * xhat
  float acc_db[kIters][kVec] = {};  // sum over this group's rows of dy (LayerNorm only)

  // The loop bound depends on the block (split: the cluster) only: row groups without a row (past M)
  // keep going through the block-wide reductions, and a cluster's blocks through its barriers.
  const int64_t row_stride = static_cast<int64_t>(gridDim.x / split) * grp.per_block;
  const int64_t first_row = part.row - grp.index;
  Row cur;
  load_row(first_row + grp.index, cur, kIters);
  for (int64_t first = first_row; first < p.rows; first += row_stride) {
    const int64_t row = first + grp.index;
    Row next;
    load_row(row + row_stride, next, kLate);

    float sums[kSums] = {};
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      float wv[kVec];
      weight(i, wv);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float xhat = (cur.x[i][e] - cur.mean) * cur.rstd;
        const float dyv = cur.dy[i][e];
        const float g = dyv * wv[e];
        sums[0] += g * xhat;
        if constexpr (!kIsRMS) sums[1] += g;
        acc_dw[i][e] += dyv * xhat;
        if constexpr (!kIsRMS) acc_db[i][e] += dyv;
      }
    }
    group_allreduce_sum(sums, scratch, grp.warps, grp.first_warp);
    if constexpr (kSplit) cluster_allreduce(sums, cluster_slot, row_split, SumOp{});
    // dx = rstd (g - (xhat mean(g xhat) + mean(g))) = rstd w dy - (c1 (x - mean) + c0)
    const float mean_gxhat = sums[0] / static_cast<float>(p.cols);
    const float c1 = cur.rstd * cur.rstd * mean_gxhat;
    const float c0 = kIsRMS ? 0.f : cur.rstd * (sums[kSums - 1] / static_cast<float>(p.cols));
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = vec(i);
      if (row < p.rows && j < nvec) {
        float wv[kVec];
        weight(i, wv);
        float dxv[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          dxv[e] = (cur.rstd * wv[e]) * cur.dy[i][e] - (c1 * (cur.x[i][e] - cur.mean) + c0);
        }
        store_vec<kVec, kAligned>(dx + row * p.cols + j * kVec, dxv, vec_elems(j));
      }
      if (i >= kLate) load_vec_of(row + row_stride, i, next);  // into the registers cur[i] just freed
    }
    if constexpr (kSplit) cluster_wait();  // the cluster has read cluster_slot: the next row may write it
    cur = next;
  }

  // This block's part of its workspace row: row blockIdx.x / split, from the part's first column.
  const int64_t out = static_cast<int64_t>(blockIdx.x / split) * p.cols + part.first_col;
  if (p.dweight_partials != nullptr) write_partials<kAligned>(acc_dw, p.dweight_partials + out, fold, grp, part.cols);
  if constexpr (!kIsRMS) {
    if (p.dbias_partials != nullptr) write_partials<kAligned>(acc_db, p.dbias_partials + out, fold, grp, part.cols);
  }
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

using BwdKernel = void (*)(NormBwdParams, int, int);
using LongRowsKernel = void (*)(NormBwdParams, int, bool);

struct BwdKernels {
  BwdKernel rows;                 // single-chunk rows: dx, dw, db partial sums
  BwdKernel split;                // longer rows split over a cluster: the same (nullptr: unaligned)
  LongRowsKernel long_rows;       // other longer rows: dx, and dw, db partial sums where they fit
  void (*params)(NormBwdParams);  // other longer rows: dw, db partial sums where they do not
  int vec;                        // elements per vector of all four
};

// The workspace is freshly allocated, hence 16-byte aligned, and its rows are whole vectors whenever
// N is.
BwdKernels select_bwd_kernels(const NormBwdParams& p) {
  BwdKernels k{};
  FASTTX_BOOL_SWITCH(p.is_rms, kIsRMS, [&] {
    FASTTX_DTYPE_SWITCH(p.input_dtype, T, [&] {
      FASTTX_FP32_OR_SWITCH(p.param_dtype == DType::kFloat32, T, W, [&] {
        constexpr int kVec = kVecBytes / sizeof(T);
        // Rows start 16-byte aligned only when N is a multiple of the vector width.
        const bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.x) && is_vec_aligned(p.dy) &&
                             is_vec_aligned(p.dx) && is_vec_aligned(p.weight);
        if (aligned) {
          k = {norm_bwd_kernel<kIsRMS, T, W, true, false>, norm_bwd_kernel<kIsRMS, T, W, true, true>,
               norm_bwd_long_rows_kernel<kIsRMS, T, W, true>, norm_bwd_param_kernel<T, true>, kVec};
        } else {
          k = {norm_bwd_kernel<kIsRMS, T, W, false, false>, nullptr, norm_bwd_long_rows_kernel<kIsRMS, T, W, false>,
               norm_bwd_param_kernel<T, false>, kVec};
        }
      });
    });
  });
  return k;
}

// The kernels that compute the backward of p, by row length.
enum class BwdPath {
  kRows,              // single-chunk rows: norm_bwd_kernel, G persistent blocks
  kSplit,             // rows split over a cluster: norm_bwd_kernel<kSplit>, G persistent clusters
  kLongRowsShared,    // norm_bwd_long_rows_kernel, G persistent blocks, dw and db in shared memory
  kLongRowsParams,    // norm_bwd_long_rows_kernel a block a row, then norm_bwd_param_kernel, G row slices
};

// How norm_bwd_launch runs p's rows. It only looks at fields set before the workspace exists, so
// norm_bwd_num_partials sizes the workspace for the kernels the launch runs. (Any G is correct for
// every plan: each writes the G workspace rows its grid is given.)
struct BwdPlan {
  BwdKernels k;
  RowConfig cfg;
  BwdPath path;
  int row_split;           // blocks a row is split over (the cluster size); 1: no split
  int param_shared_bytes;  // kLongRowsShared: the dw, db accumulators' dynamic shared memory a block
};

BwdPlan plan_bwd(const NormBwdParams& p) {
  const BwdKernels k = select_bwd_kernels(p);
  const RowConfig cfg = BwdLayout::config(p.cols);
  if (p.cols <= cfg.chunk_cols) return {k, cfg, BwdPath::kRows, 1, 0};
  const int row_split = row_split_for(k.split, cfg, p.cols);
  if (row_split > 1) return {k, cfg, BwdPath::kSplit, row_split, 0};
  // fp32 accumulators for every column of the row (rounded up to whole vectors), for each parameter
  // gradient asked for: 8N bytes with both, so up to N ~ 20800 on an A100 (163 KB a block), ~12500 on
  // sm_86 / sm_89 (99 KB), ~29000 on an H100 / H200 (227 KB).
  const int64_t param_floats =
      int64_t{(p.dweight != nullptr) + (p.dbias != nullptr)} * ceil_div(p.cols, k.vec) * k.vec;
  if (param_floats > 0 && param_floats * int64_t{sizeof(float)} <= dynamic_shared_limit(k.long_rows)) {
    return {k, cfg, BwdPath::kLongRowsShared, 1, static_cast<int>(param_floats * sizeof(float))};
  }
  return {k, cfg, BwdPath::kLongRowsParams, 1, 0};
}

}  // namespace

cudaError_t norm_bwd_num_partials(const NormBwdParams& p, int* num_partials) {
  const BwdPlan plan = plan_bwd(p);
  const RowConfig& cfg = plan.cfg;
  int resident = 0;
  cudaError_t err = cudaSuccess;
  int64_t g;
  switch (plan.path) {
    case BwdPath::kRows:  // one persistent wave of norm_bwd_kernel
      err = resident_blocks(plan.k.rows, cfg.threads, &resident);
      g = std::min<int64_t>(resident, ceil_div<int64_t>(p.rows, int64_t{cfg.rows_per_block} * kMinRowsPerGroup));
      break;
    case BwdPath::kSplit:  // one persistent wave of clusters
      resident = resident_clusters(plan.k.split, cfg.threads, plan.row_split);
      g = std::min<int64_t>(resident, ceil_div<int64_t>(p.rows, kMinRowsPerGroup));
      break;
    case BwdPath::kLongRowsShared:  // one persistent wave of norm_bwd_long_rows_kernel, a row a block
      err = resident_blocks(plan.k.long_rows, cfg.threads, &resident, plan.param_shared_bytes);
      g = std::min<int64_t>(resident, ceil_div<int64_t>(p.rows, kMinRowsPerGroup));
      break;
    default: {  // kLongRowsParams: enough row slices that the column-parallel grid fills one wave of norm_bwd_param_kernel
      err = resident_blocks(plan.k.params, kParamThreads, &resident);
      const int col_blocks = ceil_div(ceil_div(p.cols, plan.k.vec), kParamThreads);
      g = std::min<int64_t>(ceil_div(resident, col_blocks), ceil_div<int64_t>(p.rows, kMinRowsPerGroup));
    }
  }
  *num_partials = static_cast<int>(g);
  return err;
}

void norm_bwd_launch(const NormBwdParams& p, cudaStream_t stream) {
  const BwdPlan plan = plan_bwd(p);
  const RowConfig& cfg = plan.cfg;
  const BwdKernels& k = plan.k;
  const bool param_grads = p.dweight_partials != nullptr || p.dbias_partials != nullptr;
  const int warps_per_row = cfg.threads_per_row / kWarpSize;
  const auto persistent = static_cast<unsigned>(p.num_partials);  // G: the persistent blocks or clusters
  switch (plan.path) {
    case BwdPath::kRows:
      launch_kernel(k.rows, persistent, cfg.threads, stream, p, warps_per_row, 1);
      break;
    case BwdPath::kSplit:
      launch_kernel_cluster(k.split, persistent * plan.row_split, cfg.threads, plan.row_split, stream, p, warps_per_row,
                            plan.row_split);
      break;
    case BwdPath::kLongRowsShared:
      launch_kernel_shared(k.long_rows, persistent, cfg.threads, plan.param_shared_bytes, stream, p, warps_per_row, true);
      break;
    case BwdPath::kLongRowsParams:
      launch_row_groups(k.long_rows, cfg, p.rows, stream, p, warps_per_row, false);
      if (param_grads) {
        launch_kernel(k.params, dim3(ceil_div(ceil_div(p.cols, k.vec), kParamThreads), p.num_partials), kParamThreads,
                      stream, p);
      }
      break;
  }
  if (!param_grads) return;
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
