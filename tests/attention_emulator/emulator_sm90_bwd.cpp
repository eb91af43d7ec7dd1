// The sm_90a attention dK/dV kernel (csrc/attention/sm90/attention_bwd_sm90.cuh) compiled for the host,
// as emulator_sm90.cpp compiles the forward: attention/primitives.cuh and attention/sm90/primitives_sm90.cuh
// of this directory replace the real ones, every other line is the real source. The entry point runs
// the whole head-dim-128 backward as attention_bwd_launch does (D kernel, dK/dV, dQ kernel), so the
// sm_90a kernel runs where the launch code picks it: FASTTX_ATTENTION_SM90=1 in the environment and a
// supported call. Called from tests/test_cuda_attention_sm90_bwd_emulated.py.

#include "attention/primitives.cuh"
#include "attention/sm90/primitives_sm90.cuh"

#include "attention/attention_bwd_hdim128.cu"
#include "attention/sm90/attention_bwd_sm90.cu"
#include "attention/sm90/attention_fwd_sm90.cu"  // attention_sm90_enabled
#include "attention_fields.h"

using namespace fasttx;

// fields, ranges and the result as emu_attention's (emulator.cpp, tests/cuda_emulator/params_by_name.h), for the backward
// at head dim 128 on an emulated sm_90a device; *launched: whether an sm_90a kernel ran (initialized
// mbarriers), i.e. the dK/dV kernel was the sm_90a one rather than the sm_80 one.
extern "C" const char* emu_attention_bwd_sm90(const char* const* fields, int n_fields, const int64_t* ranges,
                                              int n_ranges, int* launched) {
  *launched = 0;
  return emu::error_or_null([&] {
    const AttentionBwdParams p = emu::params(emu::bwd_fields(), fields, n_fields);
    if (p.head_dim != attn::Sm90Bwd::kHeadDim) throw std::runtime_error("head_dim must be 128 here");
    emu::set_ranges(ranges, n_ranges);
    attn::emulate_sm90 = true;
    attention_bwd_hdim<attn::Sm90Bwd::kHeadDim>(p, nullptr);
    attn::emulate_sm90 = false;
    *launched = !attn::mbars.empty();
    attn::mbar_check_quiescent();
    attn::wgmma_check_quiescent();
  });
}
