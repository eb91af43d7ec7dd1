#pragma once
// Sums over a warp and over a group of consecutive warps of a 1-D block.

namespace fasttx {

constexpr int kWarpSize = 32;

// Butterfly sum: every lane ends with the same bits, because at each step the two partners add the
// same pair of values and fp addition is commutative. Needs all 32 lanes converged.
__device__ __forceinline__ float warp_allreduce_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each v[k] over the `warps` warps starting at warp `first_warp`; every thread of those warps
// gets the same totals (warp partials are added in warp order). With warps > 1 this synchronizes
// the whole block, so all threads of the block must make the same sequence of calls; scratch is
// free again when it returns.
template <int K, int kMaxWarps>
__device__ __forceinline__ void group_allreduce_sum(float (&v)[K], float (&scratch)[K][kMaxWarps], int warps,
                                                    int first_warp) {
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_allreduce_sum(v[k]);
  if (warps == 1) return;
  if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k][threadIdx.x / kWarpSize] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float s = scratch[k][first_warp];
    for (int w = 1; w < warps; ++w) s += scratch[k][first_warp + w];
    v[k] = s;
  }
  __syncthreads();
}

}  // namespace fasttx
