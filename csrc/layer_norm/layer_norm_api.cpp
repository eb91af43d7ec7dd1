// Checks the arguments, allocates outputs and workspace, and calls the launchers of layer_norm.h.
// Registered for CPU too (bindings.cpp), so a CPU tensor gets the device check's message.

#include "layer_norm/layer_norm_api.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "layer_norm/layer_norm.h"

namespace fasttx {
namespace {

void check_input(const char* op, const at::Tensor& input) {
  check_cuda(op, "input", input);
  check_kernel_dtype(op, "input", input.scalar_type());
  TORCH_CHECK(input.dim() == 2, "fasttx::", op, ": input must be 2-D (M, N), got shape ", shape(input.sizes()));
  TORCH_CHECK(input.size(1) >= 1 && input.size(1) <= kMaxCols, "fasttx::", op, ": input must have 1 <= N <= ",
              num(kMaxCols), " columns, got shape ", shape(input.sizes()));
  TORCH_CHECK(input.size(0) <= kMaxRows, "fasttx::", op, ": input must have M <= ", num(kMaxRows),
              " rows, got shape ", shape(input.sizes()));
  check_contiguous(op, "input", input);
}

// weight or bias: (N,), contiguous, the input's dtype or float32.
void check_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  check_same_device(op, name, t, input);
  TORCH_CHECK(t.scalar_type() == input.scalar_type() || t.scalar_type() == at::kFloat, "fasttx::", op, ": ", name,
              " must have the input's dtype (", dtype_name(input.scalar_type()), ") or float32, got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(1), "fasttx::", op, ": ", name, " must have shape (",
              num(input.size(1)), ",), got ", shape(t.sizes()));
  check_contiguous(op, name, t);
}

// grad_out: like input.
void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& input) {
  check_same_device(op, "grad_out", grad_out, input);
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "fasttx::", op, ": grad_out must have the input's dtype (",
              dtype_name(input.scalar_type()), "), got ", dtype_name(grad_out.scalar_type()));
  TORCH_CHECK(grad_out.sizes() == input.sizes(), "fasttx::", op, ": grad_out must have the input's shape ",
              shape(input.sizes()), ", got ", shape(grad_out.sizes()));
  check_contiguous(op, "grad_out", grad_out);
}

// mean or rstd saved by the forward: float32 (M,), contiguous.
void check_row_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  check_same_device(op, name, t, input);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "fasttx::", op, ": ", name, " must be float32, got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(0), "fasttx::", op, ": ", name, " must have shape (",
              num(input.size(0)), ",), got ", shape(t.sizes()));
  check_contiguous(op, name, t);
}

// Checks weight and bias; returns the parameter dtype (the input's when there is neither).
at::ScalarType check_params(const char* op, const at::Tensor& input, const at::Tensor* weight, const at::Tensor* bias) {
  if (weight != nullptr) check_param(op, "weight", *weight, input);
  if (bias != nullptr) check_param(op, "bias", *bias, input);
  if (weight != nullptr && bias != nullptr) {
    TORCH_CHECK(weight->scalar_type() == bias->scalar_type(), "fasttx::", op,
                ": weight and bias must have the same dtype, got ", dtype_name(weight->scalar_type()), " and ",
                dtype_name(bias->scalar_type()));
  }
  return weight != nullptr ? weight->scalar_type() : bias != nullptr ? bias->scalar_type() : input.scalar_type();
}

// The fields the forward and the backward share, for a checked input.
NormParamsBase base_params(bool is_rms, const at::Tensor& input, at::ScalarType param_dtype) {
  return {is_rms, to_dtype(input.scalar_type()), to_dtype(param_dtype), input.size(0),
          static_cast<int>(input.size(1))};
}

