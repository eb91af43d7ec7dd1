#pragma once
// Attention backward for sm_90a, FlashAttention-3 scheme (first step): the dK/dV kernel, head dims
// 64, 96, 128 and 256, fp16 / bf16, causal or not, bool / float masks, dropout (compile-time switches, as
// the forward's). It replaces attention_bwd_kv_kernel (attention_bwd_kernel.cuh) with the same math and
// conventions: P^T = 2^(S^T scale log2(e) + mask log2(e) - lse log2(e)) from the forward's lse,
// dS^T = P^T (dP^T Z / (1 - p) - D) with D = rowsum(dO O) from the D kernel, which runs first,
// dV = (P Z)^T dO / (1 - p), dK = scale dS^T Q (Sm90BwdMath; Z: dropout's keep mask, drawn as the
// forward draws it); a CTA owns a block of keys of one (batch, kv head) and
// walks every query head of its GQA group, summing them in registers; each dK / dV row is written once
// (deterministic). dQ is the sm_90a dQ kernel's (attention_dq_sm90.cuh), which runs after it.
//
// A CTA of three warpgroups owns 128 keys:
// - warpgroup 0, the producer, gives its registers away (setmaxnreg). Its thread 0 issues the TMA
//   loads: K and V once, then the Q and dO tiles of 64 queries into a 2-stage ring ("q_full",
//   "do_full" per stage); its warp 1 copies the tile's 64 lse (in base 2; +inf past L, so P = 0
//   there) and D values into the stage with ordinary loads, arriving on "q_full" too. A stage is
//   refilled once both consumers have released it ("empty").
// - warpgroups 1 and 2, the consumers, own 64 keys each and hold dK and dV (64 x E fp32 each, E
//   registers a thread) in wgmma D fragments. Per tile: S^T = K Q^T and dP^T = V dO^T by wgmma
//   m64n64k16 from shared memory (K-major), P^T and dS^T on the fp32 fragments, then dV += P^T dO
//   and dK += dS^T Q by wgmma m64nEk16 with P^T / dS^T from registers (the D fragment of 16
//   query columns is the A fragment of a k16 step) and dO / Q read N-major through the descriptor.
// E = 256 runs it twice (Sm90Grad; the sm_80 kernel's kGradV / kGradK split): a dV pass (S^T, P^T,
// dV += P^T dO: K, Q, dO, 2 stages) then a dK pass (S^T, dP^T, dK += dS^T Q: K, V, Q, dO, one stage),
// each holding one 64 x 256 accumulator, 128 registers a thread, where dK and dV together would take 256.
// Why these tiles (every head dim the same; README "sm_90a backward" has the table): at E = 128 the two
// accumulators take 128 of a consumer's 240 registers; a 64-query tile adds S^T and dP^T (32
// registers each) and their packed fragments (16 each, short-lived), so 128-query tiles (64
// registers each) would not fit, nor at E = 64 (64 + 128 + 64 packed). A mask is read for the thread's own scores by
// add_mask (attention_common.cuh), keys along the fragment's rows; dropout's 32 keep bits of a tile (4 Philox calls a thread) are
// drawn while the tile's S^T and dP^T wgmma run. 64 keys per warpgroup is wgmma's M, and two consumers are
// what 24 + 2 x 240 <= 512 registers a thread-slot allow. Shared memory at E = 96, 128 (E = 64: half
// the tiles): K, V 64 KB, 2 stages of Q, dO 64 KB, lse / D 1 KB: 130 KB of the 227 KB with the
// alignment slack. E = 256: K 64 KB and 2 stages of Q, dO 128 KB (dV pass), K, V 128 KB and one
// stage 64 KB (dK pass), 194.1 and 193.5 KB.
// Tiles are 128B-swizzled as the forward's (smem_layout_sm90.h). Rows past L or S arrive as zeros:
// padding queries then add nothing (Q = dO = 0, P = 0); padding keys reach only their own dK / dV
// rows, never stored.
// Atomic dQ (Sm90Grad::kKVAtomicQ, the opt-in deterministic=False, E <= 128): the kernel also does the
// fifth product, dQ += dS K, and adds it into an fp32 (B, H, L, E) buffer with atomics, so that the dQ
// kernel, which recomputes S and dP (7 products where FlashAttention-3 does 5), does not run. dS is
// held transposed, keys along rows (dS^T), where dQ's wgmma wants queries along its M: each consumer
// stores its 64 rows of dS^T into shared memory and reads them back MN-major (the transpose bit), with
// its 64 rows of K, MN-major too, from the K tile already there: a 64 x E partial over its own keys.
// Why each consumer over its own keys: one product over the CTA's 128 keys would have to be issued by
// one consumer a step, a branch around a wgmma, which ptxas serializes (C7520, every wgmma of the
// kernel); split along E instead, at E = 64 and 96 a half would start inside a swizzled row, which no
// canonical layout allows. The two partials are summed before the atomics, so that a CTA adds 64 x E
// fp32 a step (FlashAttention-2 and -3 add as much per 64 x 128 tile pair), not twice that: each
// consumer passes the half of its columns the other adds through shared memory (by step parity), and
// adds its half of the sum with 8-byte vector reductions (red.global.add.v2.f32) straight from the
// D fragment. The binding scales and casts the buffer (torch ops). FlashAttention-3 instead stages dQ
// in shared memory for a TMA bulk reduction from another warp: fewer instructions on the consumers,
// more shared memory; not tried.
// Not yet: overlap of a tile's S^T with the previous tile's dV / dK wgmma, a TMA store of dK / dV.

