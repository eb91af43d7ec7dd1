"""One-off GPU diagnostic (not committed): which Triton attention forward configs go wrong in fp32
with a float mask, and a few CUDA-only behaviours the failing tests point at."""
import time, torch, fasttx
from fasttx.cli import gpu_autotune, gpu_cases
from fasttx import reference
t0 = time.time()
tuners = gpu_autotune.autotuners()
dev = "cuda"

def fwd_err(B, H, L, S, E, dtype, mask_kind, forcer, name, config, stages=None):
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, L, E, device=dev, dtype=dtype, generator=g)
    k = torch.randn(B, H, S, E, device=dev, dtype=dtype, generator=g)
    v = torch.randn(B, H, S, E, device=dev, dtype=dtype, generator=g)
    if mask_kind == "float":
        m = torch.randn(B, 1, L, S, device=dev, dtype=dtype, generator=g)
    elif mask_kind == "floatinf":
        m = torch.zeros(B, 1, L, S, device=dev, dtype=dtype).masked_fill(torch.rand(B, 1, L, S, device=dev, generator=g) < 0.3, float("-inf"))
    elif mask_kind == "zeros":
        m = torch.zeros(B, 1, L, S, device=dev, dtype=dtype)
    else:
        m = None
    forcer.reset((name, config) if config is not None else None)
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=m, backend="triton")
    ref = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=None if m is None else m.double())
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()

name = "attention_fwd._attn_fwd"
with gpu_autotune.Forcer(tuners) as forcer:
    for (B, H, L, S, E) in [(2, 3, 200, 333, 64), (1, 3, 4, 3, 16), (1, 2, 5, 5, 16)]:
        for dtype in (torch.float32, torch.bfloat16):
            for mk in ("float", "floatinf", "zeros", None):
                forcer.reset()
                base = fwd_err(B, H, L, S, E, dtype, mk, forcer, name, None)
                admitted = forcer.admitted.get(name, [])
                errs = []
                for c in admitted:
                    try:
                        errs.append(f"{gpu_autotune.config_key(c)}:{fwd_err(B, H, L, S, E, dtype, mk, forcer, name, c):.2g}")
                    except Exception as e:
                        errs.append(f"{gpu_autotune.config_key(c)}:{type(e).__name__}")
                print(f"{B}x{H}x{L}x{S} E={E} {dtype} mask={mk} first={base:.3g} | " + " ".join(errs), flush=True)
print("attention diag", round(time.time() - t0, 1), "s", flush=True)

# torch's TransformerEncoderLayer fast path on CUDA fp64 (eval) vs its slow path
torch.manual_seed(0)
layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True, device=dev, dtype=torch.float64).eval()
x = torch.randn(3, 6, 16, device=dev, dtype=torch.float64)
with torch.no_grad():
    fast = layer(x)
    slow = layer(x.requires_grad_())
print("encoder layer eval fast-vs-slow max diff", (fast - slow.detach()).abs().max().item())
x.requires_grad_(False)
with torch.no_grad():
    ex = torch.nn.functional.gelu(torch.randn(1000, device=dev, dtype=torch.float64))
print("torch.backends.mha fastpath enabled:", torch.backends.mha.get_fastpath_enabled())
# rms_norm output dtypes per backend (fp32 input, bf16 weight and the reverse)
for xd, wd in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)):
    xx = torch.randn(4, 64, device=dev, dtype=xd); w = torch.randn(64, device=dev, dtype=wd)
    r = {}
    for be in ("torch", "triton", "cuda"):
        try:
            r[be] = str(fasttx.rms_norm(xx, (64,), w, backend=be).dtype)
        except Exception as e:
            r[be] = f"{type(e).__name__}: {str(e)[:120]}"
    try:
        r["F.rms_norm"] = str(torch.nn.functional.rms_norm(xx, (64,), w).dtype)
    except Exception as e:
        r["F.rms_norm"] = f"{type(e).__name__}: {str(e)[:120]}"
    print("rms_norm", xd, wd, r)
print("total", round(time.time() - t0, 1), "s")
