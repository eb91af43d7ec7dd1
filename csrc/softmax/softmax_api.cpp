// Checks the arguments, prepares the mask, allocates the output and calls the launchers of
// softmax.h. Registered for CPU too (bindings.cpp), so a CPU tensor gets the device check's message.

#include "softmax/softmax_api.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/constants.h"
#include "softmax/softmax.h"

namespace fasttx {
namespace {

constexpr const char* kFwdOp = "softmax_fwd_cuda";
constexpr const char* kBwdOp = "softmax_bwd_cuda";

// Rows of C columns: C within int, and as many rows as a 1-D grid indexes.
void check_rows(const char* op, const char* name, const at::Tensor& t) {
  const int64_t cols = t.size(-1);
  TORCH_CHECK(cols <= kMaxCols, "fasttx::", op, ": ", name, " must have at most ", num(kMaxCols),
              " elements in its last dim, got shape ", shape(t.sizes()));
  TORCH_CHECK(cols == 0 || t.numel() / cols <= kMaxRows, "fasttx::", op, ": ", name, " must have at most ",
              num(kMaxRows), " rows (elements / last dim), got shape ", shape(t.sizes()));
}

// The mask as the kernel reads it: a view broadcast to the input's shape (0 strides, nothing
// copied). Float masks of a third dtype (float64, or float16 next to bfloat16 input) are converted
// to float32 first, on their own small shape, rather than instantiating the kernels for them: masks
// are usually broadcast, (B, 1, 1, C) or (L, C), and a full one of a third dtype costs one pass.
at::Tensor kernel_mask(const at::Tensor& mask, const at::Tensor& input) {
  check_same_device(kFwdOp, "mask", mask, input);
  const at::ScalarType dt = mask.scalar_type();
  TORCH_CHECK(dt == at::kBool || at::isFloatingType(dt), "fasttx::", kFwdOp,
              ": mask must be bool or floating-point, got ", dtype_name(dt));
  bool broadcasts = mask.dim() == 4;
  for (int64_t d = 0; broadcasts && d < 4; ++d) broadcasts = mask.size(d) == 1 || mask.size(d) == input.size(d);
  TORCH_CHECK(broadcasts, "fasttx::", kFwdOp, ": mask must be 4-D and broadcastable to the input's shape ",
              shape(input.sizes()), " (each dim 1 or equal), got shape ", shape(mask.sizes()));
  const bool convert = dt != at::kBool && dt != input.scalar_type() && dt != at::kFloat;
  return (convert ? mask.to(at::kFloat) : mask).expand(input.sizes());
}

}  // namespace

at::Tensor softmax_fwd_cuda(const at::Tensor& input, const std::optional<at::Tensor>& mask, double scale,
                            bool is_causal, at::ScalarType out_dtype) {
  const char* op = kFwdOp;
  check_cuda(op, "input", input);
  check_kernel_dtype(op, "input", input.scalar_type());
  TORCH_CHECK(input.dim() == 4, "fasttx::", op, ": input must be 4-D (A, B, L, C), got shape ", shape(input.sizes()));
  check_contiguous(op, "input", input);
  check_rows(op, "input", input);
  check_kernel_dtype(op, "out_dtype", out_dtype);
  const at::Tensor* given_mask = present(mask);
  const at::Tensor mask4 = given_mask != nullptr ? kernel_mask(*given_mask, input) : at::Tensor();
  // The kernels write the input's dtype or float32; another out_dtype (16-bit from float32 input,
  // float16 <-> bfloat16), rarely asked for, is the float32 result cast.
  const bool direct = out_dtype == input.scalar_type() || out_dtype == at::kFloat;
  at::Tensor out = at::empty(input.sizes(), input.options().dtype(direct ? out_dtype : at::kFloat));
  if (out.numel() > 0) {
    const c10::cuda::CUDAGuard guard(input.device());
    SoftmaxFwdParams p{};
    p.input_dtype = to_dtype(input.scalar_type());
    p.output_dtype = to_dtype(out.scalar_type());
    p.mask_kind = !mask4.defined()                     ? MaskKind::kNone
                  : mask4.scalar_type() == at::kBool ? MaskKind::kBool
                                                       : MaskKind::kFloat;
    p.mask_dtype = p.mask_kind == MaskKind::kFloat ? to_dtype(mask4.scalar_type()) : p.input_dtype;
    p.is_causal = is_causal;
    p.rows = input.numel() / input.size(3);
    p.cols = static_cast<int>(input.size(3));
    p.heads = static_cast<int>(input.size(1));
    p.queries = static_cast<int>(input.size(2));
    p.x = input.data_ptr();
    p.mask = mask4.defined() ? mask4.data_ptr() : nullptr;
    for (int d = 0; d < 4; ++d) {
      // A dim of size 1 is only ever indexed at 0: stride 0 lets the vector-alignment test ignore it.
      p.mask_strides[d] = mask4.defined() && input.size(d) > 1 ? mask4.stride(d) : 0;
    }
    p.y = out.data_ptr();
    p.scale_log2 = static_cast<float>(scale * kLog2e<double>);
    softmax_fwd_launch(p, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return direct ? out : out.to(out_dtype);
}

at::Tensor softmax_bwd_cuda(const at::Tensor& out, const at::Tensor& grad_out, double scale, bool is_causal,
                            at::ScalarType in_dtype) {
  const char* op = kBwdOp;
  check_cuda(op, "out", out);
  check_kernel_dtype(op, "out", out.scalar_type());
  TORCH_CHECK(out.dim() >= (is_causal ? 2 : 1), "fasttx::", op, ": out must have at least ",
              is_causal ? "2 dims (L, C) with is_causal" : "1 dim", ", got shape ", shape(out.sizes()));
  check_contiguous(op, "out", out);
  check_rows(op, "out", out);
  check_same_device(op, "grad_out", grad_out, out, "out");
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), "fasttx::", op,
              ": grad_out must be floating-point, got ", dtype_name(grad_out.scalar_type()));
  TORCH_CHECK(grad_out.sizes() == out.sizes(), "fasttx::", op, ": grad_out must have out's shape ",
              shape(out.sizes()), ", got ", shape(grad_out.sizes()));
  check_contiguous(op, "grad_out", grad_out);
  check_kernel_dtype(op, "in_dtype", in_dtype);
  // The kernels read y and dy in one dtype. grad_out normally has out's; otherwise both are read
  // as float32 (exact for out; grad_out keeps the precision it came with, up to float32's).
  const bool same = grad_out.scalar_type() == out.scalar_type();
  const at::Tensor y = same ? out : out.to(at::kFloat);
  const at::Tensor dy = same ? grad_out : grad_out.to(at::kFloat);
  // The kernels write y's dtype or float32, or any dtype from float32 y; float16 <-> bfloat16 is
  // the float32 result cast.
  const bool direct = in_dtype == y.scalar_type() || in_dtype == at::kFloat || y.scalar_type() == at::kFloat;
  at::Tensor grad_input = at::empty(out.sizes(), out.options().dtype(direct ? in_dtype : at::kFloat));
  if (grad_input.numel() > 0) {
    const c10::cuda::CUDAGuard guard(out.device());
    SoftmaxBwdParams p{};
    p.out_dtype = to_dtype(y.scalar_type());
    p.grad_dtype = to_dtype(grad_input.scalar_type());
    p.is_causal = is_causal;
    p.rows = out.numel() / out.size(-1);
    p.cols = static_cast<int>(out.size(-1));
    p.queries = out.dim() >= 2 ? static_cast<int>(out.size(-2)) : 1;  // <= rows <= INT32_MAX
    p.y = y.data_ptr();
    p.dy = dy.data_ptr();
    p.dx = grad_input.data_ptr();
    p.scale = static_cast<float>(scale);
    softmax_bwd_launch(p, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return direct ? grad_input : grad_input.to(in_dtype);
}

}  // namespace fasttx
