#pragma once
// The compile-time instance of an attention call: the sm_80 launch code (attention_launch.cuh) and the
// sm_90a backward's (sm90/attention_{bwd,dq}_sm90.cu) pick their kernels through it.

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

}  // namespace attn
}  // namespace fasttx
