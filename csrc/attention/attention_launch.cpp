// Head-dim dispatch of the attention launchers (attention.h) over the built head dims of
// kAttentionHeadDims; the instances live in the generated attention_{fwd,bwd}_hdim*.cu.
#include <cstddef>
#include <iterator>
#include <type_traits>
#include <utility>

#include "attention/attention.h"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {
namespace {

// run(std::integral_constant<int, E>) when head_dim is entry I's E and that head dim was built;
// an unbuilt one names no instance, so that its missing .cu leaves no undefined symbol.
template <size_t I, typename Run>
bool run_if_head_dim(int head_dim, Run& run) {
  constexpr AttentionHeadDim kEntry = kAttentionHeadDims[I];
  if constexpr (kEntry.built) {
    if (head_dim == kEntry.value) {
      run(std::integral_constant<int, kEntry.value>{});
      return true;
    }
  }
  return false;
}

template <typename Run, size_t... I>
bool head_dim_switch(int head_dim, Run run, std::index_sequence<I...>) {
  return (run_if_head_dim<I>(head_dim, run) || ...);
}

constexpr auto kEntries = std::make_index_sequence<std::size(kAttentionHeadDims)>{};

}  // namespace

bool attention_fwd_launch(const AttentionParams& p, cudaStream_t stream) {
  // The sm_90a kernel where it is switched on (attention_sm90.h) and the device (sm_90), the build
  // (9.0a) and the call allow; else sm_80's.
  if (attention_sm90_enabled() && attention_fwd_sm90_supports(p) && attention_fwd_sm90(p, stream)) return true;
  return head_dim_switch(p.head_dim, [&](auto d) { attention_fwd_hdim<decltype(d)::value>(p, stream); }, kEntries);
}

BwdLaunch attention_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  bool accumulated = false;
  const bool launched = head_dim_switch(
      p.head_dim, [&](auto d) { accumulated = attention_bwd_hdim<decltype(d)::value>(p, stream); }, kEntries);
  return !launched ? BwdLaunch::kNone : accumulated ? BwdLaunch::kDqAccumulated : BwdLaunch::kDq;
}

}  // namespace fasttx
