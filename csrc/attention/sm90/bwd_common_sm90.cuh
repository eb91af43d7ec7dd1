#pragma once
// What the two sm_90a backward kernels (attention_bwd_sm90.cuh: dK / dV, attention_dq_sm90.cuh: dQ)
// share: their parameters and host-side launch, the 64 x 64 score products, the register-A gradient
// product and the epilogue that stores a wgmma D fragment. Tiles are 128B-swizzled as the forward's
// (smem_layout_sm90.h): a tile of R rows x 128 columns is two column blocks of R rows x 64 columns.

#include "attention/attention_common.cuh"
#include "attention/sm90/primitives_sm90.cuh"
#include "attention/sm90/tensor_map_sm90.cuh"

namespace fasttx {
namespace attn {

constexpr int kSm90BwdHeadDim = 128;

// A backward kernel's parameters: TMA maps of q, dout (E, L, H, B) and k, v (E, S, Hkv, B)
// (encode_bhle, boxes of 64 columns x the rows each kernel loads at once), and the rest of the call.
struct Sm90BwdParams {
  CUtensorMap q_map, do_map, k_map, v_map;
  AttentionBwdParams p;
};

// Host side of both backward kernels: `kernel` (of config C, element type T) on `grid`, with q and dout
// mapped in boxes of C::kBlockM rows, k and v of C::kBlockN. False where this device has no sm_90a
// code of it or the driver refuses a map: the caller runs the sm_80 kernel instead.
template <typename C, typename T, typename Kernel>
bool launch_bwd_sm90(Kernel kernel, const AttentionBwdParams& p, dim3 grid, cudaStream_t stream) {
  if (!runs_sm90a(kernel)) return false;
  Sm90BwdParams params{};
  params.p = p;
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr int E = C::kHeadDim;
  if (!encode_bhle(&params.q_map, p.q, bf16, E, p.batch, p.heads, p.queries, p.q_strides, C::kBlockM) ||
      !encode_bhle(&params.do_map, p.dout, bf16, E, p.batch, p.heads, p.queries, p.dout_strides, C::kBlockM) ||
      !encode_bhle(&params.k_map, p.k, bf16, E, p.batch, p.kv_heads, p.keys, p.k_strides, C::kBlockN) ||
      !encode_bhle(&params.v_map, p.v, bf16, E, p.batch, p.kv_heads, p.keys, p.v_strides, C::kBlockN)) {
    return false;
  }
  launch(kernel, grid, C::kThreads, C::kSmemBytes, stream, params);
  return true;
}

// d (64 x 64) = A B^T over the head dim, A: this warpgroup's 64 rows at `a_rows` inside a tile of
// kARows rows, B: the 64 rows at `b_rows` inside a tile of kBRows rows; issued and committed as one
// wgmma group, not awaited. Both K-major: k16 step kk reads columns 16 kk .. of column block kk / 4,
// 32 (kk % 4) bytes into each swizzled row. S^T = K Q^T, dP^T = V dO^T (dK / dV); S = Q K^T,
// dP = dO V^T (dQ).
template <typename T, int kARows, int kBRows>
__device__ __forceinline__ void sm90_scores64(float (&d)[32], uint32_t a_rows, uint32_t b_rows) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kSm90BwdHeadDim / 16; ++kk) {
    const uint32_t col = (kk % 4) * 32;
    const uint64_t a = smem_desc_128b(a_rows + (kk / 4) * kARows * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    const uint64_t b = smem_desc_128b(b_rows + (kk / 4) * kBRows * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    wgmma_m64n64k16_ss<T>(d, a, b, kk > 0);
  }
}

// d (64 x 128) += A B issued (not committed), A (64 x 16 kSteps) from registers, one fragment a k16
// step, B the first 16 kSteps rows of a tile of kRows rows x 128 columns, read N-major: k16 step kk's
// rows 16 kk .. start 2 atoms (16 rows) further each step, the 128 columns are the two column blocks,
// LBO apart. dV += P^T dO, dK += dS^T Q (kRows = 64 queries), dQ += dS K (kRows = 64 keys).
template <typename T, int kRows, int kSteps>
__device__ __forceinline__ void sm90_accumulate(float (&d)[64], const uint32_t (&a)[kSteps][4], uint32_t tile) {
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    wgmma_m64n128k16_rs_tn<T>(d, a[kk], smem_desc_128b(tile + kk * 2 * kSwizzleAtomBytes, kRows * kSwizzleBytes,
                                                          kSwizzleAtomBytes));
  }
}

// Rows `row` and `row` + 8 of `rows` (row-major, 128 columns: this thread's rows of a 64 x 128 D
// fragment, thread 32 w + 4 g + t holding rows 16 w + g, + 8) times `scale`, rows >= `limit` skipped;
// 4-byte stores straight from the fragment.
template <typename T>
__device__ __forceinline__ void sm90_store_rows(T* rows, int row, int limit, const float (&d)[64], float scale) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (row + 8 * h >= limit) continue;
    T* out = rows + static_cast<int64_t>(row + 8 * h) * kSm90BwdHeadDim + 2 * t;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      *reinterpret_cast<uint32_t*>(out + 8 * i) = pack2<T>(d[4 * i + 2 * h] * scale, d[4 * i + 2 * h + 1] * scale);
    }
  }
}

}  // namespace attn
}  // namespace fasttx