#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/bwd_common_sm90.cuh"

namespace fasttx {
namespace attn {

// Which gradients a dK/dV kernel accumulates: both in one pass (E <= 128), or, at E = 256, dV in a
// first pass and dK in a second (launched one after the other; each writes its own gradient once);
// or both and dQ by atomics (E <= 128: the head dims of one pass, dQ's E / 2 accumulator registers beside
// dK and dV's E; at E = 256 these alone take a consumer's registers; Sm90BwdKvqHeadDims).
enum class Sm90Grad { kKV, kV, kK, kKVAtomicQ };

// Whether head dim kE takes two passes (dV, then dK): dK and dV of 64 keys are 2 x E / 2 fp32 registers
// a thread, 256 at E = 256, over the 240 of a consumer before S^T and dP^T.
template <int kE>
constexpr bool sm90_bwd_split = kE > 128;

template <int kE, Sm90Grad kGrad = Sm90Grad::kKV>
struct Sm90Bwd : Sm90BwdHead<kE> {
  static_assert(sm90_bwd_split<kE> == (kGrad == Sm90Grad::kV || kGrad == Sm90Grad::kK),
                "E = 256 takes two passes, the others one");
  using Head = Sm90BwdHead<kE>;
  static constexpr bool kDv = kGrad != Sm90Grad::kK;  // accumulates dV = P^T dO (needs K, Q, dO)
  static constexpr bool kDk = kGrad != Sm90Grad::kV;  // accumulates dK = dS^T Q (dP^T: needs V too)
  static constexpr bool kAtomicDq = kGrad == Sm90Grad::kKVAtomicQ;  // adds dQ = dS K (/ scale) by atomics
  // kAtomicDq at E = 128: dQ's product issued once dV's and dK's have retired. Issued with them, its 64
  // accumulators live beside dK, dV (128) and their packed A fragments (32), and ptxas serialized the
  // wgmma (C7512) and spilled 8 bytes in 6 of 16 instances; at E = 64, 96 (32, 48) they fit.
  static constexpr bool kDqAfter = kAtomicDq && kE == 128;
  static constexpr int kBlockN = 128;  // keys per CTA: two consumer warpgroups of 64
  static constexpr int kBlockM = 64;   // queries per streamed tile
  static constexpr int kThreads = 3 * 128;
  static constexpr int kConsumerThreads = 2 * 128;
  static constexpr int kRowLoaders = 32;  // warp 1 of the producer: lse and D of a tile
  static constexpr int kKvBytes = kBlockN * Head::kRowBytes;    // K or V
  static constexpr int kTileBytes = kBlockM * Head::kRowBytes;  // one Q or dO tile
  static constexpr int kStatBytes = kBlockM * 4;                // lse (base 2) or D of a tile
  static constexpr int kKvTiles = kDk ? 2 : 1;                  // K, and V where dP^T is needed
  // kAtomicDq: dS^T of a tile (128 keys x 64 queries: 64 rows a consumer), and the halves of the dQ
  // partials the consumers pass each other (64 x E / 2 fp32 to each, two sets by step parity).
  static constexpr int kDsBytes = kAtomicDq ? kBlockN * kSwizzleBytes : 0;
  static constexpr int kSwapBytes = kAtomicDq ? 2 * 2 * 64 * (kE / 2) * 4 : 0;
  // Dropout's draw before S^T and dP^T are issued, not while they run: in E = 256's dK pass, dK's 128
  // registers beside the two in-flight fragments leave Philox no room (causal: 8 bytes spilled).
  static constexpr bool kDrawFirst = kGrad == Sm90Grad::kK;
  // Bytes of the layout below with `stages` stages, barriers and alignment slack included.
  static constexpr int smem_bytes(int stages) {
    return kKvTiles * kKvBytes + kDsBytes + kSwapBytes + stages * (2 * kTileBytes + 2 * kStatBytes) +
           8 * (1 + 3 * stages) + kSwizzleAtomBytes;
  }
  // 2 stages where they fit; E = 256's dK pass (K, V 128 KB) has room for one (Q, dO 64 KB).
  static constexpr int kStages = smem_bytes(2) <= 227 * 1024 ? 2 : 1;
  // Offsets from the 1024-byte aligned base: K, V (kDk), dS^T and the dQ halves (kAtomicDq),
  // Q[kStages], dO[kStages], lse[kStages], D[kStages], then the mbarriers.
  static constexpr int kVOffset = kKvBytes;
  static constexpr int kDsOffset = kKvTiles * kKvBytes;
  static constexpr int kSwapOffset = kDsOffset + kDsBytes;
  static constexpr int kQOffset = kSwapOffset + kSwapBytes;
  static constexpr int kDoOffset = kQOffset + kStages * kTileBytes;
  static constexpr int kLseOffset = kDoOffset + kStages * kTileBytes;
  static constexpr int kDeltaOffset = kLseOffset + kStages * kStatBytes;
  static constexpr int kBarOffset = kDeltaOffset + kStages * kStatBytes;
  static constexpr int kBarriers = 1 + 3 * kStages;  // K (and V) full; Q full, dO full, empty per stage
  // Dynamic shared memory asked for: the layout plus the slack to align its base.
  static constexpr int kSmemBytes = kBarOffset + 8 * kBarriers + kSwizzleAtomBytes;
  static_assert(kSmemBytes == smem_bytes(kStages) && kSmemBytes <= 227 * 1024,
                "more dynamic shared memory than an sm_90 CTA may have");
  // setmaxnreg budgets: 128 x (24 + 2 x 240) <= 64K registers of the SM for the CTA.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // kAtomicDq's named barriers: a consumer's dS^T rows stored (one per consumer), the dQ halves passed.
  static constexpr int kDsBarrier = 1;
  static constexpr int kSwapBarrier = 3;
};

// The kernel's parameters (Sm90BwdParams): boxes of 64 x 64 for q, dout, 64 x 128 for k, v.

struct Sm90BwdBarriers {
  uint64_t* kv_full;
  uint64_t* q_full;   // [kStages]: Q by TMA, lse and D by the row loaders
  uint64_t* do_full;  // [kStages]
  uint64_t* empty;    // [kStages]
};

// The query tiles a CTA streams, as steps: every query head of the kv head's group, each from the
// first tile that sees one of the CTA's keys (causal: the tile holding query n0) to the last.
template <typename C>
struct Sm90BwdWalk {
  int first, per_head, steps, head0;

