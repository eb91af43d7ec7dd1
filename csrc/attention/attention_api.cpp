// Checks the arguments, fills AttentionParams, allocates the outputs and calls the launchers of
// attention.h. Registered for CPU too (bindings.cpp): the checks of shapes, dtypes and strides come
// before the device check, so that they can be tested without a GPU, and a well-formed CPU call gets
// the device check's message.

#include "attention/attention_api.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "attention/sm90/attention_sm90.h"
#include "attention/philox.h"
#include "common/checks.h"
#include "common/constants.h"

namespace fasttx {
namespace {

constexpr const char* kFwdOp = "attention_fwd_cuda";
constexpr const char* kBwdOp = "attention_bwd_cuda";
constexpr int64_t kMaxGridDim = 65535;  // grid y (heads) and z (batch)

// "(32, 64, 96)"
std::string head_dims_text(const std::vector<int64_t>& dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) out += (i > 0 ? ", " : "") + num(dims[i]);
  return out + ")";
}

template <int... kE>
std::vector<int64_t> head_dims_of(std::integer_sequence<int, kE...>) {
  return {kE...};
}

// E == Ev must be a head dim with kernels, and one this build compiled.
void check_head_dim(const char* op, int64_t e, int64_t ev) {
  const std::vector<int64_t> all(std::begin(kAttentionHeadDims), std::end(kAttentionHeadDims));
  TORCH_CHECK(ev == e && std::find(all.begin(), all.end(), e) != all.end(), "fasttx::", op,
              ": the CUDA attention kernels take head dims E == Ev in ", head_dims_text(all), ", got E = ", num(e),
              ", Ev = ", num(ev));
  const std::vector<int64_t> built = attention_built_head_dims();
  TORCH_CHECK(std::find(built.begin(), built.end(), e) != built.end(), "fasttx::", op, ": head dim E = ", num(e),
              " was left out of this build of fasttx._C (it has ", head_dims_text(built),
              "): rebuild it with FASTTX_ATTENTION_HEAD_DIMS unset (all head dims) or listing ", num(e));
}

// cp.async copies 16 bytes: base and every row start must be 16-byte aligned.
bool aligned_for_copies(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) <= 1 || t.stride(d) % 8 == 0);
  return ok;
}

// The tensor as the kernels read it: itself, or (rare: an odd storage offset or row stride) a
// contiguous copy.
at::Tensor readable(const at::Tensor& t) {
  return aligned_for_copies(t) ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::ScalarType dt = q.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16, "fasttx::", op,
              ": q must be float16 or bfloat16 (the CUDA attention kernels use fp16 / bf16 tensor cores), got ",
              dtype_name(dt));
  TORCH_CHECK(q.dim() == 4, "fasttx::", op, ": q must be 4-D (B, H, L, E), got shape ", shape(q.sizes()));
  TORCH_CHECK(k.dim() == 4, "fasttx::", op, ": k must be 4-D (B, Hkv, S, E), got shape ", shape(k.sizes()));
  TORCH_CHECK(v.dim() == 4, "fasttx::", op, ": v must be 4-D (B, Hkv, S, Ev), got shape ", shape(v.sizes()));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"k", &k}, {"v", &v}}) {
    check_same_device(op, name, *t, q, "q");
    TORCH_CHECK(t->scalar_type() == dt, "fasttx::", op, ": ", name, " must have q's dtype ", dtype_name(dt), ", got ",
                dtype_name(t->scalar_type()));
  }
  const int64_t B = q.size(0), H = q.size(1), E = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == E, "fasttx::", op, ": k must be (B, Hkv, S, E) = (", num(B), ", Hkv, S, ",
              num(E), ") for q of shape ", shape(q.sizes()), ", got ", shape(k.sizes()));
  TORCH_CHECK(v.size(0) == B && v.size(1) == Hkv && v.size(2) == S, "fasttx::", op,
              ": v must be (B, Hkv, S, Ev) with k's B, Hkv, S, got k ", shape(k.sizes()), " and v ",
              shape(v.sizes()));
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "fasttx::", op, ": q's heads H = ", num(H), " must be a multiple of k's Hkv = ",
              num(Hkv));
  check_head_dim(op, E, v.size(3));
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->stride(3) == 1, "fasttx::", op, ": ", name, " needs a contiguous last dim, got strides ",
                shape(t->strides()));
  }
  TORCH_CHECK(q.size(2) <= std::numeric_limits<int32_t>::max() && S <= std::numeric_limits<int32_t>::max(), "fasttx::",
              op, ": L and S must fit in int32, got L = ", num(q.size(2)), ", S = ", num(S));
  TORCH_CHECK(H <= kMaxGridDim && B <= kMaxGridDim, "fasttx::", op, ": B and H must be at most ", num(kMaxGridDim),
              ", got B = ", num(B), ", H = ", num(H));
}

