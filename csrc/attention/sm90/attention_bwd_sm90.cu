// The sm_90a attention backward's entry points (attention_sm90.h): which calls its dK/dV and dQ kernels
// take, and the dispatch over head dims to the launches of one head dim (attention_bwd_{kv,kvq}_sm90_hdim<E>,
// attention_bwd_sm90.cuh; attention_bwd_q_sm90_hdim<E>, attention_dq_sm90.cuh; each kernel's instances of a
// head dim in its own generated attention_bwd_*_sm90_hdim<E>.cu). No kernel is instantiated here.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/sm90/attention_sm90_kernels.h"

namespace fasttx {

bool attention_bwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) &&
         attn::has_head_dim(p.head_dim, attn::Sm90BwdKvHeadDims{}) &&
         attn::has_head_dim(p.head_dim, attn::Sm90BwdQHeadDims{}) && p.queries > 0 && p.keys > 0;
}

bool attention_bwd_kvq_sm90_supports(const AttentionParams& p) {
  return attention_bwd_sm90_supports(p) && attn::has_head_dim(p.head_dim, attn::Sm90BwdKvqHeadDims{});
}

bool attention_bwd_kv_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::head_dim_switch(p.head_dim, attn::Sm90BwdKvHeadDims{}, false,
                               [&]<int kHeadDim>() { return attention_bwd_kv_sm90_hdim<kHeadDim>(p, stream); });
}

bool attention_bwd_kvq_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::head_dim_switch(p.head_dim, attn::Sm90BwdKvqHeadDims{}, false,
                               [&]<int kHeadDim>() { return attention_bwd_kvq_sm90_hdim<kHeadDim>(p, stream); });
}

bool attention_bwd_q_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::head_dim_switch(p.head_dim, attn::Sm90BwdQHeadDims{}, false,
                               [&]<int kHeadDim>() { return attention_bwd_q_sm90_hdim<kHeadDim>(p, stream); });
}

}  // namespace fasttx
