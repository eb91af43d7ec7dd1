// Host side of the sm_90a attention dK/dV kernel: its launch (attention_sm90.h) through launch_bwd_sm90, and
// which calls the sm_90a backward takes.
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_bwd_sm90.cuh"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {
namespace attn {
namespace {

// dK and dV in one pass, or (sm90_bwd_split) dV then dK. Both passes use the same maps and device
// check, so the second is refused only where the first was.
template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
bool attention_bwd_kv_sm90_run(const AttentionBwdParams& p, cudaStream_t stream) {
  if constexpr (sm90_bwd_split<kHeadDim>) {
    return attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kV>(p, stream) &&
           attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kK>(p, stream);
  } else {
    return attention_bwd_kv_sm90_pass<T, kHeadDim, kCausal, kMask, kDropout, Sm90Grad::kKV>(p, stream);
  }
}

}  // namespace
}  // namespace attn

bool attention_bwd_sm90_supports(const AttentionParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) &&
         sm90_has_head_dim(p.head_dim, attn::Sm90BwdHeadDims{}) && p.queries > 0 && p.keys > 0;
}

bool attention_bwd_kv_sm90(const AttentionBwdParams& p, cudaStream_t stream) {
  bool launched = false;
  attn::head_dim_switch(p.head_dim, attn::Sm90BwdHeadDims{}, [&]<int kHeadDim>() {
    attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
      launched = attn::attention_bwd_kv_sm90_run<T, kHeadDim, kCausal, kMask, kDropout>(p, stream);
    });
  });
  return launched;
}

}  // namespace fasttx
