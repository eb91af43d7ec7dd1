// Host side of the sm_90a attention dQ kernel: its launch (attention_sm90.h) through launch_bwd_sm90.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_dq_sm90.cuh"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {
namespace attn {
namespace {

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
bool attention_bwd_q_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  using C = Sm90Dq<kHeadDim>;
  return launch_bwd_sm90<C, T>(attention_bwd_q_sm90_kernel<T, kHeadDim, kCausal, kMask, kDropout>, p,
                               dim3((p.queries + C::kBlockM - 1) / C::kBlockM, p.heads, p.batch), stream);
}

}  // namespace
}  // namespace attn

bool attention_bwd_q_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  attn::head_dim_switch(p.head_dim, attn::Sm90BwdHeadDims{}, [&]<int kHeadDim>() {
    attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
      launched = attn::attention_bwd_q_sm90_run<T, kHeadDim, kCausal, kMask, kDropout>(p, stream);
    });
  });
  return launched;
}

}  // namespace fasttx