  template <bool kCausal>
  __device__ __forceinline__ static Sm90BwdWalk make(const AttentionParams& p, int n0, int kvh) {
    const int group = p.heads / p.kv_heads;
    const int first = kCausal ? n0 / C::kBlockM : 0;
    const int per_head = max(0, (p.queries + C::kBlockM - 1) / C::kBlockM - first);
    return {first, per_head, group * per_head, kvh * group};
  }
  __device__ __forceinline__ int head(int step) const { return head0 + step / per_head; }
  __device__ __forceinline__ int row(int step) const { return (first + step % per_head) * C::kBlockM; }
};

// The producer's TMA thread: K (and V: C::kDk) of keys n0 .., then Q and dO of every step through the ring.
template <typename C>
__device__ __forceinline__ void sm90_bwd_produce_tiles(const Sm90BwdParams& params, unsigned char* base,
                                                       const Sm90BwdBarriers& bar, const Sm90BwdWalk<C>& walk, int n0,
                                                       int kvh, int b) {
  mbar_arrive_expect_tx(bar.kv_full, C::kKvTiles * C::kKvBytes);
  for (int cb = 0; cb < C::kColBlocks; ++cb) {
    tma_load_4d(base + cb * C::kBlockN * kSwizzleBytes, &params.k_map, bar.kv_full, cb * kSwizzleCols, n0, kvh, b);
    if constexpr (C::kDk) {
      tma_load_4d(base + C::kVOffset + cb * C::kBlockN * kSwizzleBytes, &params.v_map, bar.kv_full, cb * kSwizzleCols,
                  n0, kvh, b);
    }
  }
  for (int step = 0; step < walk.steps; ++step) {
    const int stage = step % C::kStages;
    mbar_wait(bar.empty + stage, ((step / C::kStages) & 1) ^ 1);  // passes at once on the first round
    const int h = walk.head(step), m0 = walk.row(step);
    unsigned char* q_tile = base + C::kQOffset + stage * C::kTileBytes;
    unsigned char* do_tile = base + C::kDoOffset + stage * C::kTileBytes;
    mbar_arrive_expect_tx(bar.q_full + stage, C::kTileBytes);
    for (int cb = 0; cb < C::kColBlocks; ++cb) {
      tma_load_4d(q_tile + cb * C::kBlockM * kSwizzleBytes, &params.q_map, bar.q_full + stage, cb * kSwizzleCols, m0, h, b);
    }
    mbar_arrive_expect_tx(bar.do_full + stage, C::kTileBytes);
    for (int cb = 0; cb < C::kColBlocks; ++cb) {
      tma_load_4d(do_tile + cb * C::kBlockM * kSwizzleBytes, &params.do_map, bar.do_full + stage, cb * kSwizzleCols, m0,
                  h, b);
    }
  }
}

// The producer's row loaders (lane `lane` of warp 1): each step's lse, in base 2, and D into the
// stage, queries m0 + lane and m0 + lane + 32; past L lse = +inf (P = 0) and D = 0.
template <typename C>
__device__ __forceinline__ void sm90_bwd_produce_rows(const AttentionBwdParams& p, unsigned char* base,
                                                      const Sm90BwdBarriers& bar, const Sm90BwdWalk<C>& walk, int b,
                                                      int lane) {
  for (int step = 0; step < walk.steps; ++step) {
    const int stage = step % C::kStages;
    mbar_wait(bar.empty + stage, ((step / C::kStages) & 1) ^ 1);
    // b H + h in 32 bits (B H < 2^31, the binding's limits): a 64-bit product held across the loop
    // spilled at 24 registers in some instances (E = 64, 96 causal).
    const int64_t bh = b * p.heads + walk.head(step);
    float* lse2 = reinterpret_cast<float*>(base + C::kLseOffset + stage * C::kStatBytes);
    float* delta = reinterpret_cast<float*>(base + C::kDeltaOffset + stage * C::kStatBytes);
    for (int r = lane; r < C::kBlockM; r += C::kRowLoaders) {
      const int i = walk.row(step) + r;
      row_stats(p, bh, i, lse2[r], delta[r]);
    }
    mbar_arrive(bar.q_full + stage);  // releases the stores above to the consumers' wait
  }
}

// kAtomicDq: this consumer's 64 rows of the tile's dS^T (its packed A fragments, dsf[kk][r]: key
// row 16 w + g + 8 (r & 1), query columns 16 kk + 8 (r >> 1) + 2 t, + 1) into rows 64 wg .. of the
// dS^T tile, swizzled as a TMA box lands (row % 8 = g: the 4-byte stores of a warp fall in 32
// different banks), fenced for the async proxy, then the warpgroup's barrier. Their shared address.
// Rewritten a step later only once this consumer's wgmma reading them has retired.
template <typename C>
__device__ __forceinline__ uint32_t sm90_bwd_store_ds(unsigned char* base, const uint32_t (&dsf)[4][4], int wg) {
  const int tid = threadIdx.x % 128;
  unsigned char* rows = base + C::kDsOffset + 64 * wg * kSwizzleBytes;
  const int row = 16 * (tid / 32) + (tid % 32) / 4;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int key = row + 8 * (r & 1), chunk = 2 * kk + (r >> 1);  // 16-byte chunk: queries 8 chunk ..
      *reinterpret_cast<uint32_t*>(rows + key * kSwizzleBytes + ((chunk ^ (key % 8)) * 16) + 4 * (tid % 4)) =
          dsf[kk][r];
    }
  }
  fence_proxy_async_shared();
  named_barrier_sync(C::kDsBarrier + wg, 128);
  return smem_addr(rows);
}

