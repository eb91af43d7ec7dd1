// Host side of the sm_90a attention dQ kernel: its launch (attention_sm90.h) through launch_bwd_sm90.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_dq_sm90.cuh"
#include "attention/sm90/attention_sm90.h"
#include "common/env.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout, bool kTurns>
bool attention_bwd_q_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Dq<kHeadDim>;
  return launch_bwd_sm90<C, T>(attention_bwd_q_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout, kTurns>, p,
                               dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), stream);
}

// FASTTX_ATTENTION_SM90_DQ_TURNS=0 in the environment (read at each call): the dQ kernel's two consumers
// issue their wgmma without taking turns, as before the turns, so that the bench measures both in one
// run ("fasttx cuda (sm_90a, dQ without turns)", benchmarks/attention.py); the loser goes once a GPU run
// has compared them.
bool turns_left_out() { return env_is("FASTTX_ATTENTION_SM90_DQ_TURNS", "0"); }

}  // namespace
}  // namespace attn

bool attention_bwd_q_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  attn::head_dim_switch(p.head_dim, attn::Sm90BwdHeadDims{}, [&]<int kHeadDim>() {
    attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
      if constexpr (attn::Sm90Dq<kHeadDim>::kConsumers > 1) {  // one consumer takes no turns
        if (attn::turns_left_out()) {
          launched = attn::attention_bwd_q_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, false>(p, stream);
          return;
        }
      }
      launched = attn::attention_bwd_q_sm90_run<T, kHeadDim, kCausal, kMask, kDropout, true>(p, stream);
    });
  });
  return launched;
}

}  // namespace fasttx
