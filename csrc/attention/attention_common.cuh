#pragma once
// Pieces shared by the forward and backward kernels: tile shapes, global -> shared tile copies,
// the masked base-2 logits and the dropout draw.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention/attention.h"
#include "attention/philox.h"
#include "attention/primitives.cuh"
#include "common/constants.h"

namespace fasttx {
namespace attn {

constexpr int kWarps = 4;  // each owns 16 rows of a 64-row tile (32 of 128 in the forward at E <= 128)
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockM = 16 * kWarps;  // query rows of a CTA of 16-row warps (dQ; the forward at E = 256)
constexpr float kLn2 = 0.6931471805599453f;

template <int kHeadDim>
struct Tile {
  // Keys per streamed tile: the score tile (16 x kBlockN per warp) and the fp32 accumulators
  // (16 x kHeadDim per warp) share a thread's 255 registers.
  static constexpr int kBlockN = kHeadDim <= 128 ? 64 : 32;
  // Shared-memory row pitch in elements: 16 bytes of padding put the 8 rows an ldmatrix reads at
  // one column in 8 different 16-byte bank groups (pitch / 8 is odd in 16-byte units for every head
  // dim), without an XOR swizzle, which 96 (12 chunks a row) would not allow.
  static constexpr int kPitch = kHeadDim + 8;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static_assert(kHeadDim % 32 == 0, "head dims are multiples of 32");
};

// Rows [0, kRows) of a (rows x kHeadDim) tile at `src` (row stride in elements) -> smem (pitch
// kPitch), one cp.async per 16 bytes; rows >= `valid` are zero-filled. Not committed.
template <int kRows, int kHeadDim, typename T>
__device__ __forceinline__ void copy_tile(T* smem, const T* src, int64_t row_stride, int valid, int tid) {
  using S = Tile<kHeadDim>;
#pragma unroll
  for (int i = tid; i < kRows * S::kChunks; i += kThreads) {
    const int row = i / S::kChunks;
    const int col = (i % S::kChunks) * 8;
    const bool ok = row < valid;
    cp_async_16(smem + row * S::kPitch + col, ok ? src + row * row_stride + col : src, ok);
  }
}

// The mask of one (batch, query head) as a thread's C fragments meet it: fragment row a, column c
// (queries along rows, keys along columns; the other way round where kKeysAlongRows, the dK / dV
// kernels' S^T) is element (a, c) at ptr + a row_stride + c col_stride (bytes; 0 strides broadcast),
// for a < rows and c < cols (L and S, or S and L): past them the storage may not exist.
struct MaskRows {
  const char* ptr;
  int64_t row_stride, col_stride;
  int rows, cols;
  MaskKind kind;
  DType dtype;
};

template <bool kKeysAlongRows = false>
__device__ __forceinline__ MaskRows mask_rows(const AttentionParams& p, int b, int h) {
  const int bytes = p.mask_kind == MaskKind::kBool ? 1 : p.mask_dtype == DType::kFloat32 ? 4 : 2;
  const char* ptr = static_cast<const char*>(p.mask);
  if (p.mask_kind != MaskKind::kNone) ptr += (b * p.mask_strides[0] + h * p.mask_strides[1]) * bytes;
  const int64_t query_stride = p.mask_strides[2] * bytes, key_stride = p.mask_strides[3] * bytes;
  if constexpr (kKeysAlongRows) {
    return {ptr, key_stride, query_stride, p.keys, p.queries, p.mask_kind, p.mask_dtype};
  } else {
    return {ptr, query_stride, key_stride, p.queries, p.keys, p.mask_kind, p.mask_dtype};
  }
}

// f(E{}) for the mask's element type E: bool (bytes 0 / 1), __half, __nv_bfloat16 or float. The
// branch is taken once per call of add_mask, not per score: each type's loads and conversions are
// compiled once, inside f.
template <typename F>
__device__ __forceinline__ void with_mask_element(const MaskRows& m, F&& f) {
  if (m.kind == MaskKind::kBool) {
    f(uint8_t{});
  } else if (m.dtype == DType::kFloat32) {
    f(float{});
  } else if (m.dtype == DType::kFloat16) {
    f(__half{});
  } else {
    f(__nv_bfloat16{});
  }
}

// Logit z (already in base-2 units) with mask element v: -inf where a bool mask drops it, plus
// v log2(e) for a float mask (-inf stays -inf).
__device__ __forceinline__ void apply_mask(float& z, uint8_t v) {
  if (!v) z = -INFINITY;
}
__device__ __forceinline__ void apply_mask(float& z, float v) { z += v * kLog2e<float>; }
__device__ __forceinline__ void apply_mask(float& z, __half v) { z += __half2float(v) * kLog2e<float>; }
__device__ __forceinline__ void apply_mask(float& z, __nv_bfloat16 v) { z += __bfloat162float(v) * kLog2e<float>; }

// Mask elements of type E as loaded, as bits: one, or two adjacent ones (c, c + 1) in one load of
// twice the size, element c in the low half (little-endian).
template <typename E>
struct MaskBits {
  using One = std::conditional_t<sizeof(E) == 1, uint8_t, std::conditional_t<sizeof(E) == 2, uint16_t, uint32_t>>;
  using Two = std::conditional_t<sizeof(E) == 1, uint16_t, std::conditional_t<sizeof(E) == 2, uint32_t, uint64_t>>;

