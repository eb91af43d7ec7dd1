// The CUDA attention kernels of csrc/attention, compiled for the host: this directory's
// attention/primitives.cuh replaces the real one, and every other line is the real source, launch
// configurations and head-dim dispatch included. Called from tests/test_cuda_attention_emulated.py.

#include "attention/primitives.cuh"  // the emulation (first on the include path)
#include "attention/sm90/primitives_sm90.cuh"  // emulated as sm_80 here (runs_sm90a false): emulator_sm90.cpp runs sm_90a

#include "attention/attention_launch.cpp"
#include "attention/sm90/attention_fwd_sm90.cu"
#include "attention/attention_bwd_hdim128.cu"
#include "attention/attention_bwd_hdim256.cu"
#include "attention/attention_bwd_hdim32.cu"
#include "attention/attention_bwd_hdim64.cu"
#include "attention/attention_bwd_hdim96.cu"
#include "attention/attention_fwd_hdim128.cu"
#include "attention/attention_fwd_hdim256.cu"
#include "attention/attention_fwd_hdim32.cu"
#include "attention/attention_fwd_hdim64.cu"
#include "attention/attention_fwd_hdim96.cu"

// ints: dtype, head_dim, B, H, Hkv, L, S, is_causal, seed, mask_kind, mask_dtype, then the strides of
//   q, k, v (3 each), mask (4), dout, o (3 each); floats: scale, dropout_p;
// ptrs: q, k, v, mask, o, lse, dout, delta, dq, dk, dv; ranges: (address, bytes) of every input.
extern "C" void emu_attention(int backward, const int64_t* ints, const double* floats, void* const* ptrs,
                              const int64_t* ranges, int n_ranges) {
  using namespace fasttx;
  AttentionParams p{};
  p.dtype = static_cast<DType>(ints[0]);
  p.head_dim = static_cast<int>(ints[1]);
  p.batch = static_cast<int>(ints[2]);
  p.heads = static_cast<int>(ints[3]);
  p.kv_heads = static_cast<int>(ints[4]);
  p.queries = static_cast<int>(ints[5]);
  p.keys = static_cast<int>(ints[6]);
  p.is_causal = ints[7] != 0;
  p.seed = ints + 8;  // the emulated device reads host memory
  p.mask_kind = static_cast<MaskKind>(ints[9]);
  p.mask_dtype = static_cast<DType>(ints[10]);
  for (int d = 0; d < 3; ++d) {
    p.q_strides[d] = ints[11 + d];
    p.k_strides[d] = ints[14 + d];
    p.v_strides[d] = ints[17 + d];
    p.dout_strides[d] = ints[24 + d];
    p.o_strides[d] = ints[27 + d];
  }
  for (int d = 0; d < 4; ++d) p.mask_strides[d] = ints[20 + d];
  p.scale = static_cast<float>(floats[0]);
  p.scale_log2 = static_cast<float>(floats[0] * 1.4426950408889634);
  p.dropout_p = static_cast<float>(floats[1]);
  p.q = ptrs[0];
  p.k = ptrs[1];
  p.v = ptrs[2];
  p.mask = ptrs[3];
  p.o = ptrs[4];
  p.lse = static_cast<float*>(ptrs[5]);
  p.dout = ptrs[6];
  p.delta = static_cast<float*>(ptrs[7]);
  p.dq = ptrs[8];
  p.dk = ptrs[9];
  p.dv = ptrs[10];
  attn::global_ranges.clear();
  for (int i = 0; i < n_ranges; ++i) {
    attn::global_ranges.push_back({reinterpret_cast<const char*>(ranges[2 * i]), static_cast<size_t>(ranges[2 * i + 1])});
  }
  if (backward) {
    attention_bwd_launch(p, nullptr);
  } else {
    attention_fwd_launch(p, nullptr);
  }
}
