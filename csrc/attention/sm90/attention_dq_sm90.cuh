#pragma once
// Attention backward for sm_90a, FlashAttention-3 scheme: the dQ kernel, head dims 64, 96, 128 and 256, fp16 / bf16,
// causal or not, bool / float masks, dropout (compile-time switches, as the forward's). It replaces
// attention_bwd_q_kernel (attention_bwd_kernel.cuh) with the same math and conventions:
// P = 2^(S scale log2(e) + mask log2(e) - lse log2(e)) from the forward's lse (+inf on a row with no
// key, so P = 0 there), dS = P (dP Z / (1 - p) - D) with D = rowsum(dO O) from the D kernel, which
// runs first, Z dropout's keep mask drawn as the forward draws it (Sm90BwdMath), dQ = scale dS K, the
// scale applied once in the epilogue. A CTA owns a
// block of query rows of one (batch, head) and walks the key blocks they see (causal: up to the
// diagonal), so each dQ row is written once, with no atomics (deterministic), unlike
// FlashAttention-3, which accumulates dQ from the dK / dV kernel with atomics.
//
// A CTA of three warpgroups owns 128 query rows:
// - warpgroup 0, the producer, gives its registers away (setmaxnreg). Its thread 0 issues the TMA
//   loads: Q and dO once ("q_full"), then the K and V tiles of 64 keys into a 3-stage ring
//   ("kv_full" per stage), refilling a stage once both consumers have released it ("kv_empty").
// - warpgroups 1 and 2, the consumers, own 64 rows each and hold dQ (64 x E fp32, E / 2 registers a
//   thread) in a wgmma D fragment. Per key block: S = Q K^T and dP = dO V^T by wgmma m64n64k16 from
//   shared memory (K-major), P and dS on the fp32 fragments, then dQ += dS K by wgmma m64nEk16 with
//   dS from registers (the D fragment of 16 key columns is the A fragment of a k16 step) and K read
//   N-major through its descriptor, as the forward reads V in O += P V. Each thread's lse and D
//   (two rows, fixed for the whole kernel) come straight from global memory, as in the sm_80 kernel:
//   four loads are not worth a trip through shared memory and a barrier.
// Why 64-key blocks (every head dim the same; README "sm_90a backward" has the table): at E = 128 dQ
// takes 64 of a consumer's 240 registers; S and dP of 64 keys take 32 each and
// the packed dS 16 (short-lived). With 128-key blocks S and dP would take 64 each: 192 with dQ
// before P, the packed dS (32), addresses and the exponentials' operands, past what ptxas keeps
// without spilling. 64 rows per warpgroup is wgmma's M; two consumers are what 24 + 2 x 240 <= 512
// registers a thread-slot allow. Shared memory at E = 96, 128 (E = 64: half the tiles): Q, dO 64 KB,
// 3 stages of K, V 96 KB: 160 KB of the 227 KB (one CTA an SM either way: 384 threads at 240 registers).
// Rows past L or S arrive as zeros: padding rows then add nothing (P = 0 from lse = +inf) and are not
// stored; padding keys get P = 0 by the element checks of the last block. A mask is read before the
// exponentials, for the thread's own scores (add_mask, attention_common.cuh); dropout's 32 keep bits of a block (4 Philox
// calls a thread) are drawn while its S and dP wgmma run.
// E = 256 (Sm90Dq's kConsumers, kOverlap): Q and dO of 128 rows take 128 KB, and the loop needs 2
// stages of K, V (64 KB each), 256 KB; so one consumer warpgroup of 64 rows (Q, dO 64 KB + 2 stages 128
// KB: 193.0 KB, 256 threads, 255 registers at launch, setmaxnreg 256). Its dQ takes 128 registers;
// with block j - 1's dS K in flight beside S and dP, the masked instances spilled (up to 64 bytes), so
// there each block's dS K is awaited before the next block's S, and dP is issued after P (ptxas may
// still hoist it above the exponentials, which it does where registers allow).
// The two consumers take turns at issuing their wgmma (Sm90Turns, turns_sm90.cuh: the forward's ping-pong):
// turn j issues block j - 1's dS K and block j's S and dP, so that one warpgroup's dS and P run while the
// other's products occupy the tensor cores. kTurns = false (FASTTX_ATTENTION_SM90_DQ_TURNS=0) leaves
// them out, for the bench to compare; at E = 256, one consumer, there is nobody to take turns with.
// Not yet: a TMA store of dQ.

