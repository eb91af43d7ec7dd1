#pragma once
// The TMA maps of the sm_90a attention kernels' host code (attention_{fwd,bwd,dq}_sm90.cu): an input as
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

// The four maps of an sm_90a backward kernel (Sm90BwdParams: q, dout in boxes of `q_rows` rows, k, v
// of `kv_rows`), as both (attention_bwd_sm90.cu, attention_dq_sm90.cu) read them.
template <typename Params, typename Call>
bool encode_bwd_maps(Params* params, const Call& p, bool bf16, int head_dim, int q_rows, int kv_rows) {
  return encode_bhle(&params->q_map, p.q, bf16, head_dim, p.batch, p.heads, p.queries, p.q_strides, q_rows) &&
         encode_bhle(&params->do_map, p.dout, bf16, head_dim, p.batch, p.heads, p.queries, p.dout_strides, q_rows) &&
         encode_bhle(&params->k_map, p.k, bf16, head_dim, p.batch, p.kv_heads, p.keys, p.k_strides, kv_rows) &&
         encode_bhle(&params->v_map, p.v, bf16, head_dim, p.batch, p.kv_heads, p.keys, p.v_strides, kv_rows);
}

}  // namespace attn
}  // namespace fasttx
