#pragma once
// Attention forward for sm_90a, FlashAttention-3 scheme: head dims 64, 96, 128 and 256, fp16 /
// bf16, causal or not, bool / float masks and dropout; same results and conventions as
// attention_fwd_kernel.cuh (base-2 online softmax, masks read through broadcast strides, O = 0 and
// lse = +inf on a row with no key kept, dropout's keep mask bit for bit philox.h's). Causal, mask
// and dropout are compile-time switches: the unmasked, dropout-free instances carry no code of
// either.
//
// A CTA of 1 + kConsumers warpgroups owns 64 kConsumers query rows of one (batch, head): two consumers
// (128 rows), or three (192 rows, FlashAttention-3's tile at E = 64) where the instance fits 160
// registers a consumer (Sm90FwdTile):
// - warpgroup 0, the producer, gives its registers away (setmaxnreg) and one thread issues TMA loads:
//   Q once, then K and V tiles of kBlockN keys into a kStages ring (K one block ahead of V), each tile
//   completing its own mbarrier ("full"); it refills a K (V) slot once every consumer has released
//   it ("empty").
// - warpgroups 1 .. kConsumers, the consumers, own 64 rows each: S = Q K^T by wgmma with both operands
//   in shared memory, the online softmax on the S accumulators in registers, then O += P V by wgmma
//   with P from registers and V read N-major through its descriptor. They take turns issuing their
//   wgmma, round robin (FlashAttention-3's ping-pong, Sm90Turns): turn j issues Q K^T of block j and
//   P V of block j - 1, then passes the turn, so the other warpgroups' softmax runs while one's
//   products keep the tensor cores busy; and a warpgroup's softmax of block j runs while its own P V
//   of block j - 1 is in flight (intra-warpgroup overlap).
// The epilogue writes O through shared memory (the warpgroup's own Q rows) with a TMA store.
// Tiles are 128B-swizzled (smem_layout_sm90.h): a tile of R rows x E columns is ceil(E / 64) column
// blocks of R rows x 64 columns (128 bytes), each loaded by one TMA box (E = 96: columns 96 .. 127 of
// the second are the TMA's zero fill, which no wgmma reads). Rows past L or S are zero-filled by the
// TMA; keys past S get -inf logits. The tile shape per head dim (Sm90Fwd) follows from the consumers'
// registers and the CTA's shared memory: csrc/attention/README.md, "sm_90a forward", has the table.

#include <type_traits>

#include "attention/attention_common.cuh"
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/primitives_sm90.cuh"
#include "attention/sm90/tensor_map_sm90.cuh"
#include "attention/sm90/turns_sm90.cuh"
#include "attention/sm90/wgmma_sm90.cuh"
#include "common/env.h"

