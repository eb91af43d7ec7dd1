// Host side of the sm_90a attention dQ kernel: the TMA tensor maps and the launch (attention_sm90.h).
#include "attention/sm90/attention_dq_sm90.cuh"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/tensor_map_sm90.cuh"
#include "common/static_switch.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, bool kCausal>
bool attention_bwd_q_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Dq;
  constexpr auto kernel = attention_bwd_q_sm90_kernel<T, C::kHeadDim, kCausal>;
  if (!runs_sm90a(kernel)) return false;
  Sm90BwdParams params{};
  params.p = p;
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  if (!encode_bwd_maps(&params, p, bf16, C::kHeadDim, C::kBlockM, C::kBlockN)) {
    return false;
  }
  launch(kernel, dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), C::kThreads, C::kSmemBytes, stream,
         params);
  return true;
}

}  // namespace
}  // namespace attn

bool attention_bwd_q_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  FASTTX_HALF_SWITCH(p.dtype, T, [&] {
    FASTTX_BOOL_SWITCH(p.is_causal, kCausal, [&] { launched = attn::attention_bwd_q_sm90_run<T, kCausal>(p, stream); });
  });
  return launched;
}

}  // namespace fasttx
