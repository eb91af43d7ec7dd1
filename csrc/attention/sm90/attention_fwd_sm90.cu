// Host side of the sm_90a attention forward: the TMA tensor maps and the launch (attention_sm90.h).
#include <cstdlib>
#include <cstring>

#include "attention/sm90/attention_fwd_sm90.cuh"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/tensor_map_sm90.cuh"
#include "common/static_switch.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, bool kCausal, bool kMask, bool kDropout>
bool attention_fwd_sm90_run(const AttentionParams& p, cudaStream_t stream) {
  constexpr auto kernel = attention_fwd_sm90_kernel<T, Sm90Fwd::kHeadDim, kCausal, kMask, kDropout>;
  if (!runs_sm90a(kernel)) return false;
  Sm90FwdParams params{};
  params.p = p;
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr int E = Sm90Fwd::kHeadDim;
  const int64_t o_strides[3] = {int64_t{p.heads} * p.queries * E, int64_t{p.queries} * E, E};  // o is contiguous
  if (!encode_bhle(&params.q_map, p.q, bf16, E, p.batch, p.heads, p.queries, p.q_strides, Sm90Fwd::kBlockM) ||
      !encode_bhle(&params.k_map, p.k, bf16, E, p.batch, p.kv_heads, p.keys, p.k_strides, Sm90Fwd::kBlockN) ||
      !encode_bhle(&params.v_map, p.v, bf16, E, p.batch, p.kv_heads, p.keys, p.v_strides, Sm90Fwd::kBlockN) ||
      !encode_bhle(&params.o_map, p.o, bf16, E, p.batch, p.heads, p.queries, o_strides, Sm90Fwd::kBlockM / 2)) {
    return false;
  }
  launch(kernel, dim3((p.queries + Sm90Fwd::kBlockM - 1) / Sm90Fwd::kBlockM, p.heads, p.batch), Sm90Fwd::kThreads,
         Sm90Fwd::kSmemBytes, stream, params);
  return true;
}

}  // namespace
}  // namespace attn

bool attention_sm90_enabled() {
  const char* value = std::getenv("FASTTX_ATTENTION_SM90");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

bool attention_fwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.head_dim == attn::Sm90Fwd::kHeadDim &&
         p.scale > 0.f && p.queries > 0;
}

bool attention_fwd_sm90(const AttentionParams& p, cudaStream_t stream) {
  bool launched = false;
  FASTTX_HALF_SWITCH(p.dtype, T, [&] {
    FASTTX_BOOL_SWITCH(p.is_causal, kCausal, [&] {
      FASTTX_BOOL_SWITCH(p.mask_kind != MaskKind::kNone, kMask, [&] {
        FASTTX_BOOL_SWITCH(p.dropout_p > 0.f, kDropout, [&] {
          launched = attn::attention_fwd_sm90_run<T, kCausal, kMask, kDropout>(p, stream);
        });
      });
    });
  });
  return launched;
}

}  // namespace fasttx