namespace fasttx {
namespace attn {

// The CTA of kConsumers consumer warpgroups (2 or 3): its rows, threads, register budgets and named
// barriers.
template <int kConsumerWarpgroups>
struct Sm90FwdCta {
  static constexpr int kConsumers = kConsumerWarpgroups;
  static constexpr int kWarpgroupRows = 64;  // a consumer warpgroup's rows: the wgmma's M
  static constexpr int kBlockM = kWarpgroupRows * kConsumers;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  // setmaxnreg budgets, multiples of 8 within the SM's 64K registers for the CTA's 128 (1 + kConsumers)
  // threads: 128 x (24 + 2 x 240) = 62K with two consumers, 128 x (24 + 3 x 160) = 63K with three.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = (65536 / 128 - kProducerRegs) / kConsumers / 8 * 8;
  static_assert(128 * (kProducerRegs + kConsumers * kConsumerRegs) <= 65536 && kConsumerRegs <= 256,
                "setmaxnreg budgets over the SM's registers");
  // Named barriers (0 is __syncthreads'): 1 .. kConsumers the consumers' turns, kConsumers + 1 ..
  // 2 kConsumers a consumer warpgroup's O tile written, before its TMA store.
  static constexpr int kTurnBarrier = 1;
  static constexpr int kEpilogueBarrier = 1 + kConsumers;
  static_assert(kConsumers >= 2 && kEpilogueBarrier + kConsumers <= 16, "named barriers 1 .. 15");
};

// The tile of head dim E with kConsumers consumer warpgroups and kKeys keys a block, its ring 3 stages
// where the CTA's shared memory holds them, else 2. A consumer thread holds o (E / 2 fp32), s (kBlockN
// / 2 fp32) and P (kBlockN / 4 packed) at once (the intra-warpgroup overlap) within its kConsumerRegs;
// the CTA's shared memory holds Q (2 kBlockM E bytes) and kStages K and V tiles (2 kBlockN E bytes each,
// E rounded up to 64 columns) within 227 KB. Three stages: each K or V load is issued two blocks ahead
// of its use, which README "sm_90a forward" argues covers the load latency at E <= 128; the table there
// has each tile's registers and bytes.
template <int kE, int kConsumerWarpgroups, int kKeys>
struct Sm90Fwd : Sm90FwdCta<kConsumerWarpgroups> {
  using Cta = Sm90FwdCta<kConsumerWarpgroups>;
  using Cta::kBlockM;
  static_assert(kE == 64 || kE == 96 || kE == 128 || kE == 256, "no sm_90a forward tile for this head dim");
  static_assert(kKeys % 16 == 0, "key blocks of whole k16 steps of P V (and pairs of 8-key dropout tiles)");
  static constexpr int kHeadDim = kE;
  static constexpr int kBlockN = kKeys;
  static constexpr int kColBlocks = (kE + kSwizzleCols - 1) / kSwizzleCols;  // TMA boxes (64-column blocks) per tile row
  static constexpr int kKeepWords = (kBlockN / 2 + 31) / 32;  // dropout's bits of a thread's scores
  static constexpr int kQBytes = kBlockM * kColBlocks * kSwizzleBytes;
  static constexpr int kKvBytes = kBlockN * kColBlocks * kSwizzleBytes;  // one K or V tile
  // Bytes of the layout below with `stages` stages, barriers and alignment slack included.
  static constexpr int smem_bytes(int stages) {
    return kQBytes + 2 * stages * kKvBytes + 8 * (1 + 4 * stages) + kSwizzleAtomBytes;
  }
  // 3 stages where they fit, else 2 (E = 256's 80-key tiles, E = 128's 176-key ones); one stage would
  // serialize the loads and the products (kSmemBytes' assert rules out tiles that 2 do not fit).
  static constexpr int kStages = smem_bytes(3) <= 227 * 1024 ? 3 : 2;
  // Offsets from the 1024-byte aligned base: Q, K[kStages], V[kStages], then the mbarriers.
  static constexpr int kKOffset = kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvBytes;
  static constexpr int kBarOffset = kVOffset + kStages * kKvBytes;
  static constexpr int kBarriers = 1 + 4 * kStages;  // Q full; K full, V full, K empty, V empty per stage
  // Dynamic shared memory asked for: the layout plus the slack to align its base.
  static constexpr int kSmemBytes = kBarOffset + 8 * kBarriers + kSwizzleAtomBytes;
  static_assert(kSmemBytes == smem_bytes(kStages) && kSmemBytes <= 227 * 1024,
                "more dynamic shared memory than an sm_90 CTA may have");
};

// Keys a block of an instance (README "sm_90a forward", table "Tile per head dim and instance"):
// - E = 128, not causal, no mask, no dropout: FlashAttention-3's 176, 2 stages. A block's fixed costs
//   (the row maxima's shuffles, o's rescale by alpha, the turn's barriers and the ring's mbarriers)
//   spread over 176 keys instead of 128; o, s and P take 64 + 88 + 44 = 196 of the 240 registers.
//   Causal calls keep 128 (a 176-key diagonal block wastes more of its products); the mask's loads and
//   Philox's state leave no room for 88 scores (R220-R237 at 128 keys). Until a GPU run has compared
//   them, FASTTX_ATTENTION_SM90_KEYS=128 runs those calls on the 128-key tile (narrow_keys_asked).
// - E = 256: FlashAttention-3's 80 (128 keys would need 224 registers for the fragments alone).
// - Everywhere else 128.
constexpr int sm90_fwd_block_keys(int head_dim, bool causal, bool mask, bool dropout) {
  return head_dim == 256 ? 80 : head_dim == 128 && !causal && !mask && !dropout ? 176 : 128;
}

// The tile of an instance with kKeys keys a block: FlashAttention-3's 192 rows with three consumer
// warpgroups at E = 64 without mask or dropout, whose consumers fit 160 registers (o, s and P 128 of
// them), so three softmaxes share the tensor cores' time of a block instead of two (the E = 64
// products are half E = 128's, too short to hide two warpgroups' softmax); 128 rows, two consumers of
// 240 registers, everywhere else.
template <int kE, bool kMask, bool kDropout, int kKeys>
using Sm90FwdTile = Sm90Fwd<kE, kE == 64 && !kMask && !kDropout ? 3 : 2, kKeys>;

// The kernel's parameters: TMA maps of q (E, L, H, B), k (E, S, Hkv, B), v (E, S, Hkv, B) with boxes of
// 64 x kBlockM (q) and 64 x kBlockN (k, v), of o (E, L, H, B) with boxes of 64 x 64 (a consumer
// warpgroup's rows), and the rest of the call.
struct Sm90FwdParams {
  CUtensorMap q_map, k_map, v_map, o_map;
  AttentionParams p;