// kAtomicDq: the CTA's dQ / scale of a tile, the sum of both consumers' partials (this thread's D
// fragment dq: queries `query` and query + 8, columns 8 i + 2 t, + 1), added into p.dq_accum. Consumer
// wg adds the column tiles i of its half, [wg, wg + 1) E / 16: it passes the other half to the other
// consumer's thread of the same index (same fragment positions) through the swap buffer of the step's
// parity, laid out [pair of the half][thread] (8-byte accesses, consecutive threads consecutive words:
// no bank conflict), then adds what it received to its own half. The set of step j is rewritten at
// step j + 2 only: a consumer reaches that step's barrier after the other has passed step j + 1's,
// hence finished reading step j's. Rows past L skipped.
template <typename C>
__device__ __forceinline__ void sm90_bwd_add_dq(const AttentionBwdParams& p, unsigned char* base,
                                                const float (&dq)[C::kHeadDim / 2], int wg, int step, int64_t bh,
                                                int query) {
  constexpr int kHalf = C::kHeadDim / 16;  // column tiles of 8 a consumer adds
  const int tid = threadIdx.x % 128, t = tid % 4;
  float2* swap = reinterpret_cast<float2*>(base + C::kSwapOffset + (step % 2) * (C::kSwapBytes / 2));
  // The halves as compile-time indices into dq (a run-time index would put it in local memory).
  const auto add = [&]<int kMine>() {
    constexpr int kOther = 1 - kMine;
    float2* to_other = swap + kOther * (2 * kHalf * 128);
    const float2* to_me = swap + kMine * (2 * kHalf * 128);
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int e = 4 * (kOther * kHalf + i);
#pragma unroll
      for (int h = 0; h < 2; ++h) to_other[(2 * i + h) * 128 + tid] = make_float2(dq[e + 2 * h], dq[e + 2 * h + 1]);
    }
    named_barrier_sync(C::kSwapBarrier, C::kConsumerThreads);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (query + 8 * h >= p.queries) continue;
      float* row = p.dq_accum + (bh * p.queries + query + 8 * h) * C::kHeadDim + 2 * t;
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const int e = 4 * (kMine * kHalf + i);
        const float2 got = to_me[(2 * i + h) * 128 + tid];
        red_add_f32x2(row + 8 * (kMine * kHalf + i), dq[e + 2 * h] + got.x, dq[e + 2 * h + 1] + got.y);
      }
    }
  };
  if (wg == 0) {
    add.template operator()<0>();
  } else {
    add.template operator()<1>();
  }
}

