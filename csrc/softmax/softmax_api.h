#pragma once
// Torch-facing entry points of the softmax kernels (schemas in bindings.cpp).

#include <ATen/core/Tensor.h>

#include <optional>

namespace fasttx {

// softmax(scale * input + mask) over the last dim of a contiguous (A, B, L, C) input, in out_dtype.
at::Tensor softmax_fwd_cuda(const at::Tensor& input, const std::optional<at::Tensor>& mask, double scale,
                            bool is_causal, at::ScalarType out_dtype);
// The input's gradient, in in_dtype, from the forward's output and its gradient; is_causal: the
// forward's, over out's last two dims (its columns past the limit are not read).
at::Tensor softmax_bwd_cuda(const at::Tensor& out, const at::Tensor& grad_out, double scale, bool is_causal,
                            at::ScalarType in_dtype);

}  // namespace fasttx
