// Backward of the masked softmax y = softmax(z), z = scale * x + mask, over the last dim of
// contiguous (M, C) rows. The softmax Jacobian is
//
//   d y_i / d z_k = y_i (delta_ik - y_k),
//
// so with dy the gradient w.r.t. y, summing over i,
//
//   dz_k = sum_i dy_i y_i (delta_ik - y_k) = y_k (dy_k - sum_i y_i dy_i),   dx_k = scale * dz_k.
//
// It needs only y, not x or the mask: masked entries have y = 0 and get dx = 0, and a fully masked
// row (y = 0 throughout) gets 0. The mask is a constant here (a float mask's gradient is dz, the
// caller's kernel call with scale 1). One row sum (the dot product y . dy), then a second sweep:
// rows up to a chunk (softmax/softmax_layout.cuh) stay in registers for it, longer ones are read
// again, or, where the device runs clusters, split over a cluster a chunk a block, the dot product
// summed across it through distributed shared memory (as in the forward). All arithmetic is fp32.
//
// Causal rows (p.is_causal): y is 0 past column l of query row l, and so is dx, whatever dy is
// there. Only the vectors holding columns <= l are read, as in the forward (the one that crosses
// the limit whole on the aligned path: it lies in the row); what was read past the limit is
// dropped, so a dy there (inf, NaN, garbage) reaches neither the dot product nor dx, and dx is
// written 0 past the limit. On a square causal matrix that reads about half of y and dy: 2 row-
// units of traffic (y, dy where kept; dx whole) instead of 3.

#include <type_traits>

#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "softmax/softmax_layout.cuh"
#include "softmax/softmax.h"

namespace fasttx {
namespace {

using softmax::Layout;

// Resident 512-thread blocks per SM the kernel must allow. y and dy are cached as stored
// (RawVec): 16-bit values two to a register, 32 registers for both, so two blocks fit 64 registers
// each and one block's loads overlap the other's reduction and stores (rows of 16384 columns and
// more take a 512-thread block each). fp32 caches take 64 registers alone: one block.
template <typename Y>
constexpr int bwd_min_blocks_per_sm() {
  return sizeof(Y) == 2 ? 2 : 1;
}

// Y: y and dy, D: dx. A thread handles vectors of kVec consecutive elements, 16 bytes of the
// narrower type (the fp32 side then takes two 128-bit accesses); kAligned (C a multiple of kVec,
// 16-byte aligned tensors) moves them with 128-bit accesses, otherwise element by element with the
// row's tail masked. One row group per row, the grid covering all rows; with row_split > 1,
// row_split blocks of a cluster per row, a chunk each. (Registers per instance: csrc/README.md,
// "Registers".)
template <typename Y, typename D, bool kAligned>
__global__ void __launch_bounds__(Layout::kMaxThreads, bwd_min_blocks_per_sm<Y>())
    softmax_bwd_kernel(const SoftmaxBwdParams p, const int threads_per_row, const int row_split) {
  constexpr int kVec = kVecBytes / (sizeof(Y) < sizeof(D) ? sizeof(Y) : sizeof(D));
  static_assert(Layout::kCacheElems % kVec == 0, "a thread caches whole vectors");
  constexpr int kIters = Layout::kCacheElems / kVec;  // vectors a thread caches per tensor
  __shared__ float scratch[1][Layout::kMaxWarps];
  __shared__ float cluster_slot[1];  // this block's part of y . dy, read by its cluster (row_split > 1)

  const Layout::Group grp(threads_per_row);
  // Below, "the row" is the part of it this group holds, columns counted from its first.
  const RowPart part = row_part(grp, p.cols, grp.size * Layout::kCacheElems, row_split);
  const int64_t row = part.row;
  const int first_col = part.first_col;
  const int cols = part.cols;
  // Rows past M (last block only) still take part in the block-wide reduction.
  const bool valid = row < p.rows;
  const int64_t offset = (valid ? row : 0) * p.cols + first_col;
  const Y* __restrict__ y = static_cast<const Y*>(p.y) + offset;    // (cols,) this row's part
  const Y* __restrict__ dy = static_cast<const Y*>(p.dy) + offset;  // (cols,) this row's part
  D* __restrict__ dx = static_cast<D*>(p.dx) + offset;              // (cols,) this row's part
  // Columns that may be nonzero in y: up to the causal limit, column l of query row l.
  const int n_keep = !valid        ? 0
                     : p.is_causal ? max(0, min(cols, static_cast<int>(row % p.queries) + 1 - first_col))
                                   : cols;
  const int nvec_read = ceil_div(n_keep, kVec);       // vectors read; the rest of dx is 0
  const int nvec = valid ? ceil_div(cols, kVec) : 0;  // vectors written
  const int chunk = grp.size * kIters;                // vectors per chunk

  RawVec<Y, kVec> yv[kIters];
  RawVec<Y, kVec> gv[kIters];  // dy
  const auto load_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      if (j < nvec_read) {
        const int n = n_keep - j * kVec;  // elements of the vector below the limit (can exceed kVec)
        yv[i].template load<kAligned>(y + j * kVec, n);
        gv[i].template load<kAligned>(dy + j * kVec, n);
        // An aligned vector is read whole even where the causal limit cuts it (it lies in the row):
        // what lies past the limit is dropped. (The element-wise loads read only the first n.)
        if (kAligned && n < kVec) {
          yv[i].zero_from(n);
          gv[i].zero_from(n);
        }
      } else {
        yv[i].zero();
        gv[i].zero();
      }
    }
  };

