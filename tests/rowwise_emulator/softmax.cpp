// The CUDA softmax kernels of csrc/softmax, compiled for the host: this directory's common/launch.h
// replaces the real one (the kernels' launches and built-ins), and every other line is the real
// source, kernel selection and launch configurations included. Called from
// tests/test_cuda_softmax_emulated.py, which plays the part of softmax_api.cpp.

#include "common/launch.h"  // the emulation (first on the include path)

#include "softmax/softmax_bwd.cu"
#include "softmax/softmax_fwd.cu"

#include "cuda_emulator/params_by_name.h"

namespace emu {

// Every field of the params, by name (a field added to softmax.h goes here too, or it stays 0).
inline std::vector<Field<fasttx::SoftmaxFwdParams>> fwd_fields() {
  using P = fasttx::SoftmaxFwdParams;
  return {FIELD(P, input_dtype), FIELD(P, output_dtype), FIELD(P, mask_kind), FIELD(P, mask_dtype),
          FIELD(P, is_causal),   FIELD(P, rows),         FIELD(P, cols),      FIELD(P, heads),
          FIELD(P, queries),     FIELD(P, x),            FIELD(P, mask),      FIELD(P, mask_strides),
          FIELD(P, y),           FIELD(P, scale_log2)};
}

inline std::vector<Field<fasttx::SoftmaxBwdParams>> bwd_fields() {
  using P = fasttx::SoftmaxBwdParams;
  return {FIELD(P, out_dtype), FIELD(P, grad_dtype), FIELD(P, is_causal), FIELD(P, rows), FIELD(P, cols),
          FIELD(P, queries),   FIELD(P, y),          FIELD(P, dy),        FIELD(P, dx),   FIELD(P, scale)};
}

}  // namespace emu

#undef FIELD

// fields: "name=value" for every field of SoftmaxFwdParams (params_by_name.h). Returns nullptr, or
// why nothing was launched. (The kernels' loads are plain C++ here, unchecked: the test guards every
// tensor instead.)
extern "C" const char* emu_softmax_fwd(const char* const* fields, int n_fields) {
  return emu::error_or_null([&] {
    fasttx::softmax_fwd_launch(emu::params(emu::fwd_fields(), fields, n_fields), nullptr);
  });
}

// As emu_softmax_fwd, for softmax_bwd_launch and SoftmaxBwdParams.
extern "C" const char* emu_softmax_bwd(const char* const* fields, int n_fields) {
  return emu::error_or_null([&] {
    fasttx::softmax_bwd_launch(emu::params(emu::bwd_fields(), fields, n_fields), nullptr);
  });
}
