#pragma once
// What the two sm_90a backward kernels (attention_bwd_sm90.cuh: dK / dV, attention_dq_sm90.cuh: dQ)
// share: their parameters and host-side launch, the 64 x 64 score products, P and dS of one score under
// a mask and dropout, dropout's keep bits of a 64 x 64 fragment, the register-A gradient product and
// the epilogue that stores a wgmma D fragment, and the constants of a head dim (Sm90BwdHead). Tiles are
// 128B-swizzled as the forward's (smem_layout_sm90.h): a tile of R rows x E columns is ceil(E / 64)
// column blocks of R rows x 64 columns, each one TMA box (E = 96: columns 96 .. 127 of the second are
// the TMA's zero fill, which no wgmma reads).

#include <utility>

#include "attention/attention_common.cuh"
#include "attention/sm90/primitives_sm90.cuh"
#include "attention/sm90/tensor_map_sm90.cuh"
#include "attention/sm90/wgmma_sm90.cuh"

namespace fasttx {
namespace attn {

// What both backward kernels' tiles share at head dim kE: the tiles' 64-column blocks and the bytes of
// a tile row.
template <int kE>
struct Sm90BwdHead {
  static_assert(kE == 64 || kE == 96 || kE == 128 || kE == 256, "no sm_90a backward tile for this head dim");
  static constexpr int kHeadDim = kE;
  static constexpr int kColBlocks = (kE + kSwizzleCols - 1) / kSwizzleCols;  // TMA boxes per tile row
  static constexpr int kRowBytes = kColBlocks * kSwizzleBytes;       // a tile row in shared memory
};

// A backward kernel's parameters: TMA maps of q, dout (E, L, H, B) and k, v (E, S, Hkv, B)
// (encode_bhle, boxes of 64 columns x the rows each kernel loads at once), and the rest of the call.
struct Sm90BwdParams {
  CUtensorMap q_map, do_map, k_map, v_map;
  AttentionBwdParams p;

