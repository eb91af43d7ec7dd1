#pragma once
// Torch-facing entry points of the attention kernels (schemas in bindings.cpp; contract in
// fasttx/_ops.py and triton_kernels/attention_fwd.py).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace fasttx {

// The head dims E (== Ev) this build has kernels for (FASTTX_ATTENTION_HEAD_DIMS at build time;
// default all of csrc/attention/attention_kernels.h), as fasttx._C.ATTENTION_HEAD_DIMS shows them.
std::vector<int64_t> attention_built_head_dims();

// (out (B, H, L, E) contiguous in q's dtype, lse (B, H, L) fp32).
std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& mask, double scale,
                                                      bool is_causal, double dropout_p,
                                                      const std::optional<at::Tensor>& seed);
// (dq, dk, dv), contiguous, in the inputs' shapes and dtype. deterministic = false (and
// torch.use_deterministic_algorithms off) lets the sm_90a backward add dQ with atomics, where it runs
// (attention_sm90.h: attention_bwd_kvq_sm90); every other kernel is deterministic either way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& mask, double scale, bool is_causal, double dropout_p,
    const std::optional<at::Tensor>& seed, bool deterministic);

}  // namespace fasttx