  // Every map, prefetched by the thread that initializes the barriers (tma_prefetch_descriptor).
  __device__ __forceinline__ void prefetch_maps() const {
    const CUtensorMap* const maps[] = {&q_map, &k_map, &v_map, &o_map};
    for (const CUtensorMap* map : maps) tma_prefetch_descriptor(map);
  }
};

struct Sm90Barriers {
  uint64_t* q_full;
  uint64_t* k_full;   // [kStages]
  uint64_t* v_full;   // [kStages]
  uint64_t* k_empty;  // [kStages]
  uint64_t* v_empty;  // [kStages]
};

// Key blocks [0, full) need no element checks (all keys < S and, causal, <= every query of the tile);
// blocks [full, end) do.
template <typename C, bool kCausal>
__device__ __forceinline__ void sm90_key_blocks(const AttentionParams& p, int m0, int& full, int& end) {
  const int last_key = kCausal ? min(p.keys, m0 + C::kBlockM) : p.keys;
  full = (kCausal ? min(p.keys, m0 + 1) : p.keys) / C::kBlockN;
  end = (last_key + C::kBlockN - 1) / C::kBlockN;
}

// The producer thread: Q, then K and V of key blocks [0, end) through the ring, K one block ahead of
// V (K 0, K 1, V 0, K 2, V 1, ...), the order the consumers use them in (Q K^T of block j is issued
// with P V of block j - 1), so that a K load never queues behind a V slot still being read.
template <typename C>
__device__ __forceinline__ void sm90_produce(const Sm90FwdParams& params, unsigned char* base, const Sm90Barriers& bar,
                                             int m0, int h, int b, int end) {
  const AttentionParams& p = params.p;
  const int kvh = h / (p.heads / p.kv_heads);
  mbar_arrive_expect_tx(bar.q_full, C::kQBytes);
  for (int cb = 0; cb < C::kColBlocks; ++cb) {
    tma_load_4d(base + cb * C::kBlockM * kSwizzleBytes, &params.q_map, bar.q_full, cb * kSwizzleCols, m0, h, b);
  }
  // Block `block`'s tile of `map` into its stage of the ring at `offset`, once that slot is empty.
  const auto load = [&](const CUtensorMap* map, int offset, uint64_t* full, uint64_t* empty, int block) {
    const int stage = block % C::kStages;
    mbar_wait(empty + stage, ((block / C::kStages) & 1) ^ 1);  // passes at once on the first round
    mbar_arrive_expect_tx(full + stage, C::kKvBytes);
    for (int cb = 0; cb < C::kColBlocks; ++cb) {
      tma_load_4d(base + offset + stage * C::kKvBytes + cb * C::kBlockN * kSwizzleBytes, map, full + stage,
                  cb * kSwizzleCols, block * C::kBlockN, kvh, b);
    }
  };
  load(&params.k_map, C::kKOffset, bar.k_full, bar.k_empty, 0);
  for (int block = 0; block < end; ++block) {
    if (block + 1 < end) load(&params.k_map, C::kKOffset, bar.k_full, bar.k_empty, block + 1);
    load(&params.v_map, C::kVOffset, bar.v_full, bar.v_empty, block);
  }
}

// Issues s (64 x kBlockN scores of this warpgroup, wgmma D layout) = Q K^T over the head dim as one
// wgmma group, k16 step kk reading columns 16 kk .. of column block kk / 4, i.e. 32 (kk % 4) bytes
// into each swizzled row.
template <typename T, typename C>
__device__ __forceinline__ void sm90_scores(float (&s)[C::kBlockN / 2], uint32_t q_rows, uint32_t k_tile) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::kHeadDim / 16; ++kk) {
    const uint32_t col = (kk % 4) * 32;
    const uint64_t a = smem_desc_128b(q_rows + (kk / 4) * C::kBlockM * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    const uint64_t bd = smem_desc_128b(k_tile + (kk / 4) * C::kBlockN * kSwizzleBytes + col, 16, kSwizzleAtomBytes);
    sm90_wgmma_ss<T, C::kBlockN>(s, a, bd, kk > 0);
  }
  wgmma_commit();
}

// Issues o += P V as one wgmma group: P (64 x kBlockN keys) from registers, V (kBlockN x E) the B
// operand read N-major (sm90_accumulate).
template <typename T, typename C>
__device__ __forceinline__ void sm90_pv(float (&o)[C::kHeadDim / 2], uint32_t (&pf)[C::kBlockN / 16][4],
                                        uint32_t v_tile) {
  wgmma_fence();
  sm90_accumulate<T, C::kHeadDim, C::kBlockN, C::kBlockN / 16>(o, pf, v_tile);
  wgmma_commit();
}

// Dropout's keep bits of key block n0 .. n0 + kBlockN - 1 for this thread's scores (philox.h's draw):
// bit e % 32 of keep[e / 32] for s[e]. The wgmma D fragment is the mma C fragment repeated over
// kBlockN / 8 column tiles (primitives_sm90.cuh), so keep_bits_qk draws each pair of tiles as the
// sm_80 forward does: one Philox call a thread per pair (kBlockN = 80: 5 pairs), every value used, pair
// i at the lane's counter of pair 0 plus 2 i. q0: the warp's first query row. Called by every lane of
// the warp (its shuffles).
template <typename C>
__device__ __forceinline__ void sm90_keep_bits(uint32_t (&keep)[C::kKeepWords], const AttentionParams& p,
                                               uint64_t seed, int64_t bh, int q0, int n0, int lane) {
  static_assert(C::kBlockN % 16 == 0, "column tiles in pairs");
#pragma unroll
  for (int w = 0; w < C::kKeepWords; ++w) keep[w] = 0;
  const uint64_t counter = qk_counter(p, bh, q0, n0, lane);
#pragma unroll
  for (int i = 0; i < C::kBlockN / 16; ++i) {
    keep[i / 4] |= keep_bits_qk(p, seed, counter + 2 * i, lane) << (8 * (i % 4));
  }
}

// The online softmax of this thread's rows g, g + 8 of a consumer warpgroup, in base 2. Without a mask
// on raw scores (scale > 0): p = 2^(s scale_log2 - m scale_log2), one FMA; with one on the logits
// s scale_log2 + mask log2 e (add_mask, attention_common.cuh), whose maxima m are then taken. m: the
// maxima; l: this thread's part of the row sums, before dropout (lse is that of the undropped P).
template <typename C, bool kCausal, bool kMask, bool kDropout>
struct Sm90Softmax {
  static constexpr bool kDrops = kDropout;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};

