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
  constexpr int E = C::kHeadDim;
  if (!encode_bhle(&params.q_map, p.q, bf16, E, p.batch, p.heads, p.queries, p.q_strides, C::kBlockM) ||
      !encode_bhle(&params.do_map, p.dout, bf16, E, p.batch, p.heads, p.queries, p.dout_strides, C::kBlockM) ||
      !encode_bhle(&params.k_map, p.k, bf16, E, p.batch, p.kv_heads, p.keys, p.k_strides, C::kBlockN) ||
      !encode_bhle(&params.v_map, p.v, bf16, E, p.batch, p.kv_heads, p.keys, p.v_strides, C::kBlockN)) {
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
