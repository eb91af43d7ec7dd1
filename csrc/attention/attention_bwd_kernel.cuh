#pragma once
// Attention backward, FlashAttention-2 scheme, with the math of triton_kernels/attention_bwd.py:
// P = exp(scale Q K^T + mask - lse) recomputed from the forward's lse (+inf on fully masked rows, so
// P = 0 there), D = rowsum(dO * O), dS = P * (dP - D) with dP = dO V^T (dropout: dP * Z / (1 - p)),
//   dV = (P * Z)^T dO / (1 - p),  dK = scale dS^T Q,  dQ = scale dS K.
// Three kernels, each gradient row written once by one CTA (no atomics: the same input gives the
// same bits): the rowsum D; dK/dV, a CTA per 64 keys of one (batch, kv head) streaming 32-query tiles
// of every query head of its group (so GQA sums in registers); dQ, a CTA per 64 queries streaming
// key tiles as the forward does. Each warp owns 16 rows (keys, resp. queries) in the mma C layout;
// the transposed products (S^T = K Q^T, dP^T = V dO^T) let dK/dV's warps own keys. Mask (none / some)
// and dropout (off / on) are compile-time switches as in the forward: P = 2^(s scale log2(e) - lse2),
// one FMA per score without a mask, and no per-score branch on that path.

#include "attention/attention_common.cuh"
#include "common/vec.h"

