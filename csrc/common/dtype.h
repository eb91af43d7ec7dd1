#pragma once

namespace fasttx {

// Element types the kernels handle. Kept free of CUDA and torch headers so that both the kernel
// files and the bindings can include it; the bindings map torch dtypes onto it.
enum class DType : int { kFloat32, kFloat16, kBFloat16 };

}  // namespace fasttx
