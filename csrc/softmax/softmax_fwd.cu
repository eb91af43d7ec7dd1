// Forward of the masked softmax over the last dim of a contiguous (A, B, L, C) tensor x:
//   y = softmax(scale * x + mask),  mask: none, bool (true = keep) or float (added, may be -inf),
// read through its own strides (broadcast dims have stride 0), and optionally causal (column
// c <= l kept in row l of the last two dims, top-left aligned as torch's SDPA). All arithmetic is
// fp32 and y is rounded once, at the store. Rows up to 16384 elements read x and the mask once;
// longer ones read them twice, the second time mostly from L2 (softmax/softmax_layout.cuh).
//
// With z = scale * x + mask over the kept columns and m = max z, y = exp(z - m) / sum exp(z - m):
// every exponent is <= 0, so huge logits cannot overflow. The kernel works in base 2,
// exp(t) = exp2(t * log2 e), with log2 e folded into the scale and the float mask. Exponents are
// formed as fma(x, scale_log2, b - m) (b: the mask term), one rounding of a small number, rather
// than from a rounded z, whose error grows with |z| (2e-5 relative in y for base-2 logits near 1e3).
//
// Online softmax (Milakov & Gimelshein, 2018): each thread keeps the max m_t of the logits it has
// seen and s_t = sum exp2(z - m_t), rescaling s_t by exp2(m_old - m_new) when a chunk raises the max.
// Threads merge their (m, s) pairs once per row, (m, s) + (m', s') = (M, s 2^(m-M) + s' 2^(m'-M))
// with M = max(m, m'), so a row costs one group reduction however many chunks it spans. The
// second pass writes exp2(z - M) / S: from registers for the last chunk (all of a row up to 16384
// elements), reading earlier chunks again. Where the device runs clusters (sm_90), a longer row is
// split over a cluster instead, a chunk a block (launch_row_groups_split): each block merges its
// chunk's pair with the others' through distributed shared memory and writes its chunk from
// registers, so x is read once however long the row.
//
// Nothing kept: m = -inf. Exponents are then taken relative to 0 instead (never -inf - -inf = NaN),
// every exp2 is 0, the sum is 0 and the row is written as 0. Masked entries (bool, causal, past
// the row's end) are excluded by flags rather than by -inf logits, so a masked inf or NaN in x
// cannot leak into the row, as with torch's masked_fill.

#include <cstdint>
#include <type_traits>

#include "common/constants.h"
#include "common/launch.h"
#include "common/static_switch.h"
#include "common/vec.h"
#include "softmax/softmax_layout.cuh"
#include "softmax/softmax.h"