  // What m is in units of: the scale's factor from raw scores to base-2 logits still to apply.
  __device__ __forceinline__ static float unit(const AttentionParams& p) { return kMask ? 1.f : p.scale_log2; }

  // s (key block `block`, scores in the wgmma D layout) -> p, the running maxima and sums updated,
  // then dropped where keep (sm90_keep_bits) says; alpha: the factors the rows' earlier output (o)
  // takes. check: the block needs bound / causal checks.
  __device__ __forceinline__ void exponentiate(float (&s)[C::kBlockN / 2], float (&alpha)[2], const AttentionParams& p,
                                               const MaskRows& mask, const uint32_t (&keep)[C::kKeepWords], int block,
                                               bool check, int row0, int t) {
    const int n0 = block * C::kBlockN;
    const auto key_of = [&](int e) { return n0 + 8 * (e >> 2) + 2 * t + (e & 1); };
    float m_new[2] = {m[0], m[1]};
    if constexpr (kMask) add_mask(s, p.scale_log2, mask, row0, n0 + 2 * t);
#pragma unroll
    for (int e = 0; e < C::kBlockN / 2; ++e) {
      const int r = (e >> 1) & 1;
      if (check) {
        const int key = key_of(e);
        if (key >= p.keys || (kCausal && key > row0 + 8 * r)) s[e] = -INFINITY;
      }
      m_new[r] = fmaxf(m_new[r], s[e]);
    }
    float shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_new[r] = quad_max(m_new[r]);
      // 0 while the row has no key yet: its -inf scores then give 2^-inf = 0, not NaN.
      shift[r] = m_new[r] == -INFINITY ? 0.f : m_new[r] * unit(p);
      alpha[r] = exp2_approx(m[r] * unit(p) - shift[r]);  // 0 while m = -inf
      m[r] = m_new[r];
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int e = 0; e < C::kBlockN / 2; ++e) {
      s[e] = exp2_approx(fmaf(s[e], unit(p), -shift[(e >> 1) & 1]));
      l[(e >> 1) & 1] += s[e];
      if constexpr (kDropout) s[e] = (keep[e / 32] >> (e % 32)) & 1u ? s[e] : 0.f;
    }
  }

  __device__ __forceinline__ static void rescale(float (&o)[C::kHeadDim / 2], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < C::kHeadDim / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
  }
};