  __device__ __forceinline__ static One low(Two two) { return static_cast<One>(two); }
  __device__ __forceinline__ static One high(Two two) { return static_cast<One>(two >> (8 * sizeof(E))); }
  __device__ __forceinline__ static void apply(float& z, One bits) {
    E v;
    __builtin_memcpy(&v, &bits, sizeof(E));
    apply_mask(z, v);
  }
};

// The base-2 logits of a thread's kQuads C-fragment quads: z[q][e] = s * unit plus the mask at fragment
// row `row` + 8 (e >> 1), column `col` + 8 q + (e & 1) (col even), read once per call of the kernel's
// block, with the per-row and per-type work hoisted out of the per-score code:
// - a row past the mask's rows reads row rows - 1 instead (its own storage may not exist; nothing
//   uses a padding row's logits: its outputs are never stored), so each row has one address,
//   computed once, and no load a row test;
// - the element type is dispatched once (with_mask_element);
// - where the column stride is one element, the two rows' addresses are aligned to two elements and
//   every column is in bounds (all blocks but a row's last), adjacent columns c, c + 1 come in one
//   2-8 byte load at a constant offset, and a row stride of 0 (the (B, 1, 1, S) key-padding mask in
//   the forward and dQ) reads one row for both;
// - where the column stride is 0 (key padding in dK / dV, whose fragment rows are keys) each row's
//   element is read once for every column;
// - anything else (transposed, odd-offset or odd-stride views, a row's last block) reads element by
//   element, columns past the mask's cols reading nothing.
template <int kQuads>
__device__ __forceinline__ void add_mask(float (&z)[kQuads][4], float unit, const MaskRows& m, int row, int col) {
#pragma unroll
  for (int q = 0; q < kQuads; ++q) {
#pragma unroll
    for (int e = 0; e < 4; ++e) z[q][e] *= unit;
  }
  const char* at[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) at[r] = m.ptr + min(row + 8 * r, m.rows - 1) * m.row_stride + col * m.col_stride;
  const bool shared = m.row_stride == 0;
  with_mask_element(m, [&](auto element) {
    using Bits = MaskBits<decltype(element)>;
    constexpr int kSize = sizeof(typename Bits::One);
    const bool pairs = m.col_stride == kSize && col + 8 * (kQuads - 1) + 2 <= m.cols &&
                       ((reinterpret_cast<uintptr_t>(at[0]) | reinterpret_cast<uintptr_t>(at[1])) % (2 * kSize)) == 0;
    if (pairs) {
      typename Bits::Two v[kQuads][2];
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
        v[q][0] = load_global<typename Bits::Two>(at[0] + 8 * q * kSize);
        v[q][1] = shared ? v[q][0] : load_global<typename Bits::Two>(at[1] + 8 * q * kSize);
      }
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          Bits::apply(z[q][e], e & 1 ? Bits::high(v[q][e >> 1]) : Bits::low(v[q][e >> 1]));
        }
      }
    } else if (m.col_stride == 0) {
      const typename Bits::One v[2] = {load_global<typename Bits::One>(at[0]), load_global<typename Bits::One>(at[1])};
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (col + 8 * q + (e & 1) < m.cols) Bits::apply(z[q][e], v[e >> 1]);
        }
      }
    } else {
      const char* a[2] = {at[0], at[1]};
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
        const int c = col + 8 * q;
        if (c >= m.cols) break;  // and every later quad
        const bool in = c + 1 < m.cols;
        typename Bits::One v[2][2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          v[r][0] = load_global<typename Bits::One>(a[r]);
          v[r][1] = in ? load_global<typename Bits::One>(a[r] + m.col_stride) : v[r][0];
          a[r] += 8 * m.col_stride;
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (in || (e & 1) == 0) Bits::apply(z[q][e], v[e >> 1][e & 1]);
        }
      }
    }
  });
}

