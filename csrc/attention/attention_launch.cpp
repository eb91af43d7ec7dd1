// Head-dim dispatch of the attention launchers (attention.h) over this build's head dims
// (AttentionBuiltHeadDims, attention_kernels.h); the instances live in the generated
// attention_{fwd,bwd}_hdim*.cu. A head dim left out of the build names no instance here, so that its
// missing .cu leaves no undefined symbol.
#include "attention/attention.h"
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {

bool attention_fwd_launch(const AttentionParams& p, cudaStream_t stream) {
  // The sm_90a kernel where it is switched on (attention_sm90.h) and the device (sm_90), the build
  // (9.0a) and the call allow; else sm_80's.
  if (attention_sm90_enabled() && attention_fwd_sm90_supports(p) && attention_fwd_sm90(p, stream)) return true;
  return attn::head_dim_switch(p.head_dim, AttentionBuiltHeadDims{}, false, [&]<int kHeadDim>() {
    attention_fwd_hdim<kHeadDim>(p, stream);
    return true;
  });
}

BwdLaunch attention_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::head_dim_switch(p.head_dim, AttentionBuiltHeadDims{}, BwdLaunch::kNone, [&]<int kHeadDim>() {
    return attention_bwd_hdim<kHeadDim>(p, stream) ? BwdLaunch::kDqAccumulated : BwdLaunch::kDq;
  });
}

}  // namespace fasttx
