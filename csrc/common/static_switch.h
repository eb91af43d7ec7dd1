#pragma once
// Turn runtime values into compile-time ones. Each macro runs the callable passed as __VA_ARGS__
// (a lambda returning void) once per case, with NAME bound to a constexpr bool or a type alias,
// so every case instantiates its own templates.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dtype.h"

#define FASTTX_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                     \
    if (COND) {                             \
      constexpr bool NAME = true;           \
      __VA_ARGS__();                        \
    } else {                                \
      constexpr bool NAME = false;          \
      __VA_ARGS__();                        \
    }                                       \
  }()

// A kernel dtype: activations (x, y, dy, dx), or any tensor of the three dtypes.
#define FASTTX_DTYPE_SWITCH(DTYPE, NAME, ...) \
  [&] {                                       \
    switch (DTYPE) {                          \
      case ::fasttx::DType::kFloat32: {       \
        using NAME = float;                   \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
      case ::fasttx::DType::kFloat16: {       \
        using NAME = __half;                  \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
      case ::fasttx::DType::kBFloat16: {      \
        using NAME = __nv_bfloat16;           \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
    }                                         \
  }()

// A 16-bit kernel dtype (the tensor-core attention kernels).
#define FASTTX_HALF_SWITCH(DTYPE, NAME, ...)       \
  [&] {                                            \
    if ((DTYPE) == ::fasttx::DType::kBFloat16) {   \
      using NAME = __nv_bfloat16;                  \
      __VA_ARGS__();                               \
    } else {                                       \
      using NAME = __half;                         \
      __VA_ARGS__();                               \
    }                                              \
  }()

// fp32 or the activation dtype INPUT_T: LayerNorm parameters (AMP keeps fp32 parameters next to
// half activations), softmax outputs and float masks. For fp32 activations both branches name the
// same type, hence the same instances.
#define FASTTX_FP32_OR_SWITCH(IS_FP32, INPUT_T, NAME, ...) \
  [&] {                                                    \
    if (IS_FP32) {                                         \
      using NAME = float;                                  \
      __VA_ARGS__();                                       \
    } else {                                               \
      using NAME = INPUT_T;                                \
      __VA_ARGS__();                                       \
    }                                                      \
  }()