// add_mask of a flat wgmma D fragment (s[4 q + e]: the mma C fragment repeated over 8-column tiles).
template <int kScores>
__device__ __forceinline__ void add_mask(float (&s)[kScores], float unit, const MaskRows& m, int row, int col) {
  static_assert(kScores % 4 == 0, "whole quads");
  add_mask(reinterpret_cast<float (&)[kScores / 4][4]>(s), unit, m, row, col);
}

// Base-2 logit z (s * unit, unit = scale * log2(e), or 1 where the caller applies the scale later,
// inside its exp2 FMA, or where add_mask has made z) with -inf where kCheck finds j past the keys or,
// causal, above the diagonal (diagonal and last blocks only). Resolved at compile time: the unchecked
// logit is s * unit.
template <bool kCausal, bool kCheck>
__device__ __forceinline__ float logit(float s, int i, int j, float unit, const AttentionParams& p) {
  float z = s * unit;
  if constexpr (kCheck) {
    if (j >= p.keys || (kCausal && j > i)) z = -INFINITY;
  }
  return z;
}

// f(std::bool_constant<check>{}): the element checks of key blocks [full, end) become a compile-time
// argument, so the blocks that need none run code without them.
template <typename F>
__device__ __forceinline__ void with_checks(bool check, F&& f) {
  if (check) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// The Philox seed, read once per CTA (0 without dropout: p.seed may be null then).
__device__ __forceinline__ uint64_t load_seed(const AttentionParams& p) {
  return p.dropout_p > 0.f ? static_cast<uint64_t>(*p.seed) : 0;
}

// Dropout keep bits of two adjacent 16 x 8 C-fragment tiles (16 rows, 16 columns) of the scores of
// (batch, query head) bh = b H + h (philox.h has the draw): bit 4c + e is this lane's element c[e] of
// tile c, at row g + 8 (e >> 1) and column 8c + 2t + (e & 1) (g = lane / 4, t = lane % 4). One
// Philox call gives a row's 8 consecutive keys 8k .. 8k + 7, and the 16 x 16 block holds 32 such
// groups (16 rows x 2 groups with keys along columns, 16 queries x 2 groups with keys along rows): each
// lane draws one, and the lanes trade keep bits with shuffles, so every value drawn is used and no
// group is drawn twice. Called by all 32 lanes (the shuffles); rows past L and keys past S draw
// counters that nothing reads back.

// prmt.b32 (PTX's generic mode): byte n of the result is byte s_n & 7 of b:a (a bytes 0-3, b 4-7), s_n
// the selector's nibble n, or with bit 3 of s_n set that byte's sign bit copied into all 8 bits.
// The host build (the emulator) computes the same. (CUDA's __byte_perm documents only the 3 low bits.)
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
#else
  const uint64_t ba = static_cast<uint64_t>(b) << 32 | a;
  uint32_t d = 0;
  for (int n = 0; n < 4; ++n) {
    const uint32_t sel = s >> (4 * n) & 0xFu, byte = static_cast<uint32_t>(ba >> (8 * (sel & 7u))) & 0xFFu;
    d |= ((sel & 8u) ? (byte & 0x80u ? 0xFFu : 0u) : byte) << (8 * n);
  }
  return d;
#endif
}

