#pragma once
// The compile-time instance of an attention call: the launch code of both architectures picks its
// kernels (attention_launch.cuh, sm90/attention_*_sm90.cuh) and head dims (attention_launch.cpp,
// sm90/attention_{fwd,bwd}_sm90.cu) through it.

#include <utility>

#include "attention/attention.h"
#include "common/static_switch.h"

namespace fasttx {
namespace attn {

// run.template operator()<T, kCausal, kMask, kDropout>() for the dtype, causal flag, mask presence
// and dropout of p; returns what run returns.
template <typename Run>
auto kernel_switch(const AttentionParams& p, Run run) {
  return FASTTX_HALF_SWITCH(p.dtype, T, [&] {
    return FASTTX_BOOL_SWITCH(p.is_causal, kCausal, [&] {
      return FASTTX_BOOL_SWITCH(p.mask_kind != MaskKind::kNone, kMask, [&] {
        return FASTTX_BOOL_SWITCH(p.dropout_p > 0.f, kDropout,
                                  [&] { return run.template operator()<T, kCausal, kMask, kDropout>(); });
      });
    });
  });
}

// Whether head_dim is in a list of head dims (attention_kernels.h, sm90/attention_sm90_kernels.h: the
// head dims this build has instances of, one list per kernel).
template <int... kE>
constexpr bool has_head_dim(int head_dim, std::integer_sequence<int, kE...>) {
  return ((head_dim == kE) || ...);
}

// run.template operator()<kE>() for the kE of the list equal to head_dim, returning what it returns;
// `none`, nothing run, where the list lacks head_dim.
template <int... kE, typename Result, typename Run>
Result head_dim_switch(int head_dim, std::integer_sequence<int, kE...>, Result none, Run run) {
  Result result = none;
  ((head_dim == kE && (result = run.template operator()<kE>(), true)) || ...);
  return result;
}

}  // namespace attn
}  // namespace fasttx
