// The fasttx operator library: schemas and their CUDA implementations. Python adds fake (meta)
// implementations and autograd on top (fasttx/_ops.py). Each schema is the one declared for the op
// in fasttx/_declarations.py, which tests/test_cuda_extension.py checks.

#include <Python.h>
#include <torch/library.h>

#include "attention/attention_api.h"
#include "layer_norm/layer_norm_api.h"
#include "softmax/softmax_api.h"

// `import fasttx._C` loads this library and with it the registrations below. The module holds one
// attribute, ATTENTION_HEAD_DIMS: the head dims this build has attention kernels for (a build can
// leave some out, FASTTX_ATTENTION_HEAD_DIMS), a tuple of ints that fasttx/functional/attention.py checks.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const std::vector<int64_t> dims = fasttx::attention_built_head_dims();
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(dims.size()));
  for (size_t i = 0; tuple != nullptr && i < dims.size(); ++i) {
    PyTuple_SET_ITEM(tuple, static_cast<Py_ssize_t>(i), PyLong_FromLongLong(dims[i]));
  }
  if (tuple == nullptr || PyModule_AddObject(module, "ATTENTION_HEAD_DIMS", tuple) < 0) {
    Py_XDECREF(tuple);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

TORCH_LIBRARY(fasttx, m) {
  m.def("layer_norm_fwd_cuda(Tensor input, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_bwd_cuda(Tensor grad_out, Tensor input, Tensor? weight, Tensor mean, Tensor rstd, bool has_bias)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("rms_norm_fwd_cuda(Tensor input, Tensor? weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_bwd_cuda(Tensor grad_out, Tensor input, Tensor? weight, Tensor rstd) -> (Tensor, Tensor)");
  m.def("softmax_fwd_cuda(Tensor input, Tensor? mask, float scale, bool is_causal, ScalarType out_dtype) -> Tensor");
  m.def("softmax_bwd_cuda(Tensor out, Tensor grad_out, float scale, bool is_causal, ScalarType in_dtype) -> Tensor");
  m.def(
      "attention_fwd_cuda(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, bool is_causal, float dropout_p,"
      " Tensor? seed, bool deterministic=True) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd_cuda(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask,"
      " float scale, bool is_causal, float dropout_p, Tensor? seed, bool deterministic=True)"
      " -> (Tensor, Tensor, Tensor)");
}

namespace {

// `deterministic` lets the backward add dQ with atomics (Triton's, and the sm_90a C++ backward's where it
// runs); the C++ forward ignores it (one schema per op, fasttx/_declarations.py).
std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& mask, double scale, bool is_causal,
                                                 double dropout_p, const std::optional<at::Tensor>& seed,
                                                 bool /*deterministic*/) {
  return fasttx::attention_fwd_cuda(q, k, v, mask, scale, is_causal, dropout_p, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& mask, double scale, bool is_causal, double dropout_p,
    const std::optional<at::Tensor>& seed, bool deterministic) {
  return fasttx::attention_bwd_cuda(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed,
                                    deterministic);
}

void impl_all(torch::Library& m) {
  m.impl("layer_norm_fwd_cuda", &fasttx::layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd_cuda", &fasttx::layer_norm_bwd_cuda);
  m.impl("rms_norm_fwd_cuda", &fasttx::rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd_cuda", &fasttx::rms_norm_bwd_cuda);
  m.impl("softmax_fwd_cuda", &fasttx::softmax_fwd_cuda);
  m.impl("softmax_bwd_cuda", &fasttx::softmax_bwd_cuda);
  m.impl("attention_fwd_cuda", &attention_fwd);
  m.impl("attention_bwd_cuda", &attention_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(fasttx, CUDA, m) { impl_all(m); }

// CPU tensors reach the same functions, whose input checks then say what is wrong (a CUDA tensor
// is required) instead of the dispatcher's "no kernel registered for CPU".
TORCH_LIBRARY_IMPL(fasttx, CPU, m) { impl_all(m); }