// Bit m: whether key 8k + m of score row r is kept, `counter` = dropout_counter(r, S, 8k). Both values
// of a word compared at once, without predicates (philox::halves_at_least; ptxas packs 8 compares'
// predicates into a register with P2R only where P0-P6 are free, and in the kernels took a SEL and
// more a key).
__device__ __forceinline__ uint32_t keep_group(const AttentionParams& p, uint64_t seed, uint64_t counter) {
  const philox::Words w = philox::words(seed, counter);
  const uint32_t t2 = p.keep_threshold * 0x10001u;
  uint32_t ge[4];  // bit 15: value 2i >= t; bit 31: value 2i + 1
#pragma unroll
  for (int i = 0; i < 4; ++i) ge[i] = philox::halves_at_least(w.w[i], t2);
  // Byte j of lo all ones iff value j is kept, of hi iff value j + 4 is: prmt's sign-replicating
  // selector nibbles (8 + byte) copy the sign bits 15, 31 (bytes 1, 3) of two words. Then byte j's bits
  // j and j + 4, summed over the bytes by the multiply (distinct bits, no carries), give bit m for
  // value m.
  const uint32_t lo = prmt(ge[0], ge[1], 0xFDB9u), hi = prmt(ge[2], ge[3], 0xFDB9u);
  return (((lo & 0x08040201u) | (hi & 0x80402010u)) * 0x01010101u) >> 24;
}

// Queries along rows (from query q0), keys along columns (from key k0, a multiple of 8): forward, dQ.
// The quad of lanes t = 0 .. 3 of row g holds columns 2t, 2t + 1 of rows g and g + 8 in both tiles:
// the groups u = 0 .. 3 of row g + 8 (u & 1), tile u >> 1. Lane t draws group t (qk_counter), and two
// shuffles (lane strides 1, 2) gather the quad's 32 bits, group u at byte u; lane t takes keys 2t,
// 2t + 1 of each, which are its elements 2 (u & 1), + 1 of tile u >> 1: bits 2u, 2u + 1.
__device__ __forceinline__ uint64_t qk_counter(const AttentionParams& p, int64_t bh, int q0, int k0, int lane) {
  const int g = lane / 4, t = lane % 4;
  return philox::dropout_counter(static_cast<uint64_t>(bh) * p.queries + q0 + g + 8 * (t & 1), p.keys,
                                 k0 + 8 * (t >> 1));
}

// The block's bits from qk_counter(p, bh, q0, k0, lane); the block 16 i keys further on (from k0 + 16 i)
// draws counter + 2 i, which a caller drawing several blocks adds (two 32-bit adds) where ptxas would
// otherwise redo the row's 64-bit multiply-add for each.
__device__ __forceinline__ uint32_t keep_bits_qk(const AttentionParams& p, uint64_t seed, uint64_t counter,
                                                 int lane) {
  const int t = lane % 4;
  uint32_t v = keep_group(p, seed, counter) << (8 * t);
  v |= shfl_xor(v, 1);
  v |= shfl_xor(v, 2);
  v = (v >> (2 * t)) & 0x03030303u;  // byte u's bits 0-1: this lane's keys of group u
  v |= v >> 6;                       // bytes 0, 1 at bits 0-3, bytes 2, 3 at bits 16-19
  return (v & 0xFu) | ((v >> 12) & 0xF0u);
}

// The same from the block's origins (a caller drawing one block).
__device__ __forceinline__ uint32_t keep_bits_qk(const AttentionParams& p, uint64_t seed, int64_t bh, int q0, int k0,
                                                 int lane) {
  return keep_bits_qk(p, seed, qk_counter(p, bh, q0, k0, lane), lane);
}

