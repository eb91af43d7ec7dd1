// The sm_90a attention forward (csrc/attention/sm90) compiled for the host: attention/primitives.cuh
// and attention/sm90/primitives_sm90.cuh of this directory replace the real ones, every other line is
// the real source, tensor maps and launch included. Called from tests/test_cuda_attention_sm90_emulated.py,
// which also checks the emulated TMA and wgmma layouts through the layout entry points below.

#include "attention/primitives.cuh"
#include "attention/sm90/primitives_sm90.cuh"

#include "attention/sm90/attention_fwd_sm90.cu"

using namespace fasttx;

// ints: dtype, B, H, Hkv, L, S, is_causal, strides of q, k, v (3 each); floats: scale; ptrs: q, k, v, o,
// lse; ranges: (address, bytes) of q, k, v. Returns whether the sm_90a kernel was launched.
extern "C" int emu_attention_fwd_sm90(const int64_t* ints, const double* floats, void* const* ptrs,
                                      const int64_t* ranges, int n_ranges) {
  AttentionParams p{};
  p.dtype = static_cast<DType>(ints[0]);
  p.head_dim = 128;
  p.batch = static_cast<int>(ints[1]);
  p.heads = static_cast<int>(ints[2]);
  p.kv_heads = static_cast<int>(ints[3]);
  p.queries = static_cast<int>(ints[4]);
  p.keys = static_cast<int>(ints[5]);
  p.is_causal = ints[6] != 0;
  for (int d = 0; d < 3; ++d) {
    p.q_strides[d] = ints[7 + d];
    p.k_strides[d] = ints[10 + d];
    p.v_strides[d] = ints[13 + d];
  }
  p.scale = static_cast<float>(floats[0]);
  p.scale_log2 = static_cast<float>(floats[0] * 1.4426950408889634);
  p.q = ptrs[0];
  p.k = ptrs[1];
  p.v = ptrs[2];
  p.o = ptrs[3];
  p.lse = static_cast<float*>(ptrs[4]);
  attn::global_ranges.clear();
  for (int i = 0; i < n_ranges; ++i) {
    attn::global_ranges.push_back(
        {reinterpret_cast<const char*>(ranges[2 * i]), static_cast<size_t>(ranges[2 * i + 1])});
  }
  attn::emulate_sm90 = true;
  const bool launched = attention_fwd_sm90_supports(p) && attention_fwd_sm90(p, nullptr);
  attn::emulate_sm90 = false;
  attn::mbar_check_quiescent();
  attn::wgmma_check_quiescent();
  return launched;
}

// ---- layout entry points: the emulated TMA and wgmma against the test's own statement of the layout

// The descriptor the kernel builds (smem_layout_sm90.h).
extern "C" uint64_t emu_smem_desc_128b(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return attn::smem_desc_128b(addr, lbo, sbo);
}

// One TMA box of a (dims[3], dims[2], dims[1], dims[0]) 16-bit tensor at `base` (byte strides of dims
// 1..3) at coordinates c, landed at shared address 1024; `out` receives the 2 box0 box1 shared bytes.
extern "C" void emu_tma_box(const void* base, const int64_t* dims, const int64_t* strides, int box0, int box1,
                            const int* c, unsigned char* out) {
  using namespace attn;
  CUtensorMap map;
  const int64_t d[4] = {dims[0], dims[1], dims[2], dims[3]};
  const int64_t s[3] = {strides[0], strides[1], strides[2]};
  if (!encode_tma_4d(&map, base, true, d, s, box0, box1)) fail("tensor map refused", base);
  global_ranges = {{static_cast<const char*>(base), static_cast<size_t>(strides[2] * dims[3])}};
  smem_bytes = kMaxSmem;
  std::memset(smem, 0xff, kMaxSmem);
  TmaCopy cp{};
  std::memcpy(&cp.map, &map, sizeof(TmaMap));
  cp.dst = 1024;
  for (int i = 0; i < 4; ++i) cp.c[i] = c[i];
  tma_land(cp);
  std::memcpy(out, smem_at(1024, cp.bytes(), 16), cp.bytes());
}

// D (64 x 128, fp32, row-major) = A B through the emulated wgmma's operand decoding, with the shared
// memory image `image` at shared address 1024: A by desc_a (K-major), B by desc_b (N-major if trans_b).
extern "C" void emu_wgmma_ss(const unsigned char* image, int bytes, uint64_t desc_a, uint64_t desc_b, int trans_b,
                             float* out) {
  using namespace attn;
  smem_bytes = kMaxSmem;
  std::memcpy(smem_at(1024, bytes, 16), image, bytes);
  WgmmaOp op{true, false, trans_b != 0, false, desc_a, desc_b, {}, {}};
  for (int m = 0; m < 64; ++m) {
    for (int n = 0; n < 128; ++n) {
      double sum = 0;
      for (int k = 0; k < 16; ++k) sum += double{operand(op, true, m, k)} * operand(op, false, n, k);
      out[m * 128 + n] = static_cast<float>(sum);
    }
  }
}