#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/bwd_common_sm90.cuh"
#include "attention/sm90/turns_sm90.cuh"
#include "common/env.h"

namespace fasttx {
namespace attn {

template <int kE>
struct Sm90Dq : Sm90BwdHead<kE> {
  using Head = Sm90BwdHead<kE>;
  static constexpr int kBlockN = 64;  // keys per streamed block
  static constexpr int kKvBytes = kBlockN * Head::kRowBytes;  // one K or V tile
  // Bytes of the layout below with `consumers` warpgroups of 64 rows and `stages` stages, barriers and
  // alignment slack included.
  static constexpr int smem_bytes(int consumers, int stages) {
    return 2 * 64 * consumers * Head::kRowBytes + stages * 2 * kKvBytes + 8 * (1 + 2 * stages) + kSwizzleAtomBytes;
  }
  // The loop releases a block's stage only once the next block's tiles have arrived, so it needs 2
  // stages at least: two consumers (128 rows) where Q, dO and 2 stages fit, else one (E = 256:
  // 2 x 64 KB + 2 x 64 KB would be 256 KB; 64 rows take 2 x 32 KB + 2 x 64 KB); then 3 stages where
  // they fit.
  static constexpr int kConsumers = smem_bytes(2, 2) <= 227 * 1024 ? 2 : 1;
  static constexpr int kStages = smem_bytes(kConsumers, 3) <= 227 * 1024 ? 3 : 2;
  // Software-pipelined (block j's S and dP issued behind block j - 1's dS K, dP before P) where dQ
  // leaves the registers for it: E <= 128 (dQ 64 registers at most); at E = 256 (128) one product at a
  // time, dP after P.
  static constexpr bool kOverlap = kE <= 128;
  static constexpr int kBlockM = 64 * kConsumers;  // query rows per CTA: a consumer warpgroup's 64 each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  static constexpr int kQBytes = kBlockM * Head::kRowBytes;   // Q or dO
  // Offsets from the 1024-byte aligned base: Q, dO, K[kStages], V[kStages], then the mbarriers.
  static constexpr int kDoOffset = kQBytes;
  static constexpr int kKOffset = 2 * kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvBytes;
  static constexpr int kBarOffset = kVOffset + kStages * kKvBytes;
  static constexpr int kBarriers = 1 + 2 * kStages;  // Q and dO full; K and V full, empty per stage
  // Dynamic shared memory asked for: the layout plus the slack to align its base.
  static constexpr int kSmemBytes = kBarOffset + 8 * kBarriers + kSwizzleAtomBytes;
  static_assert(kSmemBytes == smem_bytes(kConsumers, kStages) && kSmemBytes <= 227 * 1024,
                "more dynamic shared memory than an sm_90 CTA may have");
  // setmaxnreg budgets: 128 x (24 + 2 x 240) <= 64K registers of the SM for the CTA; one consumer
  // takes setmaxnreg's most, 256: at 256 threads a CTA ptxas gives 255 at launch, and an increase
  // may not ask for fewer than a thread holds.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kConsumers == 2 ? 240 : 256;
  static constexpr int kTurnBarrier = 1;  // named barriers 1, 2: the consumers' turns (0 is __syncthreads')
};

// The kernel's parameters (Sm90BwdParams): boxes of 64 x 128 for q, dout, 64 x 64 for k, v.

struct Sm90DqBarriers {
  uint64_t* q_full;    // Q and dO
  uint64_t* kv_full;   // [kStages]: K and V of a key block
  uint64_t* kv_empty;  // [kStages]
};

// The producer's TMA thread: Q and dO of rows m0 .., then K and V of key blocks [0, end) through the ring.
template <typename C>
__device__ __forceinline__ void sm90_dq_produce(const Sm90BwdParams& params, unsigned char* base,
                                                const Sm90DqBarriers& bar, int m0, int h, int b, int end) {
  const int kvh = h / (params.p.heads / params.p.kv_heads);
  mbar_arrive_expect_tx(bar.q_full, 2 * C::kQBytes);
  for (int cb = 0; cb < C::kColBlocks; ++cb) {
    const int col = cb * C::kBlockM * kSwizzleBytes;
    tma_load_4d(base + col, &params.q_map, bar.q_full, cb * kSwizzleCols, m0, h, b);
    tma_load_4d(base + C::kDoOffset + col, &params.do_map, bar.q_full, cb * kSwizzleCols, m0, h, b);
  }
  for (int block = 0; block < end; ++block) {
    const int stage = block % C::kStages;
    mbar_wait(bar.kv_empty + stage, ((block / C::kStages) & 1) ^ 1);  // passes at once on the first round
    mbar_arrive_expect_tx(bar.kv_full + stage, 2 * C::kKvBytes);
    for (int cb = 0; cb < C::kColBlocks; ++cb) {
      const int at = stage * C::kKvBytes + cb * C::kBlockN * kSwizzleBytes;
      tma_load_4d(base + C::kKOffset + at, &params.k_map, bar.kv_full + stage, cb * kSwizzleCols, block * C::kBlockN,
                  kvh, b);
      tma_load_4d(base + C::kVOffset + at, &params.v_map, bar.kv_full + stage, cb * kSwizzleCols, block * C::kBlockN,
                  kvh, b);
    }
  }
}

// s (this warpgroup's 64 x 64 scores of key block n0 ..) -> P in place. Thread 32 w + 4 g + t holds
// rows row0 (= 16 w + g of the warpgroup's) and row0 + 8, keys n0 + 8 i + 2 t, + 1 (wgmma D layout).
// check: the block reaches past S or, causal, past the diagonal of one of the CTA's rows; a padding
// key, loaded as 0, would score 0, and 2^(0 - lse) overflows for a row whose real scores sit far below 0.
template <bool kCausal, typename Math>
__device__ __forceinline__ void sm90_dq_probabilities(float (&s)[32], const AttentionParams& p, const MaskRows& mask,
                                                      const float (&lse2)[2], int n0, int row0, bool check) {
  const int t = threadIdx.x % 4;
  Math::logits(s, p, mask, row0, n0 + 2 * t);
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    const int r = (e >> 1) & 1;
    const int key = n0 + 8 * (e >> 2) + 2 * t + (e & 1);
    s[e] = Math::prob(s[e], lse2[r], p);
    if (check && (key >= p.keys || (kCausal && key > row0 + 8 * r))) s[e] = 0.f;
  }
}

// A consumer warpgroup (wg = 0, 1): rows m0 + 64 wg .. m0 + 64 wg + 63 of head h; key blocks [0,
// end), those from `full` on with element checks.
template <typename T, typename C, bool kCausal, bool kMask, bool kDropout, bool kTurns>
__device__ __forceinline__ void sm90_dq_consume(const AttentionBwdParams& p, unsigned char* base,
                                                const Sm90DqBarriers& bar, int wg, int m0, int h, int b, int full,
                                                int end) {
  const int tid = threadIdx.x % 128;
  const int warp_row0 = m0 + 64 * wg + 16 * (tid / 32);
  const int row0 = warp_row0 + (tid % 32) / 4;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    row_stats(p, bh, i, lse2[r], delta[r]);
  }
  const uint32_t q_rows = smem_addr(base) + 64 * wg * kSwizzleBytes;
  const uint32_t do_rows = smem_addr(base + C::kDoOffset) + 64 * wg * kSwizzleBytes;
  using Math = Sm90BwdMath<kMask, kDropout>;
  const Math math(p);
  const MaskRows mask = mask_rows(p, b, h);

