#pragma once
// The TMA maps of the sm_90a attention kernels' host code (attention_fwd_sm90_run, launch_bwd_sm90): an input as
// the kernels read it, in boxes of 128-byte swizzled rows.

#include "attention/sm90/primitives_sm90.cuh"

namespace fasttx {
namespace attn {

// A (B, heads, rows, E) tensor with element strides (batch, head, row) as a TMA map over (E, rows,
// heads, B), boxes of 64 columns (one 128-byte swizzled row) x box_rows rows. A map needs every dim
// >= 1: rows = 0 (S = 0) maps one row that no CTA reads. The driver wants every stride a positive
// multiple of 16 bytes, even a dim of extent 1's, whose stride torch leaves free (an unsqueeze or an
// expand can give it any value, and the binding's alignment check skips it): such a dim, never
// stepped, takes the stride a packed layout would give it, so that it cannot send the call to the
// sm_80 kernels.
inline bool encode_bhle(CUtensorMap* map, const void* base, bool bf16, int head_dim, int batch, int heads, int rows,
                        const int64_t (&strides)[3], int box_rows) {
  const int64_t dims[4] = {head_dim, rows > 0 ? rows : 1, heads, batch};
  int64_t bytes[3];
  int64_t packed = 2 * int64_t{head_dim};  // bytes the dims inside dim d + 1 span, laid out packed
  for (int d = 0; d < 3; ++d) {
    bytes[d] = dims[d + 1] == 1 ? packed : 2 * strides[2 - d];
    packed = bytes[d] * dims[d + 1];
  }
  return encode_tma_4d(map, base, bf16, dims, bytes, kSwizzleCols, box_rows);
}

}  // namespace attn
}  // namespace fasttx
