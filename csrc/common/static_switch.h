#pragma once
// Turn runtime values into compile-time ones. Each macro runs the callable passed as __VA_ARGS__ (a
// lambda) once per case, with NAME bound to a constexpr bool or a type alias, so every case
// instantiates its own templates. The two-way switches (BOOL, TYPE, HALF, FP32_OR) return what the
// callable returns (every case must return the same type); FASTTX_DTYPE_SWITCH's callable returns void.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dtype.h"

#define FASTTX_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                     \
    if (COND) {                             \
      constexpr bool NAME = true;           \
      return __VA_ARGS__();                 \
    } else {                                \
      constexpr bool NAME = false;          \
      return __VA_ARGS__();                 \
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

// TRUE_T or FALSE_T as NAME, by COND.
#define FASTTX_TYPE_SWITCH(COND, NAME, TRUE_T, FALSE_T, ...) \
  [&] {                                                      \
    if (COND) {                                              \
      using NAME = TRUE_T;                                   \
      return __VA_ARGS__();                                  \
    } else {                                                 \
      using NAME = FALSE_T;                                  \
      return __VA_ARGS__();                                  \
    }                                                        \
  }()

// A 16-bit kernel dtype (the tensor-core attention kernels).
#define FASTTX_HALF_SWITCH(DTYPE, NAME, ...) \
  FASTTX_TYPE_SWITCH((DTYPE) == ::fasttx::DType::kBFloat16, NAME, __nv_bfloat16, __half, __VA_ARGS__)

// fp32 or the activation dtype INPUT_T: LayerNorm parameters (AMP keeps fp32 parameters next to
// half activations), softmax outputs and float masks. For fp32 activations both branches name the
// same type, hence the same instances.
#define FASTTX_FP32_OR_SWITCH(IS_FP32, INPUT_T, NAME, ...) \
  FASTTX_TYPE_SWITCH(IS_FP32, NAME, float, INPUT_T, __VA_ARGS__)
