#pragma once
// Attention forward, FlashAttention-2 scheme: O = dropout(softmax(scale Q K^T + mask)) V and the
// natural-log log-sum-exp of each row, with the conventions of triton_kernels/attention_fwd.py
// (whose docstring has the math): base-2 logits, online softmax, a fully masked row gives O = 0 and
// lse = +inf, dropout after the row sum (lse is that of the undropped P).
//
// A CTA of 4 warps owns FwdTile::kRows query rows of one (batch, head); each warp owns kRowTiles
// consecutive 16-row tiles (32 or 16 rows, see FwdTile) and keeps their scores, softmax state
// (running max m, partial sum l) and output accumulator in registers, in the mma.m16n8k16 C layout:
// lane 4g + t holds rows g and g + 8 of each row tile, columns 2t, 2t + 1 of every 8-column tile.
// Q is copied to shared memory once (and, where registers allow, its A fragments loaded once into
// registers); K and V tiles are streamed through two shared stages with cp.async, the next tile's
// copy in flight while the current one is multiplied. S = Q K^T takes B fragments of K by ldmatrix
// (K rows are B's columns), each shared by the warp's row tiles; P goes from the S accumulators
// straight into A fragments (same row / column ownership), and V's B fragments come by
// ldmatrix.trans. Compile-time switches beside dtype and head dim: causal, mask (none / some, its
// kind and dtype read at run time), dropout (off / on): the unmasked, dropout-free path has no
// per-score branch, and key blocks needing no element checks run code without them.

#include <cfloat>

#include "attention/attention_common.cuh"

