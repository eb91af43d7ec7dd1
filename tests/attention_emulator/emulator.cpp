// The CUDA attention kernels of csrc/attention, compiled for the host: this directory's
// attention/primitives.cuh replaces the real one, and every other line is the real source, launch
// configurations and head-dim dispatch included. Called from tests/test_cuda_attention_emulated.py.

#include "attention/primitives.cuh"  // the emulation (first on the include path)
#include "attention/sm90/primitives_sm90.cuh"  // emulated as sm_80 here (runs_sm90a false): emulator_sm90.cpp runs sm_90a

#include <stdexcept>

#include "attention/attention_launch.cpp"
#include "attention_kernels.inc"  // every generated attention_{fwd,bwd}_hdim*.cu
// The sm_90a entry points and kernels: the dispatch names them; never launched here (emulator_sm90.cpp and
// emulator_sm90_bwd.cpp run them).
#include "attention/sm90/attention_fwd_sm90.cu"
#include "attention_sm90_fwd_kernels.inc"
#include "attention/sm90/attention_bwd_sm90.cu"
#include "attention_sm90_bwd_kernels.inc"

#include "attention_fields.h"

// fields: "name=value" for every field of AttentionParams (AttentionBwdParams when backward), arrays
// as comma-separated values, pointers as addresses (tests/cuda_emulator/params_by_name.h); ranges: (address, bytes) of
// every input. Returns nullptr, or why nothing was launched.
extern "C" const char* emu_attention(int backward, const char* const* fields, int n_fields, const int64_t* ranges,
                                     int n_ranges) {
  return emu::error_or_null([&] {
    emu::set_ranges(ranges, n_ranges);
    const bool launched =
        backward ? fasttx::attention_bwd_launch(emu::params(emu::bwd_fields(), fields, n_fields), nullptr) !=
                       fasttx::BwdLaunch::kNone
                 : fasttx::attention_fwd_launch(
                       emu::params(emu::fwd_fields<fasttx::AttentionParams>(), fields, n_fields), nullptr);
    if (!launched) throw std::runtime_error("no kernels for this head_dim");
  });
}
