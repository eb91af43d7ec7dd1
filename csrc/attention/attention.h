#pragma once
// Flash attention (FlashAttention-2 scheme, tensor cores through mma.sync): parameters and
// launchers. Plain C++ (no torch, no device code) so that the bindings and the kernel files share it.
// The kernels, the tile shapes and the choice of hand-written PTX over CuTe: README.md here.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention/attention_kernels.h"
#include "common/dtype.h"
#include "common/mask_kind.h"

namespace fasttx {

// The forward's parameters; the backward's extend them (AttentionBwdParams).
struct AttentionParams {
  DType dtype;  // q, k, v, o, do, dq, dk, dv: kFloat16 or kBFloat16
  int head_dim;  // E == Ev, one of AttentionBuiltHeadDims (attention_kernels.h)
  int batch, heads, kv_heads;  // B, H, Hkv; H % Hkv == 0, query head h reads kv head h / (H / Hkv)
  int queries, keys;           // L, S >= 0
  bool is_causal;              // key j is seen by query i iff j <= i (top-left aligned)
  float scale_log2;            // scale * log2(e): the kernels work in base 2
  // The softmax scale itself, read by the backward (dK = scale dS^T Q, dQ = scale dS K). Here rather
  // than in AttentionBwdParams: there, the changed parameter layout cost the causal dK/dV kernel at
  // E = 32 on sm_90a 12/20 B of spills (ptxas -v).
  float scale;
  // Dropout: element (b, h, i, j) of P is kept iff 16-bit value j % 8 of the words of Philox counter
  // ((b H + h) L + i) ceil(S / 8) + j / 8 is >= keep_threshold (philox.h); kept ones are scaled by 1 / (1 - p).
  float dropout_p;          // in [0, 1); 0 = no dropout
  uint32_t keep_threshold;  // philox::dropout_threshold(p), in the padding before seed: no field moves
  // The seed in device memory, read by every CTA when dropout_p > 0: a CUDA graph replays the launch
  // with these parameters, and the seed tensor its captured random draw rewrites at each replay.
  const int64_t* seed;

  // Inputs, element strides of (batch, head, row); the last dim is contiguous, every base pointer is
  // 16-byte aligned and every stride a multiple of 8 elements (16 bytes), as cp.async needs.
  const void* q;  // (B, H, L, E)
  const void* k;  // (B, Hkv, S, E)
  const void* v;  // (B, Hkv, S, E)
  int64_t q_strides[3], k_strides[3], v_strides[3];
  // Mask: element (b, h, i, j) at mask + b s[0] + h s[1] + i s[2] + j s[3]; 0 strides broadcast.
  MaskKind mask_kind;
  DType mask_dtype;  // kFloat masks
  const void* mask;
  int64_t mask_strides[4];

  // Forward outputs, backward inputs: contiguous.
  void* o;     // (B, H, L, E), dtype
  float* lse;  // (B, H, L): natural-log log-sum-exp of the scaled, masked scores; +inf on fully masked rows
};

struct AttentionBwdParams : AttentionParams {
  const void* dout;  // (B, H, L, E), strides below, same alignment rules as q
  int64_t dout_strides[3];
  int64_t o_strides[3];  // of o, read by the preprocessing
  float* delta;          // (B, H, L) fp32 workspace: rowsum(dO * O)
  void* dq;              // (B, H, L, E) contiguous
  void* dk;              // (B, Hkv, S, E) contiguous
  void* dv;              // (B, Hkv, S, E) contiguous
  // (B, H, L, E) contiguous fp32 zeros, or null. Given, the sm_90a dK/dV kernel may add dQ / scale
  // into it with atomics instead of the dQ kernel writing dq (deterministic=False: attention_bwd_launch
  // says which happened); null, dQ is written to dq, deterministically.
  float* dq_accum;
};

// Launch on `stream`; launch errors are left for cudaGetLastError. Every size may be 0 but B * H.
// False (kNone), launching nothing, when p.head_dim is not one of AttentionBuiltHeadDims (the
// binding rejects those first).
bool attention_fwd_launch(const AttentionParams& p, cudaStream_t stream);
// What the backward launched: nothing, or the gradients with dQ in dq, or dQ / scale added into
// p.dq_accum (the sm_90a atomic-dQ kernel, only where p.dq_accum is given and that kernel runs).
enum class BwdLaunch { kNone, kDq, kDqAccumulated };
BwdLaunch attention_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream);

// One per head dim (the generated attention_{fwd,bwd}_hdim*.cu), so that the instantiations compile
// in parallel.
template <int kHeadDim>
void attention_fwd_hdim(const AttentionParams& p, cudaStream_t stream);
// True where dQ went into p.dq_accum (BwdLaunch::kDqAccumulated).
template <int kHeadDim>
bool attention_bwd_hdim(const AttentionBwdParams& p, cudaStream_t stream);

}  // namespace fasttx
