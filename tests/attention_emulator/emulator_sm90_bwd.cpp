// The sm_90a attention dK/dV and dQ kernels (csrc/attention/sm90/attention_{bwd,dq}_sm90.cuh) compiled for the host,
// as emulator_sm90.cpp compiles the forward: attention/primitives.cuh and attention/sm90/primitives_sm90.cuh
// of this directory replace the real ones, every other line is the real source. The entry point runs
// the whole backward of a head dim with sm_90a instances (64, 96, 128, 256) as attention_bwd_launch does
// (D kernel, dK/dV, dQ kernel), so the sm_90a kernels run where the launch code picks them:
// FASTTX_ATTENTION_SM90=1 in the environment and a supported call. Called from tests/test_cuda_attention_sm90_bwd_emulated.py.

#include "attention/primitives.cuh"
#include "attention/sm90/primitives_sm90.cuh"

#include "attention/attention_bwd_hdim128.cu"
#include "attention/attention_bwd_hdim256.cu"
#include "attention/attention_bwd_hdim64.cu"
#include "attention/attention_bwd_hdim96.cu"
#include "attention/sm90/attention_bwd_sm90.cu"
#include "attention_fields.h"
#include "attention_sm90_bwd_kernels.inc"  // every generated attention_bwd_*_sm90_hdim*.cu

#include <algorithm>

using namespace fasttx;

namespace {

// Where `kernel` stands among the launches of the last backward, as launch() records them; their
// count if it did not run.
template <typename Kernel>
std::ptrdiff_t launch_index(Kernel* kernel) {
  const auto& launched = attn::launched_kernels;
  return std::find(launched.begin(), launched.end(), reinterpret_cast<const void*>(kernel)) - launched.begin();
}

// Whether the instance of each sm_90a backward kernel that p calls for (its dtype, causal flag, mask
// presence and dropout) ran in the last backward: bit 1 the dK/dV kernel (at E = 256 both its passes,
// dV then dK), bit 2 the dQ kernel, bit 4 the dK/dV kernel with atomic dQ, bit 8 the dQ kernel without its
// consumers' turns (FASTTX_ATTENTION_SM90_DQ_TURNS=0; E = 256 has one consumer and no such instance).
template <int E>
int ran_sm90(const AttentionParams& p) {
  int ran = 0;
  attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    using attn::Sm90Grad;
    const std::ptrdiff_t none = attn::launched_kernels.size();
    const auto kv = [&]<Sm90Grad kGrad>() {
      return launch_index(attn::attention_bwd_kv_sm90_kernel<T, E, kCausal, kMask, kDropout, kGrad>);
    };
    if constexpr (attn::sm90_bwd_split<E>) {
      const std::ptrdiff_t v = kv.template operator()<Sm90Grad::kV>(), k = kv.template operator()<Sm90Grad::kK>();
      ran |= v < k && k != none ? 1 : 0;
    } else {
      ran |= kv.template operator()<Sm90Grad::kKV>() != none ? 1 : 0;
      ran |= kv.template operator()<Sm90Grad::kKVAtomicQ>() != none ? 4 : 0;
    }
    ran |= launch_index(attn::attention_bwd_q_sm90_kernel<T, E, kCausal, kMask, kDropout, true>) != none ? 2 : 0;
    if constexpr (attn::Sm90Dq<E>::kConsumers > 1) {
      ran |= launch_index(attn::attention_bwd_q_sm90_kernel<T, E, kCausal, kMask, kDropout, false>) != none ? 8 : 0;
    }
  });
  return ran;
}

// The backward of head dim E, from attention_bwd_launch's dispatch on; which sm_90a kernels ran. What
// the launch code says of dQ (in dq_accum or not) must be whether the atomic-dQ kernel ran.
template <int E>
int backward(const AttentionBwdParams& p) {
  const bool accumulated = attention_bwd_hdim<E>(p, nullptr);
  const int ran = ran_sm90<E>(p);
  if (accumulated != ((ran & 4) != 0)) throw std::runtime_error("attention_bwd_hdim misreports where dQ went");
  return ran;
}

}  // namespace

// fields, ranges and the result as emu_attention's (emulator.cpp, tests/cuda_emulator/params_by_name.h),
// for the backward at head dim 64, 96, 128 or 256 on an emulated sm_90a device; *launched: which sm_90a
// kernels ran, each instead of its sm_80 counterpart and as the instance the call's mask and dropout
// call for: 1 the dK/dV kernel, 2 the dQ kernel, 4 the dK/dV kernel with atomic dQ, 8 the dQ kernel
// without turns (or of them).
extern "C" const char* emu_attention_bwd_sm90(const char* const* fields, int n_fields, const int64_t* ranges,
                                              int n_ranges, int* launched) {
  *launched = 0;
  return emu::error_or_null([&] {
    const AttentionBwdParams p = emu::params(emu::bwd_fields(), fields, n_fields);
    if (p.head_dim != 64 && p.head_dim != 96 && p.head_dim != 128 && p.head_dim != 256) {
      throw std::runtime_error("head_dim must be 64, 96, 128 or 256 here");
    }
    emu::set_ranges(ranges, n_ranges);
    attn::launched_kernels.clear();
    attn::emulate_sm90 = true;
    const int ran = p.head_dim == 64    ? backward<64>(p)
                    : p.head_dim == 96  ? backward<96>(p)
                    : p.head_dim == 128 ? backward<128>(p)
                                        : backward<256>(p);
    attn::emulate_sm90 = false;
    *launched = ran;
    attn::mbar_check_quiescent();
    attn::wgmma_check_quiescent();
    attn::named_barrier_check_quiescent();
  });
}