// A consumer warpgroup (wg = 0, 1): keys n0 + 64 wg .. n0 + 64 wg + 63. Thread 32 w + 4 g + t holds
// keys key0 = n0 + 64 wg + 16 w + g and key0 + 8 of them; in S^T / dP^T, queries m0 + 8 i + 2 t and
// m0 + 8 i + 2 t + 1 (wgmma D layout).
template <typename T, typename C, bool kCausal, bool kMask, bool kDropout>
__device__ __forceinline__ void sm90_bwd_consume(const AttentionBwdParams& p, unsigned char* base,
                                                 const Sm90BwdBarriers& bar, const Sm90BwdWalk<C>& walk, int wg, int n0,
                                                 int kvh, int b) {
  const int tid = threadIdx.x % 128;
  const int t = tid % 4;
  const int key0 = n0 + 64 * wg + 16 * (tid / 32) + (tid % 32) / 4;
  const uint32_t k_rows = smem_addr(base) + 64 * wg * kSwizzleBytes;
  const uint32_t v_rows = smem_addr(base + C::kVOffset) + 64 * wg * kSwizzleBytes;
  const Sm90BwdMath<kMask, kDropout> math(p);

  float dk[C::kHeadDim / 2] = {};  // C::kDk
  float dv[C::kHeadDim / 2] = {};  // C::kDv
  if (walk.steps > 0) mbar_wait(bar.kv_full, 0);
  for (int step = 0; step < walk.steps; ++step) {
    const int stage = step % C::kStages;
    const uint32_t parity = (step / C::kStages) & 1;
    const int h = walk.head(step), m0 = walk.row(step);
    const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
    const uint32_t q_tile = smem_addr(base + C::kQOffset + stage * C::kTileBytes);
    const uint32_t do_tile = smem_addr(base + C::kDoOffset + stage * C::kTileBytes);
    // Dropout's keep bits of the tile, drawn while S^T and dP^T run; in the dK pass before they are
    // issued (Sm90Bwd::kDrawFirst).
    uint32_t keep = ~0u;
    const auto draw = [&] {
      if constexpr (kDropout) {
        keep = sm90_bwd_keep_bits<true>(p, math.seed, bh, n0 + 64 * wg + 16 * (tid / 32), m0, tid % 32);
      }
    };
    if constexpr (C::kDrawFirst) draw();
    float s[32], dp[32];
    mbar_wait(bar.q_full + stage, parity);
    sm90_scores64<T, C::kHeadDim, C::kBlockN, C::kBlockM>(s, k_rows, q_tile);
    wgmma_commit();
    mbar_wait(bar.do_full + stage, parity);
    if constexpr (C::kDk) {
      sm90_scores64<T, C::kHeadDim, C::kBlockN, C::kBlockM>(dp, v_rows, do_tile);
      wgmma_commit();
    }
    if constexpr (!C::kDrawFirst) draw();
    const MaskRows mask = mask_rows<true>(p, b, h);

    // P^T while dP^T is in flight. Causal: only tiles reaching above the diagonal (a key after a
    // query) check; the others are wholly at or below it.
    wgmma_wait<C::kDk ? 1 : 0>(s);
    const float* lse2 = reinterpret_cast<const float*>(base + C::kLseOffset + stage * C::kStatBytes);
    const float* delta = reinterpret_cast<const float*>(base + C::kDeltaOffset + stage * C::kStatBytes);
    const bool check = kCausal && m0 < n0 + C::kBlockN - 1;
    math.logits(s, p, mask, key0, m0 + 2 * t);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 l = *reinterpret_cast<const float2*>(lse2 + 8 * i + 2 * t);
#pragma unroll
      for (int e = 4 * i; e < 4 * i + 4; ++e) {
        const int key = key0 + 8 * ((e >> 1) & 1), query = m0 + 8 * i + 2 * t + (e & 1);
        s[e] = math.prob(s[e], e & 1 ? l.y : l.x, p);
        if (check && key > query) s[e] = 0.f;
        // kAtomicDq: a padding key (K loaded as 0, score 0) gets P = 2^(0 - lse), inf where the real
        // scores lie far below 0, and dS = inf or NaN: harmless to dK, dV (those rows are never
        // stored), not to dQ = dS K (0 x inf).
        if constexpr (C::kAtomicDq) {
          if (key >= p.keys) s[e] = 0.f;
        }
      }
    }
    if constexpr (C::kDk) wgmma_wait<0>(dp);
    // P^T Z and dS^T, D per query (column), of the gradients this pass accumulates. Accumulator
    // columns 16 kk .. 16 kk + 15 (s[8 kk .. 8 kk + 7]) pack into the A fragment of k-step kk.
    uint32_t pf[4][4], dsf[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float2 d = *reinterpret_cast<const float2*>(delta + 16 * kk + 8 * half + 2 * t);
#pragma unroll
        for (int r = 2 * half; r < 2 * half + 2; ++r) {
          const int e = 8 * kk + 2 * r;
          if constexpr (C::kDv) pf[kk][r] = pack2<T>(math.dropped(s[e], keep, e), math.dropped(s[e + 1], keep, e + 1));
          if constexpr (C::kDk) {
            dsf[kk][r] = pack2<T>(math.ds(s[e], dp[e], d.x, keep, e), math.ds(s[e + 1], dp[e + 1], d.y, keep, e + 1));
          }
        }
      }
    }
    // dV += P^T dO, dK += dS^T Q, and (kAtomicDq) dQ = dS K over this consumer's 64 keys, awaited
    // (the stage is then free).
    uint32_t ds_rows = 0;
    if constexpr (C::kAtomicDq) ds_rows = sm90_bwd_store_ds<C>(base, dsf, wg);
    wgmma_fence();
    if constexpr (C::kDv) sm90_accumulate<T, C::kHeadDim, C::kBlockM, C::kBlockM / 16>(dv, pf, do_tile);
    if constexpr (C::kDk) sm90_accumulate<T, C::kHeadDim, C::kBlockM, C::kBlockM / 16>(dk, dsf, q_tile);
    if constexpr (C::kAtomicDq) {
      float dq[C::kHeadDim / 2];
      if constexpr (C::kDqAfter) {
        wgmma_commit();
        wgmma_wait<0>(dv, dk, pf, dsf);
        wgmma_fence();
      }
      sm90_accumulate_mn<T, C::kHeadDim, C::kBlockN, 64 / 16>(dq, ds_rows, k_rows);
      wgmma_commit();
      wgmma_wait<0>(dv, dk, pf, dsf, dq);
      sm90_bwd_add_dq<C>(p, base, dq, wg, step, bh, m0 + 16 * (tid / 32) + (tid % 32) / 4);
    } else {
      wgmma_commit();
      if constexpr (!C::kDk) {
        wgmma_wait<0>(dv, pf);
      } else if constexpr (!C::kDv) {
        wgmma_wait<0>(dk, dsf);
      } else {
        wgmma_wait<0>(dv, dk, pf, dsf);
      }
    }
    mbar_arrive(bar.empty + stage);  // every wgmma reading this stage has completed
  }
  // Keys < S; rows of a CTA that saw no query are zeros.
  const int64_t rows = (static_cast<int64_t>(b) * p.kv_heads + kvh) * p.keys * C::kHeadDim;
  if constexpr (C::kDk) sm90_store_rows<T, C::kHeadDim>(static_cast<T*>(p.dk) + rows, key0, p.keys, dk, p.scale);
  if constexpr (C::kDv) {
    sm90_store_rows<T, C::kHeadDim>(static_cast<T*>(p.dv) + rows, key0, p.keys, dv, math.dv_scale());
  }
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, Sm90Grad kGrad>
__global__ void __launch_bounds__(Sm90Bwd<kHeadDim, kGrad>::kThreads, 1)
    attention_bwd_kv_sm90_kernel(const __grid_constant__ Sm90BwdParams params) {
  // sm_90a only: the other architectures' objects get a stub that traps, never launched (runs_sm90a).
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Sm90Bwd<kHeadDim, kGrad>;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* base = smem + swizzle_pad(smem_addr(smem));
  uint64_t* bars = reinterpret_cast<uint64_t*>(base + C::kBarOffset);
  const Sm90BwdBarriers bar{bars, bars + 1, bars + 1 + C::kStages, bars + 1 + 2 * C::kStages};
  const int n0 = blockIdx.x * C::kBlockN;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const Sm90BwdWalk<C> walk = Sm90BwdWalk<C>::template make<kCausal>(params.p, n0, kvh);

  if (threadIdx.x == 0) {
    params.prefetch_maps();
    mbar_init(bar.kv_full, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(bar.q_full + s, 1 + C::kRowLoaders);
      mbar_init(bar.do_full + s, 1);
      mbar_init(bar.empty + s, C::kConsumerThreads);
    }
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    warpgroup_reg_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0 && walk.steps > 0) {
      sm90_bwd_produce_tiles<C>(params, base, bar, walk, n0, kvh, b);
    } else if (threadIdx.x / 32 == 1) {
      sm90_bwd_produce_rows<C>(params.p, base, bar, walk, b, threadIdx.x % 32);
    }
  } else {
    warpgroup_reg_alloc<C::kConsumerRegs>();
    sm90_bwd_consume<T, C, kCausal, kMask, kDropout>(params.p, base, bar, walk, threadIdx.x / 128 - 1, n0, kvh, b);
  }