// Keys along rows (from key k0, a multiple of 8), queries along columns (from query q0): dK / dV.
// Rows 0-7 are key g of group k0, rows 8-15 key g of group k0 + 8, so the 8 lanes g = 0 .. 7 sharing t
// (lane stride 4) hold key g of the same 8 groups u = 4c + 2a + b: query q0 + 8c + 2t + b (tile c,
// column 2t + b), keys k0 + 8a .. (rows 8a ..), the group of this lane's element c[2a + b] of tile c,
// whose result bit is 4c + 2a + b = u. Lane g draws group g (kq_counter); three xor-shuffle butterflies
// (lane strides 4, 8, 16) then transpose the 8 x 8 bits (lane g's bit m: key m of group g) over those
// lanes, each swapping bit d of the lane's g with bit d of the bit position, so that lane g ends with
// key g of group u at bit u.
__device__ __forceinline__ uint64_t kq_counter(const AttentionParams& p, int64_t bh, int k0, int q0, int lane) {
  const int g = lane / 4, t = lane % 4;
  return philox::dropout_counter(static_cast<uint64_t>(bh) * p.queries + q0 + 8 * (g >> 2) + 2 * t + (g & 1),
                                 p.keys, k0 + 8 * ((g >> 1) & 1));
}

// The block's bits from kq_counter(p, bh, k0, q0, lane); the block 16 i queries further on (from q0 + 16 i)
// draws counter + 16 i ceil(S / 8).
__device__ __forceinline__ uint32_t keep_bits_kq(const AttentionParams& p, uint64_t seed, uint64_t counter,
                                                 int lane) {
  const int g = lane / 4;
  uint32_t v = keep_group(p, seed, counter);
#pragma unroll
  for (int d = 1; d < 8; d *= 2) {
    const uint32_t low = d == 1 ? 0x55u : d == 2 ? 0x33u : 0x0Fu;  // positions with bit d clear
    const uint32_t other = shfl_xor(v, 4 * d);
    // A lane with bit d of g set keeps its bits at positions with bit d set and takes the partner's
    // bits there into its positions with bit d clear; a lane with it clear, the other way round.
    v = (g & d) ? (v & ~low) | ((other >> d) & low) : (v & low) | ((other << d) & (low << d));
  }
  return v;
}

// The same from the block's origins (a caller drawing one block).
__device__ __forceinline__ uint32_t keep_bits_kq(const AttentionParams& p, uint64_t seed, int64_t bh, int k0, int q0,
                                                 int lane) {
  return keep_bits_kq(p, seed, kq_counter(p, bh, k0, q0, lane), lane);
}

// Key blocks [0, full) need no element checks: all their keys < S and, causal, <= every query of the
// kRows-row tile starting at m0. Blocks [full, end) do.
template <int kRows, int kBlockN, bool kCausal>
__device__ __forceinline__ void key_blocks(const AttentionParams& p, int m0, int& full, int& end) {
  const int last_key = kCausal ? min(p.keys, m0 + kRows) : p.keys;
  const int full_keys = kCausal ? min(p.keys, m0 + 1) : p.keys;
  full = full_keys / kBlockN;
  end = (last_key + kBlockN - 1) / kBlockN;
}

// The key / value tiles that a CTA owning the kRows queries from m0 streams (forward, dQ): key blocks
// [0, end), the first `full` of them free of element checks, through two shared stages each of K
// and V (sK, sV: [2][kBlockN][kPitch]) so that the next block's copy is in flight during this one's math.
template <typename T, int kHeadDim, bool kCausal, int kRows, int kBlockN = Tile<kHeadDim>::kBlockN>
struct KvStream {
  static constexpr int kPitch = Tile<kHeadDim>::kPitch;
  const AttentionParams& p;
  const T* k;
  const T* v;
  T* sK;
  T* sV;
  int full, end;

  __device__ __forceinline__ KvStream(const AttentionParams& params, int b, int h, int m0, T* sk, T* sv)
      : p(params), sK(sk), sV(sv) {
    const int kvh = h / (p.heads / p.kv_heads);
    k = static_cast<const T*>(p.k) + b * p.k_strides[0] + kvh * p.k_strides[1];
    v = static_cast<const T*>(p.v) + b * p.v_strides[0] + kvh * p.v_strides[1];
    key_blocks<kRows, kBlockN, kCausal>(p, m0, full, end);
  }

