// Head-dim dispatch of the attention launchers (attention.h); the instances live in
// attention_{fwd,bwd}_hdim*.cu.
#include <type_traits>

#include "attention/attention.h"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {
namespace {

template <typename Run>
void head_dim_switch(int head_dim, Run run) {
  switch (head_dim) {
    case 32:
      return run(std::integral_constant<int, 32>{});
    case 64:
      return run(std::integral_constant<int, 64>{});
    case 96:
      return run(std::integral_constant<int, 96>{});
    case 128:
      return run(std::integral_constant<int, 128>{});
    default:  // 256: the bindings admit only kAttentionHeadDims
      return run(std::integral_constant<int, 256>{});
  }
}

}  // namespace

void attention_fwd_launch(const AttentionParams& p, cudaStream_t stream) {
  // The sm_90a kernel where the device (sm_90), the build (9.0a) and the call allow; else sm_80's.
  if (attention_fwd_sm90_supports(p) && attention_fwd_sm90(p, stream)) return;
  head_dim_switch(p.head_dim, [&](auto d) { attention_fwd_hdim<decltype(d)::value>(p, stream); });
}

void attention_bwd_launch(const AttentionParams& p, cudaStream_t stream) {
  head_dim_switch(p.head_dim, [&](auto d) { attention_bwd_hdim<decltype(d)::value>(p, stream); });
}

}  // namespace fasttx
