// Attention forward kernels for head dim 96, fp16 and bf16, causal or not (one file per head dim so
// that the instances compile in parallel).
#include "attention/attention_launch.cuh"

namespace fasttx {
template void attention_fwd_hdim<96>(const AttentionParams& p, cudaStream_t stream);
}  // namespace fasttx