  // Starts copying `block` into `stage` (not committed).
  __device__ __forceinline__ void copy(int block, int stage, int tid) const {
    const int n0 = block * kBlockN;
    copy_tile<kBlockN, kHeadDim>(k_tile(stage), k + n0 * p.k_strides[2], p.k_strides[2], p.keys - n0, tid);
    copy_tile<kBlockN, kHeadDim>(v_tile(stage), v + n0 * p.v_strides[2], p.v_strides[2], p.keys - n0, tid);
  }

  // Starts the next block's copy, then waits until `block`'s tiles (and whatever was committed with
  // the first) are in shared memory for every thread; returns their stage.
  __device__ __forceinline__ int acquire(int block, int tid) const {
    const int stage = block & 1;
    if (block + 1 < end) copy(block + 1, stage ^ 1, tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    return stage;
  }

  __device__ __forceinline__ T* k_tile(int stage) const { return sK + stage * kBlockN * kPitch; }
  __device__ __forceinline__ T* v_tile(int stage) const { return sV + stage * kBlockN * kPitch; }
};

// A fragment (mma layout) of rows [16 mt, 16 mt + 16), columns [16 kk, 16 kk + 16) of a row-major
// shared tile `rows` (pitch kPitch), by ldmatrix.
template <int kPitch, typename T>
__device__ __forceinline__ void ldmatrix_a(uint32_t (&a)[4], const T* rows, int mt, int kk, int lane) {
  ldmatrix_x4(a, rows + (16 * mt + (lane & 15)) * kPitch + kk * 16 + (lane >> 4) * 8);
}

// C (16 kMTiles x 8 kNTiles, this warp's) += A B^T over kK columns, A's fragments from
// a_frag(mt, kk, a) (shared memory or registers), B: kNTiles * 8 rows of a shared tile (row-major,
// pitch kPitch): S = Q K^T and dP = dO V^T, or their transposes K Q^T and V dO^T in the backward. B's
// rows are the mma's B columns: plain ldmatrix. Each B fragment serves all kMTiles row tiles, so two
// row tiles halve the shared-memory loads per mma.
template <typename T, int kK, int kMTiles, int kNTiles, int kPitch, typename AFrag>
__device__ __forceinline__ void warp_gemm_nt(float (&c)[kMTiles][kNTiles][4], AFrag&& a_frag, const T* b_rows,
                                             int lane) {
  static_assert(kNTiles % 2 == 0, "B fragments come in pairs of 8-row tiles");
  const T* b_lane = b_rows + ((lane & 7) + ((lane >> 4) << 3)) * kPitch + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) a_frag(mt, kk, a[mt]);
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b_lane + np * 16 * kPitch + kk * 16);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma_16816<T>(c[mt][2 * np], a[mt], bf[0], bf[1]);
        mma_16816<T>(c[mt][2 * np + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// warp_gemm_nt for one row tile, A: the warp's 16 rows of a shared tile (the backward's products).
template <typename T, int kK, int kNTiles, int kPitch>
__device__ __forceinline__ void gemm_nt(float (&c)[kNTiles][4], const T* a_rows, const T* b_rows, int lane) {
  warp_gemm_nt<T, kK, 1, kNTiles, kPitch>(
      reinterpret_cast<float (&)[1][kNTiles][4]>(c),
      [&](int mt, int kk, uint32_t (&a)[4]) { ldmatrix_a<kPitch>(a, a_rows, mt, kk, lane); }, b_rows, lane);
}

// C (16 kMTiles x 8 kDTiles) += A B, A: a 16 kMTiles x 8 kATiles fp32 tile in C layout (P, dS or their
// transposes), rounded to T, B: the kATiles * 8 rows of a shared tile (row-major, pitch kPitch):
// O += P V, dQ += dS K, dV += P^T dO, dK += dS^T Q. A's C-layout accumulators of column tiles 2kk,
// 2kk + 1 are exactly the A fragment of columns 16kk .. 16kk + 15; B's fragments come by
// ldmatrix.trans, each serving all kMTiles row tiles.
template <typename T, int kMTiles, int kATiles, int kDTiles, int kPitch>
__device__ __forceinline__ void warp_gemm_rn(float (&c)[kMTiles][kDTiles][4], const float (&a_acc)[kMTiles][kATiles][4],
                                             const T* b_rows, int lane) {
  static_assert(kATiles % 2 == 0 && kDTiles % 2 == 0, "tiles come in pairs");
  const T* b_lane = b_rows + ((lane & 7) + ((lane >> 3) & 1) * 8) * kPitch + (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < kATiles / 2; ++kk) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      const float(&lo)[4] = a_acc[mt][2 * kk];
      const float(&hi)[4] = a_acc[mt][2 * kk + 1];
      a[mt][0] = pack2<T>(lo[0], lo[1]);
      a[mt][1] = pack2<T>(lo[2], lo[3]);
      a[mt][2] = pack2<T>(hi[0], hi[1]);
      a[mt][3] = pack2<T>(hi[2], hi[3]);
    }
#pragma unroll
    for (int dp = 0; dp < kDTiles / 2; ++dp) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b_lane + kk * 16 * kPitch + dp * 16);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma_16816<T>(c[mt][2 * dp], a[mt], bf[0], bf[1]);
        mma_16816<T>(c[mt][2 * dp + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// warp_gemm_rn for one row tile (the backward's products).
template <typename T, int kATiles, int kDTiles, int kPitch>
__device__ __forceinline__ void gemm_rn(float (&c)[kDTiles][4], const float (&a_acc)[kATiles][4], const T* b_rows,
                                        int lane) {
  warp_gemm_rn<T, 1, kATiles, kDTiles, kPitch>(reinterpret_cast<float (&)[1][kDTiles][4]>(c),
                                               reinterpret_cast<const float (&)[1][kATiles][4]>(a_acc), b_rows, lane);
}

// Writes a warp's 16 x kHeadDim fp32 accumulator, row g scaled by scale[0] and row g + 8 by scale[1],
// to `dst` (contiguous rows of kHeadDim, the first `rows` of the 16 exist): staged through the warp's
// 16 rows of shared memory at `stage` (pitch kPitch, free for this warp) so that each lane stores 16
// bytes at a time.
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_rows(T* dst, int rows, const float (&acc)[kHeadDim / 8][4], const float (&scale)[2],
                                           T* stage, int lane) {
  using S = Tile<kHeadDim>;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int dt = 0; dt < kHeadDim / 8; ++dt) {
    *reinterpret_cast<uint32_t*>(stage + g * S::kPitch + dt * 8 + 2 * t) =
        pack2<T>(acc[dt][0] * scale[0], acc[dt][1] * scale[0]);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * S::kPitch + dt * 8 + 2 * t) =
        pack2<T>(acc[dt][2] * scale[1], acc[dt][3] * scale[1]);
  }
  __syncwarp();
#pragma unroll
  for (int i = lane; i < 16 * S::kChunks; i += 32) {
    const int row = i / S::kChunks;
    const int col = (i % S::kChunks) * 8;
    if (row < rows) {
      *reinterpret_cast<uint4*>(dst + row * kHeadDim + col) =
          *reinterpret_cast<const uint4*>(stage + row * S::kPitch + col);
    }
  }
}

// Query row i's statistics for the backward: the forward's lse in base 2 (+inf past L, so that P = 0
// there) and D = rowsum(dO O) (0 past L); bh = b H + h.
__device__ __forceinline__ void row_stats(const AttentionBwdParams& p, int64_t bh, int i, float& lse2, float& delta) {
  lse2 = i < p.queries ? p.lse[bh * p.queries + i] * kLog2e<float> : INFINITY;
  delta = i < p.queries ? p.delta[bh * p.queries + i] : 0.f;
}

// Max (or sum) over the 4 lanes of a quad, which share the rows of a C fragment.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, shfl_xor(v, 1));
  return fmaxf(v, shfl_xor(v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += shfl_xor(v, 1);
  return v + shfl_xor(v, 2);
}

}  // namespace attn
}  // namespace fasttx