  const auto tile = [&](int offset, int block) {
    return smem_addr(base + offset + block % C::kStages * C::kKvBytes);
  };

  // Software-pipelined: block j's S and dP are issued behind block j - 1's dS K, whose wait retires
  // both dS K and S (wait<1>, dP still in flight), so the tensor cores run dS K, S, dP back to back
  // and the exponentials run under dP. dP's wait opens the next iteration, past the loop's back edge
  // on purpose, as the forward's (ptxas hoists a wgmma wait above independent arithmetic in one
  // basic block: it did, above most of the exponentials, when it followed them here). Without
  // C::kOverlap (E = 256) each wait retires everything in flight: dS K before the next block's S, S
  // before P, and dP is issued after P. Turn j (0 .. end) issues dS K of block j - 1 (j > 0) and S, dP
  // of block j (j < end); the data is waited for before the turn (a warpgroup waiting for a tile must
  // not hold it), the elementwise work done outside it. Without turns (kTurns = false, or one
  // consumer) the schedule is the one before them, instruction for instruction.
  float dq[C::kHeadDim / 2] = {};
  float s[32], dp[32];
  uint32_t dsf[C::kBlockN / 16][4];
  uint32_t keep = ~0u;  // of the block in s, with dropout
  constexpr bool kTaking = kTurns && C::kConsumers > 1;  // one consumer has nobody to take turns with
  const Sm90Turns<kTaking ? C::kConsumers : 1, C::kTurnBarrier> turns{wg, end > 0 ? end + 1 : 0};
  // S of `block` (and dP with C::kOverlap) issued.
  const auto issue_scores = [&](int block) {
    sm90_scores64<T, C::kHeadDim, C::kBlockM, C::kBlockN>(s, q_rows, tile(C::kKOffset, block));
    wgmma_commit();
    if constexpr (C::kOverlap) {
      sm90_scores64<T, C::kHeadDim, C::kBlockM, C::kBlockN>(dp, do_rows, tile(C::kVOffset, block));
      wgmma_commit();
    }
  };
  // P of `block` in s, its keep bits in keep (drawn while the turn's wgmma run); block - 1's dS K retired,
  // its stage released; without C::kOverlap dP issued after P.
  const auto probabilities = [&](int block) {
    if constexpr (kDropout) keep = sm90_bwd_keep_bits<false>(p, math.seed, bh, warp_row0, block * C::kBlockN, tid % 32);
    if constexpr (C::kOverlap) {
      wgmma_wait<1>(s, dq, dsf);
    } else {
      wgmma_wait<0>(s);
    }
    if (block > 0) mbar_arrive(bar.kv_empty + (block - 1) % C::kStages);  // its wgmma have all completed
    sm90_dq_probabilities<kCausal, Math>(s, p, mask, lse2, block * C::kBlockN, row0, block >= full);
    fence_operand(s);  // and the compiler must not sink P below the back edge
    if constexpr (!C::kOverlap) {
      sm90_scores64<T, C::kHeadDim, C::kBlockM, C::kBlockN>(dp, do_rows, tile(C::kVOffset, block));
      wgmma_commit();
    }
  };
  // dS of `block` (Sm90BwdMath::ds), D per row, packed into A fragments: accumulator columns 16 kk ..
  // 16 kk + 15 (s[8 kk .. 8 kk + 7]) into the fragment of k-step kk; a[r] holds row g + 8 (r % 2).
  const auto pack_ds = [&]() {
    wgmma_wait<0>(dp);
#pragma unroll
    for (int kk = 0; kk < C::kBlockN / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int e = 8 * kk + 2 * r;
        dsf[kk][r] = pack2<T>(math.ds(s[e], dp[e], delta[r & 1], keep, e),
                              math.ds(s[e + 1], dp[e + 1], delta[r & 1], keep, e + 1));
      }
    }
  };
  // dQ += dS K of `block` issued (awaited without C::kOverlap).
  const auto issue_gradient = [&](int block) {
    wgmma_fence();
    sm90_accumulate<T, C::kHeadDim, C::kBlockN, C::kBlockN / 16>(dq, dsf, tile(C::kKOffset, block));
    wgmma_commit();
    if constexpr (!C::kOverlap) wgmma_wait<0>(dq, dsf);
  };
  const auto wait_tiles = [&](int block) { mbar_wait(bar.kv_full + block % C::kStages, (block / C::kStages) & 1); };

  if (end > 0) {
    mbar_wait(bar.q_full, 0);
    wait_tiles(0);
    turns.begin(0);
    issue_scores(0);
    turns.pass_inner();  // turn 0 of end + 1 >= 2
    probabilities(0);
  }
  for (int block = 1; block < end; ++block) {
    pack_ds();
    if constexpr (kTaking) wait_tiles(block);  // before the turn
    turns.begin_inner();
    issue_gradient(block - 1);
    if constexpr (!kTaking) wait_tiles(block);  // dS K first: it needs no new tile
    issue_scores(block);
    turns.pass_inner();
    probabilities(block);
  }
  if (end > 0) {
    pack_ds();
    turns.begin_inner();  // turn end >= 1
    issue_gradient(end - 1);
    turns.pass(end);
    wgmma_wait<0>(dq, dsf);
    mbar_arrive(bar.kv_empty + (end - 1) % C::kStages);
  }
  sm90_store_rows<T, C::kHeadDim>(static_cast<T*>(p.dq) + bh * p.queries * C::kHeadDim, row0, p.queries, dq, p.scale);
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, bool kTurns>
__global__ void __launch_bounds__(Sm90Dq<kHeadDim>::kThreads, 1)
    attention_bwd_q_sm90_kernel(const __grid_constant__ Sm90BwdParams params) {
  // sm_90a only: the other architectures' objects get a stub that traps, never launched (runs_sm90a).
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Sm90Dq<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* base = smem + swizzle_pad(smem_addr(smem));
  uint64_t* bars = reinterpret_cast<uint64_t*>(base + C::kBarOffset);
  const Sm90DqBarriers bar{bars, bars + 1, bars + 1 + C::kStages};
  const int m0 = blockIdx.x * C::kBlockM;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  int full, end;
  key_blocks<C::kBlockM, C::kBlockN, kCausal>(params.p, m0, full, end);

  if (threadIdx.x == 0) {
    params.prefetch_maps();
    mbar_init(bar.q_full, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(bar.kv_full + s, 1);
      mbar_init(bar.kv_empty + s, C::kConsumerThreads);
    }
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    warpgroup_reg_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0 && end > 0) sm90_dq_produce<C>(params, base, bar, m0, h, b, end);
  } else {
    warpgroup_reg_alloc<C::kConsumerRegs>();
    sm90_dq_consume<T, C, kCausal, kMask, kDropout, kTurns>(params.p, base, bar, threadIdx.x / 128 - 1, m0, h, b, full,
                                                          end);
  }
#else
  __trap();
#endif
}

// Host side: the launch of one instance through launch_bwd_sm90.
template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, bool kTurns>
bool attention_bwd_q_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Dq<kHeadDim>;
  return launch_bwd_sm90<C, T>(attention_bwd_q_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout, kTurns>, p,
                               dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), stream);
}

// FASTTX_ATTENTION_SM90_DQ_TURNS=0 in the environment (read at each call): the dQ kernel's two consumers
// issue their wgmma without taking turns, as before the turns, so that the bench measures both in one
// run ("fasttx cuda (sm_90a, dQ without turns)", benchmarks/attention.py); the loser goes once a GPU run
// has compared them.
inline bool turns_left_out() { return env_is("FASTTX_ATTENTION_SM90_DQ_TURNS", "0"); }

}  // namespace attn

template <int kHeadDim>
bool attention_bwd_q_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    if constexpr (attn::Sm90Dq<kHeadDim>::kConsumers > 1) {  // one consumer takes no turns
      if (attn::turns_left_out()) {
        return attn::attention_bwd_q_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, false>(p, stream);
      }
    }
    return attn::attention_bwd_q_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, true>(p, stream);
  });
}

}  // namespace fasttx
