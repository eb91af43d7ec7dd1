// The CUDA LayerNorm / RMSNorm kernels of csrc/layer_norm, compiled for the host: this directory's
// common/launch.h replaces the real one (the kernels' launches, occupancy query and built-ins), and
// every other line is the real source, kernel selection and launch configurations included. Called
// from tests/test_cuda_norm_emulated.py, which plays the part of layer_norm_api.cpp.

#include "common/launch.h"  // the emulation (first on the include path)

#include "layer_norm/layer_norm_bwd.cu"
#include "layer_norm/layer_norm_fwd.cu"

#include "cuda_emulator/params_by_name.h"

namespace emu {

// Every field of the params, by name (a field added to layer_norm.h goes here too, or it stays 0).
template <typename P>
std::vector<Field<P>> base_fields() {
  return {FIELD(P, is_rms), FIELD(P, input_dtype), FIELD(P, param_dtype), FIELD(P, rows), FIELD(P, cols)};
}

inline std::vector<Field<fasttx::NormFwdParams>> fwd_fields() {
  using P = fasttx::NormFwdParams;
  std::vector<Field<P>> fields = base_fields<P>();
  fields.insert(fields.end(), {FIELD(P, x), FIELD(P, weight), FIELD(P, bias), FIELD(P, y), FIELD(P, mean),
                               FIELD(P, rstd), FIELD(P, eps)});
  return fields;
}

inline std::vector<Field<fasttx::NormBwdParams>> bwd_fields() {
  using P = fasttx::NormBwdParams;
  std::vector<Field<P>> fields = base_fields<P>();
  fields.insert(fields.end(), {FIELD(P, dy), FIELD(P, x), FIELD(P, weight), FIELD(P, mean), FIELD(P, rstd),
                               FIELD(P, dx), FIELD(P, dweight), FIELD(P, dbias), FIELD(P, num_partials),
                               FIELD(P, dweight_partials), FIELD(P, dbias_partials)});
  return fields;
}

}  // namespace emu

#undef FIELD

// What resident_blocks reports from now on (common/launch.h here).
extern "C" void emu_set_resident_blocks(int blocks) { fasttx::emulated_resident_blocks = blocks; }

// fields: "name=value" for every field of NormFwdParams (params_by_name.h). Returns nullptr, or why
// nothing was launched. (The kernels' loads are plain C++ here, unchecked: the test guards every
// tensor with NaN instead.)
extern "C" const char* emu_norm_fwd(const char* const* fields, int n_fields) {
  return emu::error_or_null([&] {
    fasttx::norm_fwd_launch(emu::params(emu::fwd_fields(), fields, n_fields), nullptr);
  });
}

// norm_bwd_num_partials for the NormBwdParams in fields (num_partials and the workspaces ignored).
extern "C" const char* emu_norm_bwd_num_partials(const char* const* fields, int n_fields, int* num_partials) {
  return emu::error_or_null([&] {
    if (fasttx::norm_bwd_num_partials(emu::params(emu::bwd_fields(), fields, n_fields), num_partials) !=
        cudaSuccess) {
      throw std::runtime_error("norm_bwd_num_partials failed");
    }
  });
}

// As emu_norm_fwd, for norm_bwd_launch.
extern "C" const char* emu_norm_bwd(const char* const* fields, int n_fields) {
  return emu::error_or_null([&] {
    fasttx::norm_bwd_launch(emu::params(emu::bwd_fields(), fields, n_fields), nullptr);
  });
}
