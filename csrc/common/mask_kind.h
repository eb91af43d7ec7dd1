#pragma once
// The masks that softmax and attention read, as the bindings pass them to the kernels.

namespace fasttx {

enum class MaskKind : int {
  kNone,
  kBool,   // keep where true; bytes, 0 or 1 as torch stores bool
  kFloat,  // added to the scaled scores; may hold -inf
};

}  // namespace fasttx