namespace fasttx {
namespace attn {

// The forward's tiles, per head dim and variant, where ptxas fits them without spills (README
// "Registers"). Two 16-row tiles per warp (128 rows a CTA) share every K / V fragment loaded from
// shared memory, half the loads per mma; they need E <= 128 (at 256 the 32 x 256 fp32 accumulator
// alone would take a thread's 255 registers) and at E = 128 neither mask nor dropout, with 32-key
// blocks from E = 96, from E = 64 with dropout (the score tile beside the larger accumulator, and
// Philox's state). Q's A fragments stay in registers through the key loop up to E = 64.
template <int kHeadDim, bool kMask, bool kDropout>
struct FwdTile {
  static constexpr int kRowTiles = kHeadDim < 128 || (kHeadDim == 128 && !kMask && !kDropout) ? 2 : 1;
  static constexpr int kRows = 16 * kWarps * kRowTiles;  // query rows per CTA
  static constexpr int kBlockN = kRowTiles == 2 && kHeadDim >= (kDropout ? 64 : 96) ? 32 : Tile<kHeadDim>::kBlockN;  // keys per K / V tile
  static constexpr bool kQInRegisters = kRowTiles == 2 && kHeadDim <= 64;
};

template <typename T, int kHeadDim, bool kMask, bool kDropout>
constexpr int fwd_smem_bytes() {
  using F = FwdTile<kHeadDim, kMask, kDropout>;
  return (F::kRows + 4 * F::kBlockN) * Tile<kHeadDim>::kPitch * static_cast<int>(sizeof(T));  // Q, 2 x K, 2 x V
}

// Flips the sign of the first kRows rows of a shared tile (pitch kPitch), 16 bytes per step.
template <int kRows, int kHeadDim, typename T>
__device__ __forceinline__ void negate_rows(T* smem, int tid) {
  using S = Tile<kHeadDim>;
  for (int i = tid; i < kRows * S::kChunks; i += kThreads) {
    uint4& chunk = *reinterpret_cast<uint4*>(smem + (i / S::kChunks) * S::kPitch + (i % S::kChunks) * 8);
    chunk.x ^= 0x80008000u;
    chunk.y ^= 0x80008000u;
    chunk.z ^= 0x80008000u;
    chunk.w ^= 0x80008000u;
  }
}

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const AttentionParams p) {
  using S = Tile<kHeadDim>;
  using F = FwdTile<kHeadDim, kMask, kDropout>;
  constexpr int kRowTiles = F::kRowTiles;
  constexpr int kRows = F::kRows;
  constexpr int kBlockN = F::kBlockN;
  constexpr int kPitch = S::kPitch;
  constexpr int kNTiles = kBlockN / 8;   // 8-key column tiles of the score block
  constexpr int kDTiles = kHeadDim / 8;  // 8-wide column tiles of the output
  constexpr int kKTiles = kHeadDim / 16;  // 16-wide column tiles of Q (its A fragments)

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kRows * kPitch;  // [2][kBlockN][kPitch]
  T* sV = sK + 2 * kBlockN * kPitch;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int m0 = blockIdx.x * kRows;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;  // B * H may pass INT32_MAX
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + m0 * p.q_strides[2];
  const MaskRows mask = mask_rows(p, b, h);
  const uint64_t seed = load_seed(p);

  const KvStream<T, kHeadDim, kCausal, kRows, kBlockN> kv(p, b, h, m0, sK, sV);
  copy_tile<kRows, kHeadDim>(sQ, q, p.q_strides[2], p.queries - m0, tid);
  cp_async_commit();  // Q alone, awaited now; the first K / V block stays in flight
  if (kv.end > 0) kv.copy(0, 0, tid);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  // The row max is taken over raw scores and the scale applied inside the exp2 FMA, which needs a
  // positive scale: a negative one moves into Q (negated once here, uniformly per launch). A zero
  // scale becomes FLT_MIN: its product with any fp32 score rounds 2^x to what 0 gives, while masked
  // -inf scores stay -inf (0 * -inf would be NaN).
  if (p.scale_log2 < 0.f) {
    negate_rows<kRows, kHeadDim>(sQ, tid);
    __syncthreads();
  }
  const float scale_log2 = fmaxf(fabsf(p.scale_log2), FLT_MIN);

  const int warp_row = warp * 16 * kRowTiles;  // this warp's first row in the tile
  const T* sQw = sQ + warp_row * kPitch;
  uint32_t q_regs[F::kQInRegisters ? kRowTiles : 1][F::kQInRegisters ? kKTiles : 1][4];
  if constexpr (F::kQInRegisters) {
#pragma unroll
    for (int mt = 0; mt < kRowTiles; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKTiles; ++kk) ldmatrix_a<kPitch>(q_regs[mt][kk], sQw, mt, kk, lane);
    }
  }
  auto q_frag = [&](int mt, int kk, uint32_t(&a)[4]) {
    if constexpr (F::kQInRegisters) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = q_regs[mt][kk][i];
    } else {
      ldmatrix_a<kPitch>(a, sQw, mt, kk, lane);
    }
  };

  // Row state per (row tile mt, half r): rows warp_row + 16 mt + 8 r + g of the tile.
  float acc[kRowTiles][kDTiles][4] = {};
  float m_run[kRowTiles][2];  // running max of the base-2 logits
  float l_run[kRowTiles][2];  // this thread's part of the row sums