// The mask as the kernels read it: a view broadcast to (B, H, L, S) with 0 strides (nothing copied);
// float masks of a dtype other than float32 / float16 / bfloat16 (float64) converted to float32 first.
at::Tensor kernel_mask(const char* op, const at::Tensor& mask, const at::Tensor& q, int64_t keys) {
  check_same_device(op, "mask", mask, q, "q");
  const at::ScalarType dt = mask.scalar_type();
  TORCH_CHECK(dt == at::kBool || at::isFloatingType(dt), "fasttx::", op, ": mask must be bool or floating-point, got ",
              dtype_name(dt));
  const std::vector<int64_t> target{q.size(0), q.size(1), q.size(2), keys};
  bool broadcasts = mask.dim() == 4;
  for (int64_t d = 0; broadcasts && d < 4; ++d) broadcasts = mask.size(d) == 1 || mask.size(d) == target[d];
  TORCH_CHECK(broadcasts, "fasttx::", op, ": mask must be 4-D and broadcastable to (B, H, L, S) = ", shape(target),
              " (each dim 1 or equal), got shape ", shape(mask.sizes()));
  const bool convert = dt != at::kBool && !is_kernel_dtype(dt);
  return (convert ? mask.to(at::kFloat) : mask).expand(target);
}

// The Philox seed: an int64 tensor of one element, required when dropout_p > 0 (undefined otherwise).
// The kernels read it from device memory, never here: no host sync, and a CUDA graph replaying the
// launch reads the value that its captured random draw wrote (fasttx.functional draws it on q's
// device). One on another device (the CPU) is copied to q's by device_seed.
at::Tensor checked_seed(const char* op, const std::optional<at::Tensor>& seed, double dropout_p) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fasttx::", op, ": dropout_p must be in [0, 1), got ",
              num(dropout_p));
  if (dropout_p == 0.0) return at::Tensor();
  const at::Tensor* s = present(seed);
  TORCH_CHECK(s != nullptr, "fasttx::", op, ": seed (an int64 scalar tensor) is required when dropout_p > 0");
  TORCH_CHECK(s->scalar_type() == at::kLong && s->numel() == 1, "fasttx::", op,
              ": seed must be an int64 tensor of one element, got ", dtype_name(s->scalar_type()), " of shape ",
              shape(s->sizes()));
  return *s;
}

at::Tensor device_seed(const at::Tensor& seed, const at::Tensor& q) {
  return seed.defined() ? seed.to(q.device()).contiguous() : seed;
}

// Shapes, scale, causal, dropout and mask into p; the pointers of q, k, v and the mask.
void fill_common(AttentionParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& mask4, double scale, bool is_causal, double dropout_p, const at::Tensor& seed) {
  p.dtype = to_dtype(q.scalar_type());
  p.head_dim = static_cast<int>(q.size(3));
  p.batch = static_cast<int>(q.size(0));
  p.heads = static_cast<int>(q.size(1));
  p.kv_heads = static_cast<int>(k.size(1));
  p.queries = static_cast<int>(q.size(2));
  p.keys = static_cast<int>(k.size(2));
  p.is_causal = is_causal;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * kLog2e<double>);
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_threshold = philox::dropout_threshold(dropout_p);
  p.seed = seed.defined() ? seed.data_ptr<int64_t>() : nullptr;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  for (int d = 0; d < 3; ++d) {
    p.q_strides[d] = q.stride(d);
    p.k_strides[d] = k.stride(d);
    p.v_strides[d] = v.stride(d);
  }
  p.mask_kind = !mask4.defined()                     ? MaskKind::kNone
                : mask4.scalar_type() == at::kBool ? MaskKind::kBool
                                                     : MaskKind::kFloat;
  p.mask_dtype = p.mask_kind == MaskKind::kFloat ? to_dtype(mask4.scalar_type()) : DType::kFloat32;
  p.mask = mask4.defined() ? mask4.data_ptr() : nullptr;
  for (int d = 0; d < 4; ++d) p.mask_strides[d] = mask4.defined() ? mask4.stride(d) : 0;
}

}  // namespace

