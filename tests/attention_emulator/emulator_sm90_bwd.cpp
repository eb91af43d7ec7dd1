// The sm_90a attention dK/dV and dQ kernels (csrc/attention/sm90/attention_{bwd,dq}_sm90.cuh) compiled for the host,
// as emulator_sm90.cpp compiles the forward: attention/primitives.cuh and attention/sm90/primitives_sm90.cuh
// of this directory replace the real ones, every other line is the real source. The entry point runs
// the whole head-dim-128 backward as attention_bwd_launch does (D kernel, dK/dV, dQ kernel), so the
// sm_90a kernels run where the launch code picks them: FASTTX_ATTENTION_SM90=1 in the environment and a
// supported call. Called from tests/test_cuda_attention_sm90_bwd_emulated.py.

#include "attention/primitives.cuh"
#include "attention/sm90/primitives_sm90.cuh"

#include "attention/attention_bwd_hdim128.cu"
#include "attention/sm90/attention_bwd_sm90.cu"
#include "attention/sm90/attention_dq_sm90.cu"
#include "attention/sm90/attention_fwd_sm90.cu"  // attention_sm90_enabled
#include "attention_fields.h"

#include <algorithm>

using namespace fasttx;

namespace {

// The instance (dtype, causal) of each sm_90a backward kernel, as launch() records it.
template <typename T, bool kCausal>
struct KvInstances {
  static const void* ptr() {
    return reinterpret_cast<const void*>(&attn::attention_bwd_kv_sm90_kernel<T, attn::Sm90Bwd::kHeadDim, kCausal>);
  }
};
template <typename T, bool kCausal>
struct DqInstances {
  static const void* ptr() {
    return reinterpret_cast<const void*>(&attn::attention_bwd_q_sm90_kernel<T, attn::Sm90Dq::kHeadDim, kCausal>);
  }
};

// Whether one of the four instances of a kernel ran in the last backward.
template <template <typename, bool> class Instances>
bool ran() {
  using attn::launched_kernels;
  const auto ran_one = [](const void* k) {
    return std::find(launched_kernels.begin(), launched_kernels.end(), k) != launched_kernels.end();
  };
  return ran_one(Instances<__half, false>::ptr()) || ran_one(Instances<__half, true>::ptr()) ||
         ran_one(Instances<__nv_bfloat16, false>::ptr()) || ran_one(Instances<__nv_bfloat16, true>::ptr());
}

}  // namespace

// fields, ranges and the result as emu_attention's (emulator.cpp, tests/cuda_emulator/params_by_name.h),
// for the backward at head dim 128 on an emulated sm_90a device; *launched: which sm_90a kernels ran,
// 1 the dK/dV kernel, 2 the dQ kernel (or of both), each instead of its sm_80 counterpart.
extern "C" const char* emu_attention_bwd_sm90(const char* const* fields, int n_fields, const int64_t* ranges,
                                              int n_ranges, int* launched) {
  *launched = 0;
  return emu::error_or_null([&] {
    const AttentionBwdParams p = emu::params(emu::bwd_fields(), fields, n_fields);
    if (p.head_dim != attn::Sm90Bwd::kHeadDim) throw std::runtime_error("head_dim must be 128 here");
    emu::set_ranges(ranges, n_ranges);
    attn::launched_kernels.clear();
    attn::emulate_sm90 = true;
    attention_bwd_hdim<attn::Sm90Bwd::kHeadDim>(p, nullptr);
    attn::emulate_sm90 = false;
    *launched = (ran<KvInstances>() ? 1 : 0) | (ran<DqInstances>() ? 2 : 0);
    attn::mbar_check_quiescent();
    attn::wgmma_check_quiescent();
  });
}