#pragma unroll
  for (int mt = 0; mt < kRowTiles; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }
  const int row0 = m0 + warp_row + g;  // global query index of row g of row tile 0
  // Logits as the max is taken over them: raw scores without a mask (`unit`, the scale, multiplies in
  // the exp2 FMA), scaled ones with a mask (which adds to scaled scores; unit 1).
  const float unit = kMask ? 1.f : scale_log2;

  for (int block = 0; block < kv.end; ++block) {
    const int stage = kv.acquire(block, tid);  // this block's K and V have landed
    const int n0 = block * kBlockN;
    // Dropout's keep bits, bit 4 nt + e of keep[mt] for s[mt][nt][e], drawn before the scores exist
    // so that Philox's state never sits beside them, a pair of column tiles a call. Every lane reaches
    // keep_bits_qk's shuffles: kDropout and the loop bounds are uniform.
    static_assert(kNTiles * 4 <= 32 && kNTiles % 2 == 0, "a row tile's keep bits fit one register, in pairs");
    uint32_t keep[kRowTiles];
#pragma unroll
    for (int mt = 0; mt < kRowTiles; ++mt) {
      keep[mt] = ~0u;
      if constexpr (kDropout) {
        keep[mt] = 0;
#pragma unroll
        for (int nt = 0; nt < kNTiles; nt += 2) {
          keep[mt] |= keep_bits_qk(p, seed, bh, m0 + warp_row + 16 * mt, n0 + nt * 8, lane) << (4 * nt);
        }
      }
    }
    float s[kRowTiles][kNTiles][4] = {};
    warp_gemm_nt<T, kHeadDim, kRowTiles, kNTiles, kPitch>(s, q_frag, kv.k_tile(stage), lane);

    // The mask's logits, the last row tile first: in the other order the masked instances at E = 64
    // built for sm_90a spilled 8 B (ptxas -v, CUDA 13.0).
    if constexpr (kMask) {
#pragma unroll
      for (int mt = kRowTiles - 1; mt >= 0; --mt) add_mask(s[mt], scale_log2, mask, row0 + 16 * mt, n0 + 2 * t);
    }
    with_checks(block >= kv.full, [&](auto check) {
#pragma unroll
      for (int mt = 0; mt < kRowTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] = logit<kCausal, decltype(check)::value>(
                s[mt][nt][e], row0 + 16 * mt + (e >> 1) * 8, n0 + nt * 8 + 2 * t + (e & 1), 1.f, p);
          }
        }
      }
    });
    // Online softmax, base 2: new running max (a row is spread over the 4 lanes of a quad).
#pragma unroll
    for (int mt = 0; mt < kRowTiles; ++mt) {
      float shift[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float m_block = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) m_block = fmaxf(m_block, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        const float m_new = fmaxf(m_run[mt][r], quad_max(m_block) * unit);
        // 0 while the row has nothing kept: -inf logits then give 2^-inf = 0, not NaN.
        shift[r] = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = exp2_approx(m_run[mt][r] - shift[r]);  // 0 while m_run = -inf (acc, l are 0)
        m_run[mt][r] = m_new;
        l_run[mt][r] *= alpha;
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
          acc[mt][dt][2 * r] *= alpha;
          acc[mt][dt][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2_approx(fmaf(s[mt][nt][e], unit, -shift[e >> 1]));
          l_run[mt][e >> 1] += pe;  // before dropout: lse is that of the undropped probabilities
          s[mt][nt][e] = (keep[mt] >> (4 * nt + e)) & 1u ? pe : 0.f;
        }
      }
    }
    warp_gemm_rn<T, kRowTiles, kNTiles, kDTiles, kPitch>(acc, s, kv.v_tile(stage), lane);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();  // (with no key block: the empty group of the first block)

  // O = acc / l (0 for a row with nothing kept); lse = (m + log2 l) ln 2, +inf for those rows. The
  // output is staged through this warp's rows of sQ, which only this warp read.
  T* o = static_cast<T*>(p.o) + (bh * p.queries + m0 + warp_row) * kHeadDim;
#pragma unroll
  for (int mt = 0; mt < kRowTiles; ++mt) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(l_run[mt][r]);
      inv[r] = l > 0.f ? 1.f / l : 0.f;
      if constexpr (kDropout) inv[r] /= 1.f - p.dropout_p;  // the kept probabilities' 1 / (1 - p)
      const int row = row0 + 16 * mt + 8 * r;
      if (t == 0 && row < p.queries) p.lse[bh * p.queries + row] = l > 0.f ? (m_run[mt][r] + log2f(l)) * kLn2 : INFINITY;
    }
    store_rows<T, kHeadDim>(o + 16 * mt * kHeadDim, p.queries - (m0 + warp_row + 16 * mt), acc[mt], inv,
                            sQ + (warp_row + 16 * mt) * kPitch, lane);
  }
}

}  // namespace attn
}  // namespace fasttx
