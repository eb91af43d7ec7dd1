#pragma once
// Launch configurations of the attention kernels: grids, shared memory, the dK/dV split at head dim
// 256, and the dtype / causal / mask / dropout instances of one head dim (attention_{fwd,bwd}_hdim*.cu
// instantiate them: 16 forward kernels, 16 (32 at E = 256) dK/dV and 16 dQ kernels per head dim).

#include "attention/attention_bwd_kernel.cuh"
#include "attention/attention_fwd_kernel.cuh"
#include "attention/kernel_switch.h"
#include "attention/sm90/attention_sm90.h"

namespace fasttx {
namespace attn {

template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
void attention_fwd_run(const AttentionParams& p, cudaStream_t stream) {
  constexpr int rows = FwdTile<kHeadDim, kMask, kDropout>::kRows;
  launch(attention_fwd_kernel<T, kHeadDim, kCausal, kMask, kDropout>, dim3((p.queries + rows - 1) / rows, p.heads, p.batch),
         kThreads, fwd_smem_bytes<T, kHeadDim, kMask, kDropout>(), stream, p);
}

// True where dQ went into p.dq_accum (the sm_90a atomic-dQ kernel ran), false where dq holds it.
template <typename T, int kHeadDim, bool kCausal, bool kMask, bool kDropout>
bool attention_bwd_run(const AttentionBwdParams& p, cudaStream_t stream) {
  launch(attention_bwd_delta_kernel<T, kHeadDim>, dim3((p.queries + kWarps - 1) / kWarps, p.heads, p.batch), kThreads,
         0, stream, p);
  // dK/dV and dQ: the sm_90a kernels where they are switched on and the device, the build and the
  // call allow (attention_sm90.h), with dQ added by the dK/dV kernel where p.dq_accum is given;
  // else sm_80's.
  const bool sm90 = attention_sm90_enabled() && attention_bwd_sm90_supports(p);
  const dim3 kv_grid((p.keys + kBwdKeys - 1) / kBwdKeys, p.kv_heads, p.batch);
  constexpr int kv_smem = bwd_kv_smem_bytes<T, kHeadDim>();
  if (sm90 && p.dq_accum != nullptr && attention_bwd_kvq_sm90(p, stream)) return true;
  if (sm90 && attention_bwd_kv_sm90(p, stream)) {
    // the sm_90a kernel has it
  } else if constexpr (kHeadDim <= 128) {
    launch(attention_bwd_kv_kernel<T, kHeadDim, kCausal, kMask, kDropout, kGradKV>, kv_grid, kThreads, kv_smem, stream, p);
  } else {
    launch(attention_bwd_kv_kernel<T, kHeadDim, kCausal, kMask, kDropout, kGradV>, kv_grid, kThreads, kv_smem, stream, p);
    launch(attention_bwd_kv_kernel<T, kHeadDim, kCausal, kMask, kDropout, kGradK>, kv_grid, kThreads, kv_smem, stream, p);
  }
  if (!(sm90 && attention_bwd_q_sm90(p, stream))) {
    launch(attention_bwd_q_kernel<T, kHeadDim, kCausal, kMask, kDropout>,
           dim3((p.queries + kBlockM - 1) / kBlockM, p.heads, p.batch), kThreads, bwd_q_smem_bytes<T, kHeadDim>(), stream,
           p);
  }
  return false;
}

}  // namespace attn

template <int kHeadDim>
void attention_fwd_hdim(const AttentionParams& p, cudaStream_t stream) {
  attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    attn::attention_fwd_run<T, kHeadDim, kCausal, kMask, kDropout>(p, stream);
  });
}

template <int kHeadDim>
bool attention_bwd_hdim(const AttentionBwdParams& p, cudaStream_t stream) {
  return attn::kernel_switch(p, [&]<typename T, bool kCausal, bool kMask, bool kDropout>() {
    return attn::attention_bwd_run<T, kHeadDim, kCausal, kMask, kDropout>(p, stream);
  });
}

}  // namespace fasttx