// P (the D fragment of the scores after exponentiate) as the A fragments of P V: D columns 16 kk ..
// 16 kk + 15 (s[8 kk .. 8 kk + 7]) are the A fragment of k-step kk.
template <typename T, typename C>
__device__ __forceinline__ void sm90_pack_p(uint32_t (&pf)[C::kBlockN / 16][4], const float (&s)[C::kBlockN / 2]) {
#pragma unroll
  for (int kk = 0; kk < C::kBlockN / 16; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) pf[kk][r] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
  }
}

// O = o / l (0 for a row with no key kept; with dropout times 1 / (1 - p)), through shared memory and
// a TMA store: this warpgroup's 64 rows go to its own Q rows (its last Q K^T has retired; the other
// warpgroups read only their own), swizzled as a TMA box lands, then one thread stores them as
// ceil(E / 64) boxes of 64 x 64; rows past L (and columns past E) are not written. lse = (m unit +
// log2 l) ln 2, +inf for the rows with no key kept, straight to global memory.
template <typename T, typename C, typename Softmax>
__device__ __forceinline__ void sm90_epilogue(const Sm90FwdParams& params, unsigned char* base,
                                              const float (&o)[C::kHeadDim / 2], const Softmax& sm, int wg, int m0,
                                              int b, int h, int t) {
  const AttentionParams& p = params.p;
  const int tid = threadIdx.x % 128;
  unsigned char* rows = base + 64 * wg * kSwizzleBytes;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(sm.l[r]);
    float inv = l > 0.f ? 1.f / l : 0.f;
    if constexpr (Softmax::kDrops) inv /= 1.f - p.dropout_p;  // the kept probabilities' 1 / (1 - p)
    const int row = 16 * (tid / 32) + (tid % 32) / 4 + 8 * r;  // of the warpgroup's 64; row % 8 = g
#pragma unroll
    for (int i = 0; i < C::kHeadDim / 8; ++i) {
      // Columns 8 i + 2 t, + 1: column block i / 8, 16-byte chunk i % 8 of the row, swizzled.
      unsigned char* at = rows + (i / 8) * C::kBlockM * kSwizzleBytes + row * kSwizzleBytes +
                          ((i % 8) ^ (row % 8)) * 16 + 4 * t;
      *reinterpret_cast<uint32_t*>(at) = pack2<T>(o[4 * i + 2 * r] * inv, o[4 * i + 2 * r + 1] * inv);
    }
    const int query = m0 + 64 * wg + row;
    if (t == 0 && query < p.queries) {
      p.lse[(static_cast<int64_t>(b) * p.heads + h) * p.queries + query] =
          l > 0.f ? (sm.m[r] * Softmax::unit(p) + log2f(l)) * kLn2 : INFINITY;
    }
  }
  fence_proxy_async_shared();
  named_barrier_sync(C::kEpilogueBarrier + wg, 128);
  if (tid == 0) {
    for (int cb = 0; cb < C::kColBlocks; ++cb) {
      tma_store_4d(&params.o_map, rows + cb * C::kBlockM * kSwizzleBytes, cb * kSwizzleCols, m0 + 64 * wg, h, b);
    }
    tma_store_commit();
    tma_store_wait_read();
  }
}