std::vector<int64_t> attention_built_head_dims() { return head_dims_of(AttentionBuiltHeadDims{}); }

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in, const std::optional<at::Tensor>& mask,
                                                      double scale, bool is_causal, double dropout_p,
                                                      const std::optional<at::Tensor>& seed) {
  const char* op = kFwdOp;
  check_qkv(op, q_in, k_in, v_in);
  const at::Tensor seed_checked = checked_seed(op, seed, dropout_p);
  const at::Tensor* given_mask = present(mask);
  const at::Tensor mask4 = given_mask != nullptr ? kernel_mask(op, *given_mask, q_in, k_in.size(2)) : at::Tensor();
  check_cuda(op, "q", q_in);
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2);
  at::Tensor out = at::empty({B, H, L, v_in.size(3)}, q_in.options());
  at::Tensor lse = at::empty({B, H, L}, q_in.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    const c10::cuda::CUDAGuard guard(q_in.device());
    const at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in);
    AttentionParams p{};
    const at::Tensor seed_on_device = device_seed(seed_checked, q);
    fill_common(p, q, k, v, mask4, scale, is_causal, dropout_p, seed_on_device);
    p.o = out.data_ptr();
    p.lse = lse.data_ptr<float>();
    TORCH_INTERNAL_ASSERT(attention_fwd_launch(p, c10::cuda::getCurrentCUDAStream()), "no kernels for E = ",
                          num(int64_t{p.head_dim}), " past check_head_dim");
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse, const std::optional<at::Tensor>& mask, double scale,
    bool is_causal, double dropout_p, const std::optional<at::Tensor>& seed, bool deterministic) {
  const char* op = kBwdOp;
  check_qkv(op, q_in, k_in, v_in);
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2);
  const std::vector<int64_t> out_shape{B, H, L, v_in.size(3)};
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor*>{"grad_out", &grad_out}, {"out", &out_in}}) {
    check_same_device(op, name, *t, q_in, "q");
    TORCH_CHECK(t->scalar_type() == q_in.scalar_type(), "fasttx::", op, ": ", name, " must have q's dtype ",
                dtype_name(q_in.scalar_type()), ", got ", dtype_name(t->scalar_type()));
    TORCH_CHECK(t->sizes() == at::IntArrayRef(out_shape), "fasttx::", op, ": ", name, " must be (B, H, L, Ev) = ",
                shape(out_shape), ", got ", shape(t->sizes()));
    TORCH_CHECK(t->stride(3) == 1, "fasttx::", op, ": ", name, " needs a contiguous last dim, got strides ",
                shape(t->strides()));
  }
  check_same_device(op, "lse", lse, q_in, "q");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.sizes() == at::IntArrayRef({B, H, L}) && lse.is_contiguous(),
              "fasttx::", op, ": lse must be a contiguous float32 (B, H, L) = (", num(B), ", ", num(H), ", ",
              num(L), ") tensor, got ", dtype_name(lse.scalar_type()), " of shape ", shape(lse.sizes()));
  const at::Tensor seed_checked = checked_seed(op, seed, dropout_p);
  const at::Tensor* given_mask = present(mask);
  const at::Tensor mask4 = given_mask != nullptr ? kernel_mask(op, *given_mask, q_in, k_in.size(2)) : at::Tensor();
  check_cuda(op, "q", q_in);
  at::Tensor dq = at::empty(q_in.sizes(), q_in.options());
  at::Tensor dk = at::zeros(k_in.sizes(), k_in.options());  // zeros: S > 0 with L = 0 launches nothing
  at::Tensor dv = at::zeros(v_in.sizes(), v_in.options());
  if (dq.numel() > 0 && dk.numel() > 0) {
    const c10::cuda::CUDAGuard guard(q_in.device());
    const at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in);
    const at::Tensor out = readable(out_in), dout = readable(grad_out);
    at::Tensor delta = at::empty({B, H, L}, q_in.options().dtype(at::kFloat));
    AttentionBwdParams p{};
    const at::Tensor seed_on_device = device_seed(seed_checked, q);
    fill_common(p, q, k, v, mask4, scale, is_causal, dropout_p, seed_on_device);
    p.o = const_cast<void*>(out.data_ptr());
    p.lse = const_cast<float*>(lse.data_ptr<float>());
    p.dout = dout.data_ptr();
    for (int d = 0; d < 3; ++d) {
      p.o_strides[d] = out.stride(d);
      p.dout_strides[d] = dout.stride(d);
    }
    p.delta = delta.data_ptr<float>();
    p.dq = dq.data_ptr();
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    // The atomic-dQ kernel adds dQ / scale into fp32 zeros, scaled and cast into dq below (one pass:
    // mul's output cast to dq's dtype); the buffer only where that kernel may run (switched on, a call
    // it takes), so that no other call pays for it.
    at::Tensor dq_accum;
    if (!deterministic && !at::globalContext().deterministicAlgorithms() && attention_sm90_enabled() &&
        attention_bwd_kvq_sm90_supports(p)) {
      dq_accum = at::zeros({B, H, L, q.size(3)}, q.options().dtype(at::kFloat));
      p.dq_accum = dq_accum.data_ptr<float>();
    }
    const BwdLaunch launched = attention_bwd_launch(p, c10::cuda::getCurrentCUDAStream());
    TORCH_INTERNAL_ASSERT(launched != BwdLaunch::kNone, "no kernels for E = ", num(int64_t{p.head_dim}),
                          " past check_head_dim");
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (launched == BwdLaunch::kDqAccumulated) at::mul_out(dq, dq_accum, scale);
  } else if (dq.numel() > 0) {
    dq.zero_();  // no keys: every row is fully masked
  }
  return {dq, dk, dv};
}

}  // namespace fasttx
