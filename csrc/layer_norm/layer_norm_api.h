#pragma once
// Torch-facing entry points of the LayerNorm / RMSNorm kernels (schemas in bindings.cpp).

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fasttx {

// (out, mean, rstd)
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias, double eps);
// (grad_input, grad_weight, grad_bias)
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   bool has_bias);
// (out, rstd)
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                     double eps);
// (grad_input, grad_weight)
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                     const std::optional<at::Tensor>& weight, const at::Tensor& rstd);

}  // namespace fasttx
