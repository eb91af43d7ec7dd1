#pragma once
// The TMA maps of the sm_90a attention kernels' host code (attention_fwd_sm90.cu, launch_bwd_sm90): an input as
// the kernels read it, in boxes of 128-byte swizzled rows.

#include "attention/sm90/primitives_sm90.cuh"

namespace fasttx {
namespace attn {

// A (B, heads, rows, E) tensor with element strides (batch, head, row) as a TMA map over (E, rows,
// heads, B), boxes of 64 columns (one 128-byte swizzled row) x box_rows rows. A map needs every dim
// >= 1: rows = 0 (S = 0) maps one row that no CTA reads.
inline bool encode_bhle(CUtensorMap* map, const void* base, bool bf16, int head_dim, int batch, int heads, int rows,
                        const int64_t (&strides)[3], int box_rows) {
  const int64_t dims[4] = {head_dim, rows > 0 ? rows : 1, heads, batch};
  const int64_t bytes[3] = {2 * strides[2], 2 * strides[1], 2 * strides[0]};
  return encode_tma_4d(map, base, bf16, dims, bytes, kSwizzleBytes / 2, box_rows);
}

}  // namespace attn
}  // namespace fasttx
