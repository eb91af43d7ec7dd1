#pragma once
// All-reductions of K floats per thread over the threads that share a row: an aligned group of
// lanes within a warp, or a group of consecutive warps of a 1-D block.

namespace fasttx {

constexpr int kWarpSize = 32;

// combine(a, b): a <- a op b, elementwise over K floats.
struct SumOp {
  template <int K>
  __device__ __forceinline__ void operator()(float (&a)[K], const float (&b)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) a[k] += b[k];
  }
};

// Butterfly over each aligned group of `lanes` lanes (a power of 2 up to 32): every lane ends with
// the combination of its group's values. When combine(a, b) and combine(b, a) give the same bits,
// so do all lanes, because at each step the two partners combine the same pair. Needs all 32 lanes
// converged (the xor partners of lanes < `lanes` apart stay inside the group).
template <int K, typename Combine>
__device__ __forceinline__ void warp_allreduce(float (&v)[K], Combine combine, int lanes = kWarpSize) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    if (offset >= lanes) continue;
    float other[K];
#pragma unroll
    for (int k = 0; k < K; ++k) other[k] = __shfl_xor_sync(0xffffffffu, v[k], offset);
    combine(v, other);
  }
}

// Combines v over the threads of a row group: `lanes` lanes of one warp (warps == 1), or the
// `warps` whole warps starting at warp `first_warp`. Every thread of the group gets the same
// totals; warp partials are combined in warp order. With warps > 1 this synchronizes the whole
// block, so all threads of the block must make the same sequence of calls; scratch is free again
// when it returns.
template <int K, int kMaxWarps, typename Combine>
__device__ __forceinline__ void group_allreduce(float (&v)[K], float (&scratch)[K][kMaxWarps], int lanes, int warps,
                                                int first_warp, Combine combine) {
  warp_allreduce(v, combine, lanes);
  if (warps == 1) return;
  if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k][threadIdx.x / kWarpSize] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = scratch[k][first_warp];
  for (int w = 1; w < warps; ++w) {
    float other[K];
#pragma unroll
    for (int k = 0; k < K; ++k) other[k] = scratch[k][first_warp + w];
    combine(v, other);
  }
  __syncthreads();
}

// Sums each v[k] over the `warps` whole warps starting at warp `first_warp` (see group_allreduce).
template <int K, int kMaxWarps>
__device__ __forceinline__ void group_allreduce_sum(float (&v)[K], float (&scratch)[K][kMaxWarps], int warps,
                                                    int first_warp) {
  group_allreduce(v, scratch, kWarpSize, warps, first_warp, SumOp{});
}

}  // namespace fasttx
