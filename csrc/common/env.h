#pragma once
// The environment switches the kernels' host code reads (FASTTX_CUDA_CLUSTERS, FASTTX_ATTENTION_SM90 and the
// sm_90a attention's variants under comparison): plain C++, read at each call, so that a process, the tests
// and the bench can flip them between calls.

#include <cstdlib>
#include <cstring>

namespace fasttx {

// Whether the environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

}  // namespace fasttx
