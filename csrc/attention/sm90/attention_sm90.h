#pragma once
// The sm_90a attention kernels (attention_fwd_sm90.cuh, attention_bwd_sm90.cuh, attention_dq_sm90.cuh): which calls they
// serve, and their launch. Plain C++, for the dispatch in attention_launch.cpp / attention_launch.cuh; defined in
// attention_fwd_sm90.cu and attention_bwd_sm90.cu, which dispatch over the head dims to the launches of one
// head dim below.

#include "attention/attention.h"
#include "common/env.h"

namespace fasttx {

// Whether the dispatch may use the sm_90a kernels at all (the forward, and the backward's dK/dV and
// dQ kernels): only with FASTTX_ATTENTION_SM90=1 in the environment (read at each call, so a process can
// switch it), until a GPU run has validated them (docs/gpu-status.md). They have passed the host
// emulator only, and on sm_90 they would replace, for the commonest calls, the sm_80 kernels that
// passed the GPU suite. make gpu-check's tests and bench turn it on where they exercise it
// (tests/test_cuda_attention_sm90.py, fasttx/cli/gpu_sanitize.py, benchmarks/attention.py).
inline bool attention_sm90_enabled() { return env_is("FASTTX_ATTENTION_SM90", "1"); }

// Whether the call is one the sm_90a forward implements: fp16 / bf16, E in {64, 96, 128, 256}, scale > 0
// (without a mask its softmax takes row maxima of the raw scores), L > 0; any mask, causal or not,
// dropout or not.
bool attention_fwd_sm90_supports(const AttentionParams& p);

// Launches it on `stream` when the device is sm_90 and the build has its sm_90a code; false (nothing
// launched) otherwise or if the driver refuses a tensor map, for the caller to use the sm_80 kernel.
bool attention_fwd_sm90(const AttentionParams& p, cudaStream_t stream);

// Whether the call is one the sm_90a dK/dV and dQ kernels implement: fp16 / bf16, E in {64, 96, 128,
// 256} (Sm90BwdKvHeadDims and Sm90BwdQHeadDims), L > 0, S > 0; any mask, causal or not, dropout, any scale.
bool attention_bwd_sm90_supports(const AttentionParams& p);

// Launches the sm_90a dK/dV kernel on `stream` (at E = 256 twice: its dV pass, then its dK pass), which
// reads p.delta: after the D kernel, as the sm_80 dK/dV kernel it replaces (attention_launch.cuh).
// False (nothing launched) as attention_fwd_sm90.
bool attention_bwd_kv_sm90(const AttentionBwdParams& p, cudaStream_t stream);

// Whether the call is one the atomic-dQ dK/dV kernel implements: as attention_bwd_sm90_supports, E in
// {64, 96, 128} (Sm90BwdKvqHeadDims).
bool attention_bwd_kvq_sm90_supports(const AttentionParams& p);

// Launches the sm_90a dK/dV kernel that also adds dQ / scale into p.dq_accum with atomics (the opt-in
// deterministic=False; E in {64, 96, 128}: Sm90BwdKvqHeadDims), instead of the dK/dV and dQ kernels.
// After the D kernel. False (nothing launched) as attention_fwd_sm90, or for another head dim.
bool attention_bwd_kvq_sm90(const AttentionBwdParams& p, cudaStream_t stream);

// Launches the sm_90a dQ kernel on `stream`, which reads p.delta: after the D kernel, as the sm_80 dQ
// kernel it replaces. False (nothing launched) as attention_fwd_sm90.
bool attention_bwd_q_sm90(const AttentionBwdParams& p, cudaStream_t stream);

// The launches above for head dim kHeadDim, one kernel each. Defined beside their kernels
// (attention_fwd_sm90.cuh, attention_bwd_sm90.cuh, attention_dq_sm90.cuh) and instantiated in the
// generated attention_<kernel>_sm90_hdim<E>.cu, one file per kernel and head dim, so that a build compiles
// them in parallel (csrc/attention/generate_kernels.py, from fasttx/_attention_kernels.py's SM90_HEAD_DIMS).
template <int kHeadDim>
bool attention_fwd_sm90_hdim(const AttentionParams& p, cudaStream_t stream);
template <int kHeadDim>
bool attention_bwd_kv_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream);
template <int kHeadDim>
bool attention_bwd_kvq_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream);
template <int kHeadDim>
bool attention_bwd_q_sm90_hdim(const AttentionBwdParams& p, cudaStream_t stream);

}  // namespace fasttx
