#pragma once
// Masked softmax over the last dim, y = softmax(scale * x + mask), and its backward: parameters
// and launchers. Plain C++ (no torch, no CUDA device code) so the bindings and the kernel files
// share it.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/mask_kind.h"

namespace fasttx {

struct SoftmaxFwdParams {
  DType input_dtype;   // x
  DType output_dtype;  // y: input_dtype or kFloat32
  MaskKind mask_kind;
  DType mask_dtype;    // kFloat masks: input_dtype or kFloat32
  bool is_causal;      // keep column c <= l in row l of the last two dims (top-left aligned)
  int64_t rows;        // A * B * L, from 1 to INT32_MAX (the bindings handle 0 without launching)
  int cols;            // C >= 1
  int heads;           // B: row r is (a, b, l) with r = (a * B + b) * L + l
  int queries;         // L
  const void* x;       // (A, B, L, C) input_dtype, contiguous
  // (A, B, L, C) view with any strides, in elements: element (a, b, l, c) is at
  // mask + a * s[0] + b * s[1] + l * s[2] + c * s[3]; 0 for broadcast dims. nullptr for kNone.
  const void* mask;
  int64_t mask_strides[4];
  void* y;             // (A, B, L, C) output_dtype, contiguous
  float scale_log2;    // scale * log2(e): the kernels work in base 2
};

struct SoftmaxBwdParams {
  DType out_dtype;   // y and dy
  DType grad_dtype;  // dx: any of the three when out_dtype or grad_dtype is kFloat32, else out_dtype
  // The forward's is_causal: y is 0 past column l of row r (l = r % queries), so only columns
  // <= l of y and dy are read, and dx is written 0 past them.
  bool is_causal;
  int64_t rows;      // M >= 1, up to INT32_MAX
  int cols;          // C >= 1
  int queries;       // L: with is_causal, the rows are M / L (L, C) matrices (unread otherwise)
  const void* y;     // (M, C) out_dtype, the forward's output, contiguous
  const void* dy;    // (M, C) out_dtype, contiguous
  void* dx;          // (M, C) grad_dtype, contiguous
  float scale;
};

// Launch on `stream`; launch errors are left for cudaGetLastError.
void softmax_fwd_launch(const SoftmaxFwdParams& p, cudaStream_t stream);
void softmax_bwd_launch(const SoftmaxBwdParams& p, cudaStream_t stream);

}  // namespace fasttx