#else
  __trap();
#endif
}

// Host side: one pass of the kernel (grid over key blocks of 128, kv heads, batches) through
// launch_bwd_sm90; false where it cannot run here (attention_sm90.h).
template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, Sm90Grad kGrad>
bool attention_bwd_kv_sm90_pass(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Bwd<kHeadDim, kGrad>;
  return launch_bwd_sm90<C, T>(attention_bwd_kv_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout, kGrad>, p,
                               dim3((p.keys + C::kBlockN - 1) / C::kBlockN, p.kv_heads, p.batch), stream);
}

}  // namespace attn

// dK and dV in one pass, or (sm90_bwd_split) dV then dK. Both passes use the same maps and device
// check, so the second is refused only where the first was.
template <int kHeadDim>
bool attention_bwd_kv_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream) {
  using attn::Sm90Grad;
  return attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    if constexpr (attn::sm90_bwd_split<kHeadDim>) {
      return attn::attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kV>(p, stream) &&
             attn::attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kK>(p, stream);
    } else {
      return attn::attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kKV>(p, stream);
    }
  });
}

template <int kHeadDim>
bool attention_bwd_kvq_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    return attn::attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, attn::Sm90Grad::kKVAtomicQ>(
        p, stream);
  });
}

}  // namespace fasttx
