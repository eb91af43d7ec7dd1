#pragma once
// Argument checks and dtype mapping shared by the *_api.cpp bindings (torch-facing; kernel files
// never include it). Messages name the op, the argument, what is expected and what was given.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "common/dtype.h"

namespace fasttx {

// Longest row supported; keeps every column index of the kernels within int.
constexpr int64_t kMaxCols = int64_t{1} << 30;
// Most rows supported: grids are 1-D and index rows with int.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

// Messages pass TORCH_CHECK strings only: numbers and shapes are formatted here by std::to_chars,
// never streamed into c10::str's std::ostringstream. On the first GPU run (H200, torch 2.11) every
// check whose message streamed an integer, a double or a shape into it segfaulted, while those with
// strings only raised their error. iostream number formatting is what those messages add: it goes
// through the process-wide C++ locale's facets (num_put, numpunct), the likely culprit (another
// library in the process can install or break them; a user's locale also groups digits, "65,535").
// to_chars reads no locale. tests/test_cuda_extension.py checks the messages under such a locale.
inline std::string num(int64_t v) {
  char buf[24];
  return std::string(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
}

inline std::string num(double v) {
  char buf[32];
  return std::string(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
}

// "[2, 4, 5, 7]", as c10 prints sizes and strides.
inline std::string shape(at::IntArrayRef dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i > 0 ? ", " : "") + num(dims[i]);
  return out + "]";
}

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    default:
      return c10::toString(t);
  }
}

// The dtypes the kernels read and write.
inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// For kernel dtypes only (is_kernel_dtype).
inline DType to_dtype(at::ScalarType t) {
  return t == at::kFloat ? DType::kFloat32 : t == at::kHalf ? DType::kFloat16 : DType::kBFloat16;
}

inline const at::Tensor* present(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? &*t : nullptr;
}

// The first check of every op's first tensor: a CPU tensor reaches the ops too (bindings.cpp).
inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "fasttx::", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

inline void check_kernel_dtype(const char* op, const char* name, at::ScalarType t) {
  TORCH_CHECK(is_kernel_dtype(t), "fasttx::", op, ": ", name, " must be float32, float16 or bfloat16, got ",
              dtype_name(t));
}

// t must be on ref's device; ref_name names ref in the message.
inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                              const char* ref_name = "input") {
  TORCH_CHECK(t.device() == ref.device(), "fasttx::", op, ": ", name, " must be on the ", ref_name, "'s device ",
              ref.device(), ", got ", t.device());
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "fasttx::", op, ": ", name, " must be contiguous, got strides ", shape(t.strides()));
}

}  // namespace fasttx
