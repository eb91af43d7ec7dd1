#pragma once
// Constants shared by the bindings and the kernels.

namespace fasttx {

// log2(e): the softmax and attention kernels work in base 2, exp(t) = exp2(t * log2 e). The
// bindings fold it into the scale in double (kLog2e<double>), the kernels into masks and the saved
// log-sum-exp in float (kLog2e<float>).
template <typename T>
inline constexpr T kLog2e = static_cast<T>(1.4426950408889634);

}  // namespace fasttx