namespace fasttx {
namespace {

using softmax::Layout;

// The exponent offset for a running max m: m itself, or 0 while nothing is kept (m = -inf).
__device__ __forceinline__ float shift_for(float m) { return m == -INFINITY ? 0.f : m; }

// Merges online-softmax states {max, sum of exp2(z - max)}: a <- a + b.
struct MergeOp {
  __device__ __forceinline__ void operator()(float (&a)[2], const float (&b)[2]) const {
    const float m = fmaxf(a[0], b[0]);
    const float shift = shift_for(m);
    // Rounded products: an fma would round only one of them, and merge(a, b), merge(b, a) would
    // differ in the last bit, so the lanes of a butterfly would not agree.
    a[1] = __fmul_rn(a[1], exp2f(a[0] - shift)) + __fmul_rn(b[1], exp2f(b[0] - shift));
    a[0] = m;
  }
};

// Resident 512-thread blocks per SM the kernel must allow (its register budget: 64 for 2, 128 for
// 1). x and a float mask are cached as stored (RawVec: 16-bit values two to a register), so with
// 16-bit x and no mask, a bool mask or a vector-aligned 16-bit float mask the cache takes 16-32
// registers and the kernel fits 64: two long rows a SM, one's loads overlapping the other's
// reduction and stores. The others get 1, said explicitly: told nothing, ptxas squeezes the aligned
// fp32 ones into 64 registers and spills, and 2 would spill in the unaligned 16-bit float-mask
// ones (their strided mask reads). What each instance takes: csrc/README.md, "Registers".
template <typename T, typename M, bool kAligned>
constexpr int min_blocks_per_sm() {
  if constexpr (std::is_void_v<M>) {
    return sizeof(T) == 2 ? 2 : 1;
  } else {
    return sizeof(T) == 2 && (sizeof(M) == 1 || (sizeof(M) == 2 && kAligned)) ? 2 : 1;
  }
}

// Mask elements col .. col + kVec - 1 of a row, converted: one vector access when kAligned (column
// stride 1, vector-aligned rows), else one by one at column stride `stride`, only the first n
// (the rest `fill`).
template <int kVec, bool kAligned, typename M, typename U, typename Convert>
__device__ __forceinline__ void load_mask(const M* mask, int col, int64_t stride, int n, U (&out)[kVec], U fill,
                                          Convert convert) {
  if constexpr (kAligned) {
    load_vec<kVec, true>(mask + col, out, kVec, fill, convert);
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = e < n ? convert(mask[(col + e) * stride]) : fill;
  }
}

// T: x, O: y (T or fp32), M: mask element (void: none, uint8_t: bool, T or fp32: float). A thread
// handles vectors of kVec = 16 bytes of T consecutive elements. kAligned (C a multiple of kVec,
// 16-byte aligned x and y, and a mask with column stride 1 whose rows start vector-aligned) moves
// them with 128-bit accesses (the mask's vector is kVec elements of M: 4 to 32 bytes), otherwise
// element by element with the row's tail masked. One row group per row, the grid covering all rows;
// with row_split > 1, row_split blocks of a cluster per row, a chunk each.
template <typename T, typename O, typename M, bool kAligned>
__global__ void __launch_bounds__(Layout::kMaxThreads, min_blocks_per_sm<T, M, kAligned>())
    softmax_fwd_kernel(const SoftmaxFwdParams p, const int threads_per_row, const int row_split) {
  constexpr int kVec = kVecBytes / sizeof(T);
  static_assert(Layout::kCacheElems % kVec == 0, "a thread caches whole vectors");
  constexpr int kIters = Layout::kCacheElems / kVec;  // vectors a thread caches
  static_assert(Layout::kCacheElems <= 32, "a thread's keep flags fit one word");
  constexpr bool kBoolMask = std::is_same_v<M, uint8_t>;
  constexpr bool kFloatMask = !kBoolMask && !std::is_void_v<M>;
  __shared__ float scratch[2][Layout::kMaxWarps];
  __shared__ float cluster_slot[2];  // this block's {max, sum}, read by its cluster (row_split > 1)

  const Layout::Group grp(threads_per_row);
  // Below, "the row" is the part of it this group holds, columns counted from its first.
  const RowPart part = row_part(grp, p.cols, grp.size * Layout::kCacheElems, row_split);
  const int64_t row = part.row;
  const int first_col = part.first_col;
  const int cols = part.cols;
  // Rows past A * B * L (last block only) still take part in the block-wide reduction.
  const bool valid = row < p.rows;
  const int64_t offset = (valid ? row : 0) * p.cols + first_col;
  const T* __restrict__ x = static_cast<const T*>(p.x) + offset;  // (cols,) this row's part
  O* __restrict__ y = static_cast<O*>(p.y) + offset;              // (cols,) this row's part
  const int r = static_cast<int>(valid ? row : 0);                 // rows <= INT32_MAX
  const int l = r % p.queries;
  const M* __restrict__ mask = nullptr;  // (cols,) this row's part, p.mask_strides[3] apart
  if constexpr (!std::is_void_v<M>) {
    const int b = r / p.queries % p.heads;
    const int a = r / p.queries / p.heads;
    mask = static_cast<const M*>(p.mask) +
           (a * p.mask_strides[0] + b * p.mask_strides[1] + l * p.mask_strides[2] + first_col * p.mask_strides[3]);
  }
  // Columns that may be kept: the causal limit never reads past column l.
  const int n_open = !valid ? 0 : p.is_causal ? max(0, min(cols, l + 1 - first_col)) : cols;
  const int nvec_read = ceil_div(n_open, kVec);       // vectors read; the rest of the row is 0
  const int nvec = valid ? ceil_div(cols, kVec) : 0;  // vectors written
  const int chunk = grp.size * kIters;                // vectors per chunk
  const float sl2 = p.scale_log2;

  // The cached chunk: x, the float mask (both as stored), and flags: bit i * kVec + e of `keep`
  // says whether element e of vector i is kept (read, below n_open, and true in a bool mask).
  RawVec<T, kVec> xv[kIters];
  RawVec<std::conditional_t<kFloatMask, M, T>, kVec> bv[kFloatMask ? kIters : 1];
  uint32_t keep = 0;
  const auto load_chunk = [&](int c0) {
    keep = 0;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      const int col = j * kVec;
      const int n = n_open - col;  // elements of the vector that may be kept (can exceed kVec)
      if (j < nvec_read) {
        // An aligned vector is read whole even where the causal limit cuts it: it lies in the row.
        xv[i].template load<kAligned>(x + col, n);
        bool flags[kVec];
        if constexpr (kBoolMask) {
          load_mask<kVec, kAligned>(mask, col, p.mask_strides[3], n, flags, false, [](uint8_t v) { return v != 0; });
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) flags[e] = true;
        }
        if constexpr (kFloatMask && kAligned) bv[i].template load<true>(mask + col, kVec);
        if constexpr (kFloatMask && !kAligned) {
          bv[i].template load<false>(mask + col * p.mask_strides[3], n, p.mask_strides[3]);
        }
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          if (e < n && flags[e]) keep |= 1u << (i * kVec + e);
        }
      } else {
        xv[i].zero();
        if constexpr (kFloatMask) bv[i].zero();
      }
    }
  };
  const auto kept = [&](int i, int e) { return ((keep >> (i * kVec + e)) & 1u) != 0; };
  const auto bias = [&](int i, int e) {
    if constexpr (kFloatMask) return bv[i][e] * kLog2e<float>;
    return 0.f;
  };

  // First pass: this thread's online state {max z, sum exp2(z - max)}, z = x * scale_log2 + b.
  // The loop bound is the row's, which may differ between the row groups of a block (causal): no
  // barrier inside.
  float state[2] = {-INFINITY, 0.f};
  for (int c0 = 0; c0 < nvec_read; c0 += chunk) {
    load_chunk(c0);
    float m = state[0];
#pragma unroll
    for (int i = 0; i < kIters; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        if (kept(i, e)) m = fmaxf(m, fmaf(xv[i][e], sl2, bias(i, e)));
      }
    const float shift = shift_for(m);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kIters; ++i)
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        if (kept(i, e)) s += exp2f(fmaf(xv[i][e], sl2, bias(i, e) - shift));
      }
    state[1] = state[1] * exp2f(state[0] - shift) + s;
    state[0] = m;
  }
  grp.allreduce(state, scratch, MergeOp{});
  if (row_split > 1) cluster_allreduce(state, cluster_slot, row_split, MergeOp{});
  const float shift = shift_for(state[0]);
  // A zero sum means nothing is kept: the row is 0. (A NaN sum stays NaN, as in torch.)
  const float inv_sum = state[1] == 0.f ? 0.f : 1.f / state[1];

  const auto store_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int j = c0 + i * grp.size + grp.rank;
      if (j >= nvec) continue;
      float out[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        out[e] = kept(i, e) ? exp2f(fmaf(xv[i][e], sl2, bias(i, e) - shift)) * inv_sum : 0.f;
      }
      store_vec<kVec, kAligned>(y + j * kVec, out, cols - j * kVec);
    }
  };
  // The last chunk read is still in registers; the others are read again (chunks past the causal
  // limit are not read at all: load_chunk leaves them unkept, written as 0).
  const int last = nvec_read == 0 ? 0 : (nvec_read - 1) / chunk * chunk;
  store_chunk(last);
  for (int c0 = 0; c0 < nvec; c0 += chunk) {
    if (c0 == last) continue;
    load_chunk(c0);
    store_chunk(c0);
  }
  if (row_split > 1) cluster_wait();  // the cluster has read cluster_slot: it may go
}

