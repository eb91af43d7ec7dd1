// Host side of the sm_90a attention dK/dV kernel: its launch (attention_sm90.h) through launch_bwd_sm90, and
// which calls the sm_90a backward takes.
#include "attention/sm90/attention_bwd_sm90.cuh"
#include "attention/sm90/attention_sm90.h"
#include "common/static_switch.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, bool kCausal>
bool attention_bwd_kv_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Bwd;
  return launch_bwd_sm90<C, T>(attention_bwd_kv_sm90_kernel<T, C::kHeadDim, kCausal>, p,
                               dim3((p.keys + C::kBlockN - 1) / C::kBlockN, p.kv_heads, p.batch), stream);
}

}  // namespace
}  // namespace attn

bool attention_bwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.head_dim == attn::Sm90Bwd::kHeadDim &&
         p.mask_kind == MaskKind::kNone && p.dropout_p == 0.f && p.queries > 0 && p.keys > 0;
}

bool attention_bwd_kv_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  FASTTX_HALF_SWITCH(p.dtype, T, [&] {
    FASTTX_BOOL_SWITCH(p.is_causal, kCausal,
                       [&] { launched = attn::attention_bwd_kv_sm90_run<T, kCausal>(p, stream); });
  });
  return launched;
}

}  // namespace fasttx
