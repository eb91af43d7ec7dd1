#pragma once
// Attention forward, FlashAttention-2 scheme: O = dropout(softmax(scale Q K^T + mask)) V and the
// natural-log log-sum-exp of each row, with the conventions of triton_kernels/attention_fwd.py
// (whose docstring has the math): base-2 logits, online softmax, a fully masked row gives O = 0 and
// lse = +inf, dropout after the row sum (lse is that of the undropped P).
//
// A CTA of 4 warps owns 64 query rows of one (batch, head); warp w owns rows 16w .. 16w+15 and keeps
// their scores, softmax state (running max m, partial sum l) and output accumulator in registers,
// in the mma.m16n8k16 C layout: lane 4g + t holds rows g and g + 8, columns 2t, 2t + 1 of every
// 8-column tile. Q is copied to shared memory once; K and V tiles are streamed through two shared
// stages with cp.async, the next tile's copy in flight while the current one is multiplied.
// S = Q K^T takes A fragments of Q by ldmatrix and B fragments of K by ldmatrix (K rows are B's
// columns); P goes from the S accumulators straight into A fragments (same row / column ownership),
// and V's B fragments come by ldmatrix.trans.

#include "attention/attention_common.cuh"

namespace fasttx {
namespace attn {

template <typename T, int kHeadDim>
constexpr int fwd_smem_bytes() {
  using S = Tile<kHeadDim>;
  return (kBlockM + 4 * S::kBlockN) * S::kPitch * static_cast<int>(sizeof(T));  // Q, 2 x K, 2 x V
}

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const AttentionParams p) {
  using S = Tile<kHeadDim>;
  constexpr int kBlockN = S::kBlockN;
  constexpr int kPitch = S::kPitch;
  constexpr int kNTiles = kBlockN / 8;   // 8-key column tiles of the score block
  constexpr int kDTiles = kHeadDim / 8;  // 8-wide column tiles of the output

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBlockM * kPitch;  // [2][kBlockN][kPitch]
  T* sV = sK + 2 * kBlockN * kPitch;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int m0 = blockIdx.x * kBlockM;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.heads + h;  // B * H may pass INT32_MAX
  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + m0 * p.q_strides[2];
  const MaskRows mask = mask_rows(p, b, h);
  const bool dropout = p.dropout_p > 0.f;
  const uint64_t seed = load_seed(p);

  const KvStream<T, kHeadDim, kCausal> kv(p, b, h, m0, sK, sV);
  copy_tile<kBlockM, kHeadDim>(sQ, q, p.q_strides[2], p.queries - m0, tid);
  if (kv.end > 0) kv.copy(0, 0, tid);
  cp_async_commit();

  float acc[kDTiles][4] = {};
  float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g + 8
  float l_run[2] = {0.f, 0.f};              // this thread's part of the row sums
  const int row0 = m0 + warp * 16 + g;      // global query index of row g
  T* sQw = sQ + warp * 16 * kPitch;         // this warp's rows

  for (int block = 0; block < kv.end; ++block) {
    const int stage = kv.acquire(block, tid);  // this block's K, V (and Q) have landed
    float s[kNTiles][4] = {};
    gemm_nt<T, kHeadDim, kNTiles, kPitch>(s, sQw, kv.k_tile(stage), lane);

    // Online softmax: base-2 logits, new running max (a row is spread over the 4 lanes of a quad).
    const int n0 = block * kBlockN;
    const bool check = block >= kv.full;
    float m_new[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = masked_logit<kCausal>(s[nt][e], row0 + (e >> 1) * 8, n0 + nt * 8 + 2 * t + (e & 1), p, mask, check);
        m_new[e >> 1] = fmaxf(m_new[e >> 1], s[nt][e]);
      }
    }
    float shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_new[r] = quad_max(m_new[r]);
      // 0 while the row has nothing kept: -inf logits then give 2^-inf = 0, not NaN.
      shift[r] = m_new[r] == -INFINITY ? 0.f : m_new[r];
      const float alpha = exp2_approx(m_run[r] - shift[r]);  // 0 while m_run = -inf (acc, l are 0)
      m_run[r] = m_new[r];
      l_run[r] *= alpha;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        acc[dt][2 * r] *= alpha;
        acc[dt][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const uint32_t keep = dropout ? keep_bits_qk(p, seed, bh, m0 + warp * 16, n0 + nt * 8, lane) : 0xFu;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2_approx(s[nt][e] - shift[e >> 1]);
        l_run[e >> 1] += pe;  // before dropout: lse is that of the undropped probabilities
        s[nt][e] = (keep >> e) & 1u ? pe : 0.f;
      }
    }
    gemm_rn<T, kNTiles, kDTiles, kPitch>(acc, s, kv.v_tile(stage), lane);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();
  __syncthreads();  // with no key block, other threads' copies of Q into sQw were never awaited

  // O = acc / l (0 for a row with nothing kept); lse = (m + log2 l) ln 2, +inf for those rows.
  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    if (dropout) inv[r] /= 1.f - p.dropout_p;  // the kept probabilities' 1 / (1 - p)
    lse[r] = l > 0.f ? (m_run[r] + log2f(l)) * kLn2 : INFINITY;
  }
  T* o = static_cast<T*>(p.o) + (bh * p.queries + m0 + warp * 16) * kHeadDim;
  store_rows<T, kHeadDim>(o, p.queries - (m0 + warp * 16), acc, inv, sQw, lane);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (row0 + 8 * r < p.queries) p.lse[bh * p.queries + row0 + 8 * r] = lse[r];
    }
  }
}

}  // namespace attn
}  // namespace fasttx