using FwdKernel = void (*)(SoftmaxFwdParams, int, int);

// A mask that is not vector-accessible (transposed, broadcast along C, padded rows, misaligned)
// takes x element by element too: a third fewer instances for layouts rare in attention, whose
// strided mask reads cost more than x's anyway.
template <typename T, typename O, typename M>
FwdKernel select_alignment(const SoftmaxFwdParams& p) {
  constexpr int kVec = kVecBytes / sizeof(T);
  // Rows start 16-byte aligned only when C is a multiple of the vector width.
  bool aligned = p.cols % kVec == 0 && is_vec_aligned(p.x) && is_vec_aligned(p.y);
  if constexpr (!std::is_void_v<M>) {
    // Every mask row starts at a whole vector when the row strides are multiples of kVec.
    const int64_t* s = p.mask_strides;
    const int access_bytes = access_elems<M, kVec>() * static_cast<int>(sizeof(M));
    aligned = aligned && s[3] == 1 && s[0] % kVec == 0 && s[1] % kVec == 0 && s[2] % kVec == 0 &&
              is_aligned(p.mask, access_bytes);
  }
  return aligned ? softmax_fwd_kernel<T, O, M, true> : softmax_fwd_kernel<T, O, M, false>;
}

FwdKernel select_fwd_kernel(const SoftmaxFwdParams& p) {
  FwdKernel kernel = nullptr;
  FASTTX_DTYPE_SWITCH(p.input_dtype, T, [&] {
    FASTTX_FP32_OR_SWITCH(p.output_dtype == DType::kFloat32, T, O, [&] {
      switch (p.mask_kind) {
        case MaskKind::kNone:
          kernel = select_alignment<T, O, void>(p);
          break;
        case MaskKind::kBool:
          kernel = select_alignment<T, O, uint8_t>(p);
          break;
        case MaskKind::kFloat:
          FASTTX_FP32_OR_SWITCH(p.mask_dtype == DType::kFloat32, T, M,
                                [&] { kernel = select_alignment<T, O, M>(p); });
          break;
      }
    });
  });
  return kernel;
}

}  // namespace

void softmax_fwd_launch(const SoftmaxFwdParams& p, cudaStream_t stream) {
  const RowConfig cfg = Layout::config(p.cols);
  const FwdKernel kernel = select_fwd_kernel(p);
  launch_row_groups_split(kernel, kernel, cfg, p.rows, p.cols, stream, p);
}

}  // namespace fasttx
