// The sm_90a attention forward's entry points (attention_sm90.h): which calls it takes, and the dispatch
// over head dims to the launch of one head dim (attention_fwd_sm90_hdim<E>, attention_fwd_sm90.cuh, each
// head dim's instances in its own generated attention_fwd_sm90_hdim<E>.cu). No kernel is instantiated here.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/attention_sm90_kernels.h"

namespace fasttx {

bool attention_fwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) &&
         attn::has_head_dim(p.head_dim, attn::Sm90FwdHeadDims{}) && p.scale > 0.f && p.queries > 0;
}

bool attention_fwd_sm90(const AttentionParams& p, cudaStream_t stream) {
  return attn::head_dim_switch(p.head_dim, attn::Sm90FwdHeadDims{}, false,
                               [&]<int kHeadDim>() { return attention_fwd_sm90_hdim<kHeadDim>(p, stream); });
}

}  // namespace fasttx
