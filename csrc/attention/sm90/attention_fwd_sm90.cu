// Host side of the sm_90a attention forward: the TMA tensor maps and the launch (attention_sm90.h).
#include <utility>

#include "attention/kernel_switch.h"
#include "attention/sm90/attention_fwd_sm90.cuh"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/tensor_map_sm90.cuh"
#include "common/env.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, int kKeys>
bool attention_fwd_sm90_run(const AttentionParams& p, cudaStream_t stream) {
  using C = Sm90FwdTile<kHeadDim, kMask, kDropout, kKeys>;
  constexpr auto kernel = attention_fwd_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout, kKeys>;
  if (!runs_sm90a(kernel)) return false;
  Sm90FwdParams params{};
  params.p = p;
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr int E = kHeadDim;
  const int64_t o_strides[3] = {int64_t{p.heads} * p.queries * E, int64_t{p.queries} * E, E};  // o is contiguous
  if (!encode_bhle(&params.q_map, p.q, bf16, E, p.batch, p.heads, p.queries, p.q_strides, C::kBlockM) ||
      !encode_bhle(&params.k_map, p.k, bf16, E, p.batch, p.kv_heads, p.keys, p.k_strides, C::kBlockN) ||
      !encode_bhle(&params.v_map, p.v, bf16, E, p.batch, p.kv_heads, p.keys, p.v_strides, C::kBlockN) ||
      !encode_bhle(&params.o_map, p.o, bf16, E, p.batch, p.heads, p.queries, o_strides, C::kWarpgroupRows)) {
    return false;
  }
  launch(kernel, dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), C::kThreads, C::kSmemBytes,
         stream, params);
  return true;
}

// The head dims with sm_90a forward instances (Sm90Fwd's tiles): one list for the predicate and the
// dispatch.
using Sm90FwdHeadDims = std::integer_sequence<int, 64, 96, 128, 256>;

// FASTTX_ATTENTION_SM90_KEYS=128 in the environment (read at each call): the calls of 176-key tiles run
// on the 128-key tile they had before, so that the bench measures both in one run ("fasttx cuda (sm_90a,
// 128-key blocks)", benchmarks/attention.py); the loser goes once a GPU run has compared them.
bool narrow_keys_asked() { return env_is("FASTTX_ATTENTION_SM90_KEYS", "128"); }

}  // namespace
}  // namespace attn

bool attention_sm90_enabled() { return env_is("FASTTX_ATTENTION_SM90", "1"); }

bool attention_fwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) &&
         sm90_has_head_dim(p.head_dim, attn::Sm90FwdHeadDims{}) && p.scale > 0.f && p.queries > 0;
}

bool attention_fwd_sm90(const AttentionParams& p, cudaStream_t stream) {
  bool launched = false;
  attn::head_dim_switch(p.head_dim, attn::Sm90FwdHeadDims{}, [&]<int kHeadDim>() {
    attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
      constexpr int kKeys = attn::sm90_fwd_block_keys(kHeadDim, kCausal, kMask, kDropout);
      if constexpr (kKeys == 176) {
        if (attn::narrow_keys_asked()) {
          launched = attn::attention_fwd_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, 128>(p, stream);
          return;
        }
      }
      launched = attn::attention_fwd_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, kKeys>(p, stream);
    });
  });
  return launched;
}

}  // namespace fasttx
