#pragma once
// LayerNorm and RMSNorm over the last dim of a contiguous (M, N) tensor: parameters and launchers.
// Plain C++ (no torch, no CUDA device code) so the bindings and the kernel files share it.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace fasttx {

struct NormParamsBase {
  bool is_rms;          // RMSNorm: no mean subtraction and no bias
  DType input_dtype;    // x, y, dy, dx
  DType param_dtype;    // weight, bias and their grads: input_dtype or kFloat32
  int64_t rows;         // M >= 1 (the bindings handle M == 0 without launching)
  int cols;             // N >= 1
};

struct NormFwdParams : NormParamsBase {
  const void* x;        // (M, N) input_dtype
  const void* weight;   // (N,) param_dtype, or nullptr
  const void* bias;     // (N,) param_dtype, or nullptr (always for RMSNorm)
  void* y;              // (M, N) input_dtype
  float* mean;          // (M,), nullptr for RMSNorm
  float* rstd;          // (M,)
  float eps;
};

struct NormBwdParams : NormParamsBase {
  const void* dy;       // (M, N) input_dtype
  const void* x;        // (M, N) input_dtype
  const void* weight;   // (N,) param_dtype, or nullptr
  const float* mean;    // (M,) from the forward, nullptr for RMSNorm
  const float* rstd;    // (M,) from the forward
  void* dx;             // (M, N) input_dtype
  void* dweight;        // (N,) param_dtype, or nullptr when there is no weight
  void* dbias;          // (N,) param_dtype, or nullptr when there is no bias grad
  // G fixed row groups each write per-column partial sums of dweight / dbias; a second kernel adds
  // the G rows per column in a fixed order, so the result is deterministic without atomics.
  int num_partials;         // G, from norm_bwd_num_partials
  float* dweight_partials;  // (G, N) fp32 workspace, or nullptr when dweight is nullptr
  float* dbias_partials;    // (G, N) fp32 workspace, or nullptr when dbias is nullptr
};

// Launches on `stream`; launch errors are left for cudaGetLastError.
void norm_fwd_launch(const NormFwdParams& p, cudaStream_t stream);

// G for p (all fields but num_partials and the workspaces must be set). Deterministic for a device.
cudaError_t norm_bwd_num_partials(const NormBwdParams& p, int* num_partials);

// Launches on `stream`; launch errors are left for cudaGetLastError.
void norm_bwd_launch(const NormBwdParams& p, cudaStream_t stream);

}  // namespace fasttx
