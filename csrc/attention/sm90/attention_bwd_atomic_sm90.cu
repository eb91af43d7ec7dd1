// Host side of the sm_90a dK/dV kernel with atomic dQ (Sm90Grad::kKVAtomicQ, attention_bwd_sm90.cuh): its
// instances, apart from attention_bwd_sm90.cu's so that the two compile in parallel.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_bwd_sm90.cuh"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {

bool attention_bwd_kvq_sm90_supports(const AttentionParams& p) {
  return attention_bwd_sm90_supports(p) && sm90_has_head_dim(p.head_dim, attn::Sm90BwdAtomicHeadDims{});
}

bool attention_bwd_kvq_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  attn::head_dim_switch(p.head_dim, attn::Sm90BwdAtomicHeadDims{}, [&]<int kHeadDim>() {
    attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
      launched = attn::attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, attn::Sm90Grad::kKVAtomicQ>(
          p, stream);
    });
  });
  return launched;
}

}  // namespace fasttx