// A consumer warpgroup (wg = 0 .. kConsumers - 1): rows 64 wg .. 64 wg + 63 of the tile. Thread 32 w + 4 g + t
// holds rows r0 = 16 w + g and r0 + 8 of them, columns 8 i + 2 t, 8 i + 2 t + 1 (wgmma D layout).
// Turn j (0 .. end) issues Q K^T of block j (j < end) and P V of block j - 1 (j > 0); the softmax of
// block j then runs while P V is in flight (FlashAttention-3's intra-warpgroup overlap): end + 1
// turns, the first and last peeled so that the loop's wgmma pipeline has no branch (ptxas then keeps
// the two groups in flight instead of serializing them, C7514). Live at the peak: o, s and P (E / 2
// + kBlockN / 2 fp32 and kBlockN / 4 packed registers). A mask is read in the softmax, for the thread's own scores (add_mask);
// dropout's keep bits are drawn while the turn's wgmma run.
template <typename T, typename C, bool kCausal, bool kMask, bool kDropout>
__device__ __forceinline__ void sm90_consume(const Sm90FwdParams& params, unsigned char* base, const Sm90Barriers& bar,
                                             int wg, int m0, int h, int b, int full, int end) {
  const AttentionParams& p = params.p;
  const int tid = threadIdx.x % 128;
  const int t = tid % 4;
  const int q0 = m0 + 64 * wg + 16 * (tid / 32);  // the warp's first query
  const int row0 = q0 + (tid % 32) / 4;           // query of row g; row g + 8 is row0 + 8
  const uint32_t q_rows = smem_addr(base) + 64 * wg * kSwizzleBytes;
  const Sm90Turns<C::kConsumers, C::kTurnBarrier> turns{wg, end > 0 ? end + 1 : 0};

  const auto k_tile = [&](int block) { return smem_addr(base + C::kKOffset + block % C::kStages * C::kKvBytes); };
  const auto v_tile = [&](int block) { return smem_addr(base + C::kVOffset + block % C::kStages * C::kKvBytes); };
  const auto parity = [](int block) { return static_cast<uint32_t>(block / C::kStages) & 1; };

  float o[C::kHeadDim / 2] = {};
  uint32_t pf[C::kBlockN / 16][4];  // P of the previous block, the A operand of its P V
  float s[C::kBlockN / 2];          // scores, then P, of the current block
  float alpha[2];                   // the factors o takes for the current block's maxima
  Sm90Softmax<C, kCausal, kMask, kDropout> sm;
  const MaskRows mask = mask_rows(p, b, h);
  const uint64_t seed = kDropout ? load_seed(p) : 0;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
  uint32_t keep[C::kKeepWords];  // of the current block, with dropout
  const auto draw_keep = [&](int block) {
    if constexpr (kDropout) sm90_keep_bits<C>(keep, p, seed, bh, q0, block * C::kBlockN, tid % 32);
  };
  // Once P V of block - 2 has retired: its V slot released, o rescaled for block - 1's maxima and
  // block - 1's P packed as the next P V's operand.
  const auto retire_pv = [&](int block) {
    wgmma_wait<0>(o, pf);
    if (block >= 2) mbar_arrive(bar.v_empty + (block - 2) % C::kStages);
    decltype(sm)::rescale(o, alpha);
    sm90_pack_p<T, C>(pf, s);
  };
  if (end > 0) {
    // Turn 0: Q K^T of block 0 alone. The data is waited for before the turn: a warpgroup waiting
    // for a tile must not hold it.
    mbar_wait(bar.q_full, 0);
    mbar_wait(bar.k_full, 0);
    turns.begin(0);
    sm90_scores<T, C>(s, q_rows, k_tile(0));
    turns.pass(0);
    draw_keep(0);
    wgmma_wait<0>(s);
    mbar_arrive(bar.k_empty);
    sm.exponentiate(s, alpha, p, mask, keep, 0, full == 0, row0, t);
  }
  for (int block = 1; block < end; ++block) {
    retire_pv(block);
    mbar_wait(bar.v_full + (block - 1) % C::kStages, parity(block - 1));
    mbar_wait(bar.k_full + block % C::kStages, parity(block));
    turns.begin(block);
    sm90_scores<T, C>(s, q_rows, k_tile(block));
    sm90_pv<T, C>(o, pf, v_tile(block - 1));
    turns.pass(block);
    // The softmax of this block under P V of the previous one: the scores' group retires first
    // (wait<1>); o and P stay untouched until the second does, at the next retire_pv. That wait is
    // placed past the loop's back edge on purpose: in one basic block ptxas hoists a wgmma wait
    // above independent arithmetic (it did, above the whole softmax, when the wait followed it here).
    draw_keep(block);
    wgmma_wait<1>(s);
    mbar_arrive(bar.k_empty + block % C::kStages);
    sm.exponentiate(s, alpha, p, mask, keep, block, block >= full, row0, t);
    fence_operand(s);  // and the compiler must not sink the softmax below the back edge
  }
  if (end > 0) {
    // Turn end: P V of the last block alone.
    retire_pv(end);
    mbar_wait(bar.v_full + (end - 1) % C::kStages, parity(end - 1));
    turns.begin(end);
    sm90_pv<T, C>(o, pf, v_tile(end - 1));
    turns.pass(end);
  }
  // Waited on every path, the no-key one too (nothing in flight there: a no-op): waited inside the `if`,
  // ptxas could not prove O's registers retired where the epilogue reads them and injected a wait of
  // its own (C7517) in every instance.
  wgmma_wait<0>(o, pf);
  if (end > 0) mbar_arrive(bar.v_empty + (end - 1) % C::kStages);
  sm90_epilogue<T, C>(params, base, o, sm, wg, m0, b, h, t);
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, int kKeys>
__global__ void __launch_bounds__(Sm90FwdTile<kHeadDim, kMask, kDropout, kKeys>::kThreads, 1)
    attention_fwd_sm90_kernel(const __grid_constant__ Sm90FwdParams params) {
  // sm_90a only: the other architectures' objects get a stub that traps, never launched (runs_sm90a).
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Sm90FwdTile<kHeadDim, kMask, kDropout, kKeys>;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* base = smem + swizzle_pad(smem_addr(smem));
  uint64_t* bars = reinterpret_cast<uint64_t*>(base + C::kBarOffset);
  const Sm90Barriers bar{bars, bars + 1, bars + 1 + C::kStages, bars + 1 + 2 * C::kStages,
                         bars + 1 + 3 * C::kStages};
  const int m0 = blockIdx.x * C::kBlockM;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  int full, end;
  sm90_key_blocks<C, kCausal>(params.p, m0, full, end);

  if (threadIdx.x == 0) {
    params.prefetch_maps();
    mbar_init(bar.q_full, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(bar.k_full + s, 1);
      mbar_init(bar.v_full + s, 1);
      mbar_init(bar.k_empty + s, C::kConsumerThreads);
      mbar_init(bar.v_empty + s, C::kConsumerThreads);
    }
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    warpgroup_reg_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0 && end > 0) sm90_produce<C>(params, base, bar, m0, h, b, end);
  } else {
    warpgroup_reg_alloc<C::kConsumerRegs>();
    sm90_consume<T, C, kCausal, kMask, kDropout>(params, base, bar, threadIdx.x / 128 - 1, m0, h, b, full, end);
  }
#else
  __trap();
#endif
}

