#pragma once
// The compile-time instance of an attention call: the sm_80 launch code (attention_launch.cuh) and the
// sm_90a kernels' (sm90/attention_{fwd,bwd,dq}_sm90.cuh, sm90/attention_{fwd,bwd}_sm90.cu) pick their kernels
// and head dims through it.

#include <utility>

#include "attention/attention.h"
#include "common/static_switch.h"

namespace fasttx {
namespace attn {

// run.template operator()<T, kCausal, kMask, kDropout>() for the dtype, causal flag, mask presence
// and dropout of p.
template <typename Run>
void kernel_switch(const AttentionParams& p, Run run) {
  FASTTX_HALF_SWITCH(p.dtype, T, [&] {
    FASTTX_BOOL_SWITCH(p.is_causal, kCausal, [&] {
      FASTTX_BOOL_SWITCH(p.mask_kind != MaskKind::kNone, kMask, [&] {
        FASTTX_BOOL_SWITCH(p.dropout_p > 0.f, kDropout, [&] { run.template operator()<T, kCausal, kMask, kDropout>(); });
      });
    });
  });
}

// run.template operator()<kE>() for the kE of the list equal to head_dim (a kernel's head dims with
// instances); false, nothing run, where none is.
template <int... kE, typename Run>
bool head_dim_switch(int head_dim, std::integer_sequence<int, kE...>, Run run) {
  return ((head_dim == kE && (run.template operator()<kE>(), true)) || ...);
}

}  // namespace attn
}  // namespace fasttx