// (out, mean or undefined for RMSNorm, rstd)
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_fwd(const char* op, bool is_rms, const at::Tensor& input,
                                                        const at::Tensor* weight, const at::Tensor* bias,
                                                        double eps) {
  check_input(op, input);
  const at::ScalarType param_dtype = check_params(op, input, weight, bias);
  const int64_t rows = input.size(0);
  const auto stat_options = input.options().dtype(at::kFloat);
  at::Tensor out = at::empty(input.sizes(), input.options());
  at::Tensor mean = is_rms ? at::Tensor() : at::empty({rows}, stat_options);
  at::Tensor rstd = at::empty({rows}, stat_options);
  if (rows == 0) return {out, mean, rstd};

  const c10::cuda::CUDAGuard guard(input.device());
  NormFwdParams p{base_params(is_rms, input, param_dtype)};
  p.x = input.data_ptr();
  p.weight = weight != nullptr ? weight->data_ptr() : nullptr;
  p.bias = bias != nullptr ? bias->data_ptr() : nullptr;
  p.y = out.data_ptr();
  p.mean = is_rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.eps = static_cast<float>(eps);
  norm_fwd_launch(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mean, rstd};
}

// (grad_input, grad_weight, grad_bias); grad_weight / grad_bias are empty (0,) tensors of the
// input's dtype when there is no weight / no bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(const char* op, bool is_rms, const at::Tensor& grad_out,
                                                        const at::Tensor& input, const at::Tensor* weight,
                                                        const at::Tensor* mean, const at::Tensor& rstd,
                                                        bool has_bias) {
  check_input(op, input);
  check_grad_out(op, grad_out, input);
  const at::ScalarType param_dtype = check_params(op, input, weight, nullptr);
  if (mean != nullptr) check_row_stat(op, "mean", *mean, input);
  check_row_stat(op, "rstd", rstd, input);
  const int64_t rows = input.size(0);
  const int64_t cols = input.size(1);
  const auto param_options = input.options().dtype(param_dtype);
  const auto no_grad = [&] { return at::empty({0}, input.options()); };
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (rows == 0) {  // sums over no rows
    return {grad_input, weight != nullptr ? at::zeros({cols}, param_options) : no_grad(),
            has_bias ? at::zeros({cols}, param_options) : no_grad()};
  }
  at::Tensor grad_weight = weight != nullptr ? at::empty({cols}, param_options) : no_grad();
  at::Tensor grad_bias = has_bias ? at::empty({cols}, param_options) : no_grad();

  const c10::cuda::CUDAGuard guard(input.device());
  NormBwdParams p{base_params(is_rms, input, param_dtype)};
  p.dy = grad_out.data_ptr();
  p.x = input.data_ptr();
  p.weight = weight != nullptr ? weight->data_ptr() : nullptr;
  p.mean = mean != nullptr ? mean->data_ptr<float>() : nullptr;
  p.rstd = rstd.data_ptr<float>();
  p.dx = grad_input.data_ptr();
  p.dweight = weight != nullptr ? grad_weight.data_ptr() : nullptr;
  p.dbias = has_bias ? grad_bias.data_ptr() : nullptr;
  C10_CUDA_CHECK(norm_bwd_num_partials(p, &p.num_partials));
  // Workspace rows: [dweight partials (G, N)][dbias partials (G, N)], each present only if needed.
  const int64_t num_outputs = (weight != nullptr) + has_bias;
  at::Tensor partials;
  if (num_outputs > 0) {
    partials = at::empty({num_outputs, p.num_partials, cols}, input.options().dtype(at::kFloat));
    float* base = partials.data_ptr<float>();
    p.dweight_partials = weight != nullptr ? base : nullptr;
    p.dbias_partials = has_bias ? base + (num_outputs - 1) * p.num_partials * cols : nullptr;
  }
  norm_bwd_launch(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias, double eps) {
  return norm_fwd("layer_norm_fwd_cuda", false, input, present(weight), present(bias), eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   bool has_bias) {
  return norm_bwd("layer_norm_bwd_cuda", false, grad_out, input, present(weight), &mean, rstd, has_bias);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                     double eps) {
  auto [out, mean, rstd] = norm_fwd("rms_norm_fwd_cuda", true, input, present(weight), nullptr, eps);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                     const std::optional<at::Tensor>& weight, const at::Tensor& rstd) {
  auto [grad_input, grad_weight, grad_bias] =
      norm_bwd("rms_norm_bwd_cuda", true, grad_out, input, present(weight), nullptr, rstd, false);
  return {grad_input, grad_weight};
}

}  // namespace fasttx