// Host side: the TMA maps and the launch of one instance; false where it cannot run here
// (attention_sm90.h).
template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, int kKeys>
bool attention_fwd_sm90_run(const AttentionParams& p, cudaStream_t stream) {
  using C = Sm90FwdTile<kHeadDim, kMask, kDropout, kKeys>;
  constexpr auto kernel = attention_fwd_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout, kKeys>;
  if (!runs_sm90a(kernel)) return false;
  Sm90FwdParams params{};
  params.p = p;
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr int E = kHeadDim;
  const int64_t o_strides[3] = {int64_t{p.heads} * p.queries * E, int64_t{p.queries} * E, E};  // o is contiguous
  if (!encode_bhle(&params.q_map, p.q, bf16, E, p.batch, p.heads, p.queries, p.q_strides, C::kBlockM) ||
      !encode_bhle(&params.k_map, p.k, bf16, E, p.batch, p.kv_heads, p.keys, p.k_strides, C::kBlockN) ||
      !encode_bhle(&params.v_map, p.v, bf16, E, p.batch, p.kv_heads, p.keys, p.v_strides, C::kBlockN) ||
      !encode_bhle(&params.o_map, p.o, bf16, E, p.batch, p.heads, p.queries, o_strides, C::kWarpgroupRows)) {
    return false;
  }
  launch(kernel, dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), C::kThreads, C::kSmemBytes,
         stream, params);
  return true;
}

// FASTTX_ATTENTION_SM90_KEYS=128 in the environment (read at each call): the calls of 176-key tiles run
// on the 128-key tile they had before, so that the bench measures both in one run ("fasttx cuda (sm_90a,
// 128-key blocks)", benchmarks/attention.py); the loser goes once a GPU run has compared them.
inline bool narrow_keys_asked() { return env_is("FASTTX_ATTENTION_SM90_KEYS", "128"); }

}  // namespace attn

template <int kHeadDim>
bool attention_fwd_sm90_hdim(const AttentionParams& p, cudaStream_t stream) {
  return attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    constexpr int kKeys = attn::sm90_fwd_block_keys(kHeadDim, kCausal, kMask, kDropout);
    if constexpr (kKeys == 176) {
      if (attn::narrow_keys_asked()) {
        return attn::attention_fwd_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, 128>(p, stream);
      }
    }
    return attn::attention_fwd_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, kKeys>(p, stream);
  });
}

}  // namespace fasttx