  // Every map, prefetched by the thread that initializes the barriers (tma_prefetch_descriptor).
  __device__ __forceinline__ void prefetch_maps() const {
    const CUtensorMap* const maps[] = {&q_map, &do_map, &k_map, &v_map};
    for (const CUtensorMap* map : maps) tma_prefetch_descriptor(map);
  }
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

// d (64 x 64) = A B^T over head dim kE, A: this warpgroup's 64 rows at `a_rows` inside a tile of
// kARows rows, B: the 64 rows at `b_rows` inside a tile of kBRows rows; issued and committed as one
// wgmma group, not awaited. Both K-major: k16 step kk reads columns 16 kk .. of column block kk / 4,
// 32 (kk % 4) bytes into each swizzled row. S^T = K Q^T, dP^T = V dO^T (dK / dV); S = Q K^T,
// dP = dO V^T (dQ).
template <typename T, int kE, int kARows, int kBRows>
__device__ __forceinline__ void sm90_scores64(float (&d)[32], uint32_t a_rows, uint32_t b_rows) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kE / 16; ++kk) {
    const uint32_t col = (kk % 4) * 32;
    const uint64_t a = smem_desc_128b(a_rows + (kk / 4) * kARows * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    const uint64_t b = smem_desc_128b(b_rows + (kk / 4) * kBRows * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    wgmma_m64n64k16_ss<T>(d, a, b, kk > 0);
  }
}

// P and dS of one score for the mask and dropout that kMask / kDropout switch on at compile time
// (the sm_80 backward's math, attention_bwd_kernel.cuh): without either, P = 2^(s scale log2 e - lse2)
// is one FMA and dS = P (dP - D); a mask adds its logit first (add_mask, attention_common.cuh: float
// mask log2 e or -inf from a bool one, read at query i < L and key j < S only); dropout keeps score e
// where bit e of the keep bits (sm90_bwd_keep_bits) is set: dV takes P Z, its 1 / (1 - p) applied
// at the store (dv_scale), and dS = P (dP Z / (1 - p) - D). A row with no key (lse2 = +inf) gets
// P = 2^-inf = 0, hence dS = 0 (D = 0 there: O = 0).
template <bool kMask, bool kDropout>
struct Sm90BwdMath {
  uint64_t seed;   // 0 without dropout
  float inv_keep;  // 1 / (1 - p)

  __device__ __forceinline__ explicit Sm90BwdMath(const AttentionParams& p)
      : seed(kDropout ? load_seed(p) : 0), inv_keep(kDropout ? 1.f / (1.f - p.dropout_p) : 1.f) {}

  // With a mask, the base-2 logits of a 64 x 64 fragment: s scale log2 e plus the mask (add_mask, whose
  // fragment rows `row`, + 8 and columns `col` + 8 q, + 1 are keys and queries where kKeysAlongRows).
  __device__ __forceinline__ static void logits(float (&s)[32], const AttentionParams& p, const MaskRows& mask,
                                                int row, int col) {
    if constexpr (kMask) add_mask(s, p.scale_log2, mask, row, col);
  }
  // P of s, the score or, with a mask, its logit (logits).
  __device__ __forceinline__ static float prob(float s, float lse2, const AttentionParams& p) {
    if constexpr (kMask) {
      return exp2_approx(s - lse2);
    } else {
      return exp2_approx(fmaf(s, p.scale_log2, -lse2));
    }
  }
  __device__ __forceinline__ static bool kept(uint32_t keep, int e) { return !kDropout || ((keep >> e) & 1u) != 0; }
  __device__ __forceinline__ static float dropped(float pv, uint32_t keep, int e) { return kept(keep, e) ? pv : 0.f; }
  __device__ __forceinline__ float ds(float pv, float dp, float delta, uint32_t keep, int e) const {
    if constexpr (kDropout) dp = kept(keep, e) ? dp * inv_keep : 0.f;
    return pv * (dp - delta);
  }
  __device__ __forceinline__ float dv_scale() const { return inv_keep; }
};

// Dropout's keep bits (philox.h's draw, bit for bit the forward's) of this thread's part of a 64 x 64
// score fragment (wgmma D layout: the mma C fragment over 8 column tiles of 8): bit e for element e,
// at row row0 + g + 8 ((e >> 1) & 1), column col0 + 8 (e >> 2) + 2t + (e & 1) of the warp's 16 rows
// from row0. Queries along rows (dQ: S) draw as the forward does (keep_bits_qk), keys along rows
// (dK / dV: S^T) as the sm_80 dK/dV kernel does (keep_bits_kq), a pair of column tiles a call (4
// Philox calls a thread). Called by every lane of the warp.
template <bool kKeysAlongRows>
__device__ __forceinline__ uint32_t sm90_bwd_keep_bits(const AttentionParams& p, uint64_t seed, int64_t bh, int row0,
                                                       int col0, int lane) {
  // Column tile pair i (from col0 + 16 i) draws the counters of pair 0 plus 16 i queries' worth
  // (keys along rows) or 2 i groups of 8 keys.
  const uint64_t counter = kKeysAlongRows ? kq_counter(p, bh, row0, col0, lane) : qk_counter(p, bh, row0, col0, lane);
  const uint64_t step = kKeysAlongRows ? 16 * philox::dropout_row_groups(p.keys) : 2;
  uint32_t keep = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    keep |= (kKeysAlongRows ? keep_bits_kq(p, seed, counter + i * step, lane)
                            : keep_bits_qk(p, seed, counter + i * step, lane))
            << (8 * i);
  }
  return keep;
}

// Rows `row` and `row` + 8 of `rows` (row-major, kE columns: this thread's rows of a 64 x kE D
// fragment, thread 32 w + 4 g + t holding rows 16 w + g, + 8) times `scale`, rows >= `limit` skipped;
// 4-byte stores straight from the fragment.
template <typename T, int kE>
__device__ __forceinline__ void sm90_store_rows(T* rows, int row, int limit, const float (&d)[kE / 2], float scale) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (row + 8 * h >= limit) continue;
    T* out = rows + static_cast<int64_t>(row + 8 * h) * kE + 2 * t;
#pragma unroll
    for (int i = 0; i < kE / 8; ++i) {
      *reinterpret_cast<uint32_t*>(out + 8 * i) = pack2<T>(d[4 * i + 2 * h] * scale, d[4 * i + 2 * h + 1] * scale);
    }
  }
}

}  // namespace attn
}  // namespace fasttx
