#pragma once

namespace fasttx {

template <typename I>
__host__ __device__ constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

}  // namespace fasttx