namespace fasttx {
namespace attn {

constexpr int kBwdKeys = 64;     // keys per dK/dV CTA, 16 per warp
constexpr int kBwdQueries = 32;  // queries per tile the dK/dV kernel streams

// Which gradients a dK/dV launch accumulates. Head dim 256 makes two launches (dV, then dK): both
// 16 x 256 fp32 accumulators would take all 255 registers of a thread.
enum KvGrads : int { kGradV = 1, kGradK = 2, kGradKV = 3 };

// D = rowsum(dO * O) in fp32, a warp per row.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads) attention_bwd_delta_kernel(const AttentionBwdParams p) {
  const int row = blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  if (row >= p.queries) return;
  const T* o = static_cast<const T*>(p.o) + b * p.o_strides[0] + h * p.o_strides[1] + row * p.o_strides[2];
  const T* dout = static_cast<const T*>(p.dout) + b * p.dout_strides[0] + h * p.dout_strides[1] + row * p.dout_strides[2];
  float sum = 0.f;
#pragma unroll
  for (int e = lane; e < kHeadDim; e += 32) sum += to_float(o[e]) * to_float(dout[e]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) p.delta[(static_cast<int64_t>(b) * p.heads + h) * p.queries + row] = sum;
}

// Whether a dropout variant draws: always, since only p > 0 launches it, but tested at run time, a
// uniform branch per score block: as a branch it keeps ptxas from interleaving a block's Philox draws
// with each other and with the score math (compile-time, the backward spilled 20-128 B at E = 128).
__device__ __forceinline__ bool dropout_draws(const AttentionParams& p) { return p.dropout_p > 0.f; }

template <typename T, int kHeadDim>
constexpr int bwd_kv_smem_bytes() {
  return (2 * kBwdKeys + 4 * kBwdQueries) * Tile<kHeadDim>::kPitch * static_cast<int>(sizeof(T));  // K, V, 2 x (Q, dO)
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, int kGrads>
__global__ void __launch_bounds__(kThreads) attention_bwd_kv_kernel(const AttentionBwdParams p) {
  constexpr int kPitch = Tile<kHeadDim>::kPitch;
  constexpr int kQTiles = kBwdQueries / 8;
  constexpr int kDTiles = kHeadDim / 8;

  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + kBwdKeys * kPitch;
  T* sQ = sV + kBwdKeys * kPitch;         // [2][kBwdQueries][kPitch]
  T* sdO = sQ + 2 * kBwdQueries * kPitch;  // [2][kBwdQueries][kPitch]

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int n0 = blockIdx.x * kBwdKeys;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const int group = p.heads / p.kv_heads;
  const bool dropout = kDropout && dropout_draws(p);
  const uint64_t seed = load_seed(p);
  const float inv_keep = 1.f / (1.f - p.dropout_p);

  copy_tile<kBwdKeys, kHeadDim>(sK, static_cast<const T*>(p.k) + b * p.k_strides[0] + kvh * p.k_strides[1] + n0 * p.k_strides[2],
                                p.k_strides[2], p.keys - n0, tid);
  copy_tile<kBwdKeys, kHeadDim>(sV, static_cast<const T*>(p.v) + b * p.v_strides[0] + kvh * p.v_strides[1] + n0 * p.v_strides[2],
                                p.v_strides[2], p.keys - n0, tid);
  // The (query head, query tile) pairs, flattened: causal starts at the tile holding query n0, since
  // no earlier query sees these keys.
  const int first = kCausal ? n0 / kBwdQueries : 0;
  const int per_head = max(0, (p.queries + kBwdQueries - 1) / kBwdQueries - first);
  const int steps = group * per_head;
  auto head_of = [&](int step) { return kvh * group + step / per_head; };
  auto row_of = [&](int step) { return (first + step % per_head) * kBwdQueries; };
  auto copy_q = [&](int step, int stage) {
    const int h = head_of(step), m0 = row_of(step);
    copy_tile<kBwdQueries, kHeadDim>(
        sQ + stage * kBwdQueries * kPitch,
        static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + m0 * p.q_strides[2], p.q_strides[2],
        p.queries - m0, tid);
    copy_tile<kBwdQueries, kHeadDim>(
        sdO + stage * kBwdQueries * kPitch,
        static_cast<const T*>(p.dout) + b * p.dout_strides[0] + h * p.dout_strides[1] + m0 * p.dout_strides[2],
        p.dout_strides[2], p.queries - m0, tid);
  };
  if (steps > 0) copy_q(0, 0);
  cp_async_commit();

  float dk[kDTiles][4] = {};
  float dv[kDTiles][4] = {};
  const int key0 = n0 + warp * 16 + g;  // global key index of row g of this warp's transposed tiles
  T* sKw = sK + warp * 16 * kPitch;
  T* sVw = sV + warp * 16 * kPitch;

  for (int step = 0; step < steps; ++step) {
    const int stage = step & 1;
    if (step + 1 < steps) copy_q(step + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* sQs = sQ + stage * kBwdQueries * kPitch;
    const T* sdOs = sdO + stage * kBwdQueries * kPitch;
    const int h = head_of(step), m0 = row_of(step);
    const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
    const MaskRows mask = mask_rows<true>(p, b, h);

    // Dropout's keep bits, bit 4 qt + e for element [qt][e]: one register rather than 16, drawn a pair
    // of query tiles a call. Where the draw and the mask's loads sit decides spills (ptxas -v, CUDA
    // 13.0, sm_80 and sm_90a). Without a mask drawn after P^T: there, the dropout instances at E = 128
    // spill as with the 4-key draw on sm_80 and 8 B more on sm_90a (non-causal: 20 / 36 B), the dV
    // launch's causal one at E = 256 16 / 24 B (sm_80; none before); drawn before the rows' statistics
    // load, or before S^T, they spilled more, on one architecture or the other. With a mask
    // (Placement): kAfterStats, the bits drawn as without and the mask's logits once all the rows'
    // statistics are loaded (E = 32, 96; E = 64 with dropout); kPerTile, the bits drawn before S^T and
    // the mask's logits a query tile at a time before its statistics (E = 128, whose four masked
    // dropout instances that spilled 8-20 B no longer do; E = 64 without dropout); kFirst, the mask's
    // logits before the P^T loop and the bits drawn where first used (E = 256). Each other placement
    // tried spilled 4-40 B in some masked instance of that head dim.
    enum class Placement { kAfterStats, kPerTile, kFirst };
    constexpr Placement kPlace = kHeadDim == 256                                     ? Placement::kFirst
                                 : kHeadDim == 128 || (kHeadDim == 64 && !kDropout) ? Placement::kPerTile
                                                                                     : Placement::kAfterStats;
    static_assert(kQTiles % 2 == 0, "query tiles in pairs");
    uint32_t keep = ~0u;
    const auto draw = [&] {
      if (dropout) {
        keep = 0;
#pragma unroll
        for (int qt = 0; qt < kQTiles; qt += 2) {
          keep |= keep_bits_kq(p, seed, bh, n0 + warp * 16, m0 + qt * 8, lane) << (4 * qt);
        }
      }
    };
    if constexpr (kMask && kPlace == Placement::kPerTile) draw();

    // P^T: keys along rows, queries along columns. Causal checks every tile (the diagonal ones need
    // it, and splitting the loop costs more than the compares); padding keys need no bound check,
    // they reach only their own dK / dV rows, which are never stored.
    float pt[kQTiles][4] = {};
    gemm_nt<T, kHeadDim, kQTiles, kPitch>(pt, sKw, sQs, lane);
    if constexpr (kMask && kPlace == Placement::kFirst) add_mask(pt, p.scale_log2, mask, key0, m0 + 2 * t);
    float lse2[kQTiles][2], delta[kQTiles][2];
    const auto probabilities = [&](int qt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float z = logit<kCausal, kCausal>(pt[qt][e], m0 + qt * 8 + 2 * t + (e & 1), key0 + (e >> 1) * 8,
                                                kMask ? 1.f : p.scale_log2, p);
        pt[qt][e] = exp2_approx(z - lse2[qt][e & 1]);
      }
    };
    constexpr bool kAfterStats = kMask && kPlace == Placement::kAfterStats;
#pragma unroll
    for (int qt = 0; qt < kQTiles; ++qt) {
      if constexpr (kMask && kPlace == Placement::kPerTile) {
        add_mask(reinterpret_cast<float (&)[1][4]>(pt[qt]), p.scale_log2, mask, key0, m0 + qt * 8 + 2 * t);
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int i = m0 + qt * 8 + 2 * t + c;
        // Padding queries: lse = +inf, hence P = 0.
        row_stats(p, bh, i, lse2[qt][c], delta[qt][c]);
      }
      if constexpr (!kAfterStats) probabilities(qt);
    }
    if constexpr (kAfterStats) {
      add_mask(pt, p.scale_log2, mask, key0, m0 + 2 * t);
#pragma unroll
      for (int qt = 0; qt < kQTiles; ++qt) probabilities(qt);
    }
    constexpr bool kDrawLate = kMask && kPlace == Placement::kFirst;  // where dV or dS first takes the bits
    if constexpr (!kMask || kPlace == Placement::kAfterStats || (kDrawLate && (kGrads & kGradV) != 0)) draw();
    auto kept = [&](int qt, int e) { return ((keep >> (4 * qt + e)) & 1u) != 0; };
    if constexpr ((kGrads & kGradV) != 0) {
      float pz[kQTiles][4];  // dV's 1 / (1 - p) is applied once, at the store
#pragma unroll
      for (int qt = 0; qt < kQTiles; ++qt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) pz[qt][e] = kept(qt, e) ? pt[qt][e] : 0.f;
      }
      gemm_rn<T, kQTiles, kDTiles, kPitch>(dv, pz, sdOs, lane);
    }
    if constexpr ((kGrads & kGradK) != 0) {
      float dpt[kQTiles][4] = {};
      gemm_nt<T, kHeadDim, kQTiles, kPitch>(dpt, sVw, sdOs, lane);
      if constexpr (kDrawLate && (kGrads & kGradV) == 0) draw();
#pragma unroll
      for (int qt = 0; qt < kQTiles; ++qt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float dp = kept(qt, e) ? (kDropout ? dpt[qt][e] * inv_keep : dpt[qt][e]) : 0.f;
          pt[qt][e] *= dp - delta[qt][e & 1];  // dS^T
        }
      }
      gemm_rn<T, kQTiles, kDTiles, kPitch>(dk, pt, sQs, lane);
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();  // with no query tile, other threads' copies of K and V into sKw / sVw were never awaited

  const int64_t out_row = (static_cast<int64_t>(b) * p.kv_heads + kvh) * p.keys + n0 + warp * 16;
  const int rows = p.keys - (n0 + warp * 16);
  if constexpr ((kGrads & kGradK) != 0) {
    const float scale[2] = {p.scale, p.scale};
    store_rows<T, kHeadDim>(static_cast<T*>(p.dk) + out_row * kHeadDim, rows, dk, scale, sKw, lane);
  }
  if constexpr ((kGrads & kGradV) != 0) {
    const float scale[2] = {kDropout ? inv_keep : 1.f, kDropout ? inv_keep : 1.f};
    store_rows<T, kHeadDim>(static_cast<T*>(p.dv) + out_row * kHeadDim, rows, dv, scale, sVw, lane);
  }
}

template <typename T, int kHeadDim>
constexpr int bwd_q_smem_bytes() {
  using S = Tile<kHeadDim>;
  return (2 * kBlockM + 4 * S::kBlockN) * S::kPitch * static_cast<int>(sizeof(T));  // Q, dO, 2 x (K, V)
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
__global__ void __launch_bounds__(kThreads) attention_bwd_q_kernel(const AttentionBwdParams p) {
  using S = Tile<kHeadDim>;
  constexpr int kBlockN = S::kBlockN;
  constexpr int kPitch = S::kPitch;
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kDTiles = kHeadDim / 8;

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + kBlockM * kPitch;
  T* sK = sdO + kBlockM * kPitch;  // [2][kBlockN][kPitch]
  T* sV = sK + 2 * kBlockN * kPitch;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int m0 = blockIdx.x * kBlockM;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
  const MaskRows mask = mask_rows(p, b, h);
  const bool dropout = kDropout && dropout_draws(p);
  const uint64_t seed = load_seed(p);
  const float inv_keep = 1.f / (1.f - p.dropout_p);

  const KvStream<T, kHeadDim, kCausal, kBlockM> kv(p, b, h, m0, sK, sV);
  copy_tile<kBlockM, kHeadDim>(sQ, static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + m0 * p.q_strides[2],
                               p.q_strides[2], p.queries - m0, tid);
  copy_tile<kBlockM, kHeadDim>(sdO,
                               static_cast<const T*>(p.dout) + b * p.dout_strides[0] + h * p.dout_strides[1] + m0 * p.dout_strides[2],
                               p.dout_strides[2], p.queries - m0, tid);
  if (kv.end > 0) kv.copy(0, 0, tid);
  cp_async_commit();

  const int row0 = m0 + warp * 16 + g;
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    row_stats(p, bh, i, lse2[r], delta[r]);
  }
  float dq[kDTiles][4] = {};
  T* sQw = sQ + warp * 16 * kPitch;
  const T* sdOw = sdO + warp * 16 * kPitch;

  for (int block = 0; block < kv.end; ++block) {
    const int stage = kv.acquire(block, tid);
    const int n0 = block * kBlockN;
    // Dropout's keep bits, bit 4 nt + e for s[nt][e], a pair of key tiles a call: at E = 32, 64, 128
    // drawn before the scores exist, as the forward does, so that Philox's state never sits beside S
    // and dP (beside them the masked dropout instances at E = 32 and 64 spilled 4 B); at E = 96 and 256
    // a pair at a time where dS takes them (drawn first, E = 96 spilled 20-40 B in 4 instances built
    // for sm_90a; E = 256, beside dQ's 128 accumulators, 80-92 B). ptxas -v, CUDA 13.0, sm_80 and sm_90a.
    static_assert(kNTiles * 4 <= 32 && kNTiles % 2 == 0, "a block's keep bits fit one register, in pairs");
    constexpr bool kKeepFirst = kHeadDim <= 128 && kHeadDim != 96;
    uint32_t keep = ~0u;
    if (kKeepFirst && dropout) {
      keep = 0;
#pragma unroll
      for (int nt = 0; nt < kNTiles; nt += 2) {
        keep |= keep_bits_qk(p, seed, bh, m0 + warp * 16, n0 + nt * 8, lane) << (4 * nt);
      }
    }
    float s[kNTiles][4] = {};
    gemm_nt<T, kHeadDim, kNTiles, kPitch>(s, sQw, kv.k_tile(stage), lane);
    // P before dP = dO V^T: the mask's loads, the element checks and the exponentials then run
    // beside the scores alone, not beside dP too (with dP first, the masked causal variants at E = 32
    // spilled past the 128 registers ptxas keeps to there, and E = 64, 96 spilled a few bytes).
    // Element checks on the diagonal and last blocks only, as the forward: a padding key, loaded
    // as 0, would score 0, and 2^(0 - lse) overflows for a row whose real scores sit far below 0.
    if constexpr (kMask) add_mask(s, p.scale_log2, mask, row0, n0 + 2 * t);
    with_checks(block >= kv.full, [&](auto check) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = row0 + (e >> 1) * 8, j = n0 + nt * 8 + 2 * t + (e & 1);
          const float z = logit<kCausal, decltype(check)::value>(s[nt][e], i, j, kMask ? 1.f : p.scale_log2, p);
          s[nt][e] = exp2_approx(z - lse2[e >> 1]);  // P
        }
      }
    });
    float dp[kNTiles][4] = {};
    gemm_nt<T, kHeadDim, kNTiles, kPitch>(dp, sdOw, kv.v_tile(stage), lane);
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      if (!kKeepFirst && dropout && nt % 2 == 0) {
        keep = keep_bits_qk(p, seed, bh, m0 + warp * 16, n0 + nt * 8, lane) << (4 * nt);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float dpe = dp[nt][e];
        if (dropout) dpe = (keep >> (4 * nt + e)) & 1u ? dpe * inv_keep : 0.f;
        s[nt][e] *= dpe - delta[e >> 1];  // dS
      }
    }
    gemm_rn<T, kNTiles, kDTiles, kPitch>(dq, s, kv.k_tile(stage), lane);
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();  // with no key block, other threads' copies of Q into sQw were never awaited

  const float scale[2] = {p.scale, p.scale};
  store_rows<T, kHeadDim>(static_cast<T*>(p.dq) + (bh * p.queries + m0 + warp * 16) * kHeadDim,
                          p.queries - (m0 + warp * 16), dq, scale, sQw, lane);
}

}  // namespace attn
}  // namespace fasttx
