#pragma once
// The attention params by field name (tests/cuda_emulator/params_by_name.h), shared by emulator.cpp
// (sm_80) and emulator_sm90.cpp.

#include "attention/primitives.cuh"  // the emulation's, first on the include path
#include "attention/attention.h"
#include "cuda_emulator/params_by_name.h"

namespace emu {

// Every field of the params, by name (a field added to attention.h goes here too, or it stays 0).
template <typename P>
std::vector<Field<P>> fwd_fields() {
  return {FIELD(P, dtype),        FIELD(P, head_dim),  FIELD(P, batch),      FIELD(P, heads),
          FIELD(P, kv_heads),     FIELD(P, queries),   FIELD(P, keys),       FIELD(P, is_causal),
          FIELD(P, scale_log2),   FIELD(P, scale),     FIELD(P, dropout_p),  FIELD(P, keep_threshold),
          FIELD(P, seed),         FIELD(P, q),         FIELD(P, k),          FIELD(P, v),
          FIELD(P, q_strides),    FIELD(P, k_strides), FIELD(P, v_strides),  FIELD(P, mask_kind),
          FIELD(P, mask_dtype),   FIELD(P, mask),      FIELD(P, mask_strides), FIELD(P, o),
          FIELD(P, lse)};
}

inline std::vector<Field<fasttx::AttentionBwdParams>> bwd_fields() {
  using P = fasttx::AttentionBwdParams;
  std::vector<Field<P>> fields = fwd_fields<P>();
  fields.insert(fields.end(), {FIELD(P, dout), FIELD(P, dout_strides), FIELD(P, o_strides), FIELD(P, delta),
                               FIELD(P, dq), FIELD(P, dk), FIELD(P, dv), FIELD(P, dq_accum)});
  return fields;
}

}  // namespace emu