  float dot[1] = {0.f};
  for (int c0 = 0; c0 < nvec_read; c0 += chunk) {
    load_chunk(c0);
#pragma unroll
    for (int i = 0; i < kIters; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) dot[0] += yv[i][e] * gv[i][e];
  }
  grp.allreduce(dot, scratch, SumOp{});
  if (row_split > 1) cluster_allreduce(dot, cluster_slot, row_split, SumOp{});

  const auto store_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      if (j >= nvec) continue;
      float out[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) out[e] = p.scale * (yv[i][e] * (gv[i][e] - dot[0]));
      // Past the causal limit dx is +0, not the 0 * (0 - dot) of the zeroed cache (-0 for dot > 0,
      // NaN for an infinite dot). Only the vector across the limit and those past it pay the test.
      const int n = n_keep - j * kVec;
      if (n < kVec) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          if (e >= n) out[e] = 0.f;
        }
      }
      store_vec<kVec, kAligned>(dx + j * kVec, out, cols - j * kVec);
    }
  };
  // The last chunk read is still in registers; the others are read again (chunks past the causal
  // limit are not read at all: load_chunk leaves them 0, written as 0).
  const int last = nvec_read == 0 ? 0 : (nvec_read - 1) / chunk * chunk;
  store_chunk(last);
  for (int c0 = 0; c0 < nvec; c0 += chunk) {
    if (c0 == last) continue;
    load_chunk(c0);
    store_chunk(c0);
  }
  if (row_split > 1) cluster_wait();  // the cluster has read cluster_slot: it may go
}

using BwdKernel = void (*)(SoftmaxBwdParams, int, int);

template <typename Y, typename D>
BwdKernel select_alignment(const SoftmaxBwdParams& p) {
  constexpr int kVec = kVecBytes / (sizeof(Y) < sizeof(D) ? sizeof(Y) : sizeof(D));
  // Rows start 16-byte aligned only when C is a multiple of the vector width.
  const bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.y) && is_vec_aligned(p.dy) && is_vec_aligned(p.dx);
  return aligned ? softmax_bwd_kernel<Y, D, true> : softmax_bwd_kernel<Y, D, false>;
}

// dx in y's dtype or fp32, or any dtype from fp32 y (autocast: fp32 softmax of half logits).
BwdKernel select_bwd_kernel(const SoftmaxBwdParams& p) {
  BwdKernel kernel = nullptr;
  FASTTX_DTYPE_SWITCH(p.out_dtype, Y, [&] {
    if constexpr (std::is_same_v<Y, float>) {
      FASTTX_DTYPE_SWITCH(p.grad_dtype, D, [&] { kernel = select_alignment<Y, D>(p); });
    } else {
      FASTTX_FP32_OR_SWITCH(p.grad_dtype == DType::kFloat32, Y, D, [&] { kernel = select_alignment<Y, D>(p); });
    }
  });
  return kernel;
}

}  // namespace

void softmax_bwd_launch(const SoftmaxBwdParams& p, cudaStream_t stream) {
  const RowConfig cfg = Layout::config(p.cols);
  const BwdKernel kernel = select_bwd_kernel(p);
  launch_row_groups_split(kernel, kernel, cfg, p.rows, p.cols, stream, p);
}

}  // namespace fasttx
