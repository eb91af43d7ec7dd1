"""Compile the Triton attention kernels for sm_90a without a GPU (Triton's own compiler and ptxas) and
print, one JSON line per kernel variant, the shared memory it takes and the kernel's model of it; with
--ptxas, the warnings ptxas gives on the kernels the benchmarks run (PTXAS_CHECKS).

Run in a process without TRITON_INTERPRET (the interpreter replaces the kernels), by
tests/ops/test_attention_launch.py. What the interpreter never shows shows here: code that does not
compile, and the shared memory of the configs.
"""

import contextlib
import io
import json
import re
import sys

import torch
import triton

UNSUPPORTED = 3  # exit status: this Triton binds or compiles otherwise (its internals, used here, change)
try:
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature, find_paths_if, get_iterable_path
except ImportError as e:
    if __name__ == "__main__":
        print(f"triton {triton.__version__}: {e}", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    raise

from fasttx.triton_kernels import attention_bwd, attention_fwd
from fasttx.triton_kernels.attention_common import (DEFAULT_SHARED_MEMORY, kernel_args, modelled_shared_memory,
                                                   set_block_shapes, space_configs)

TARGET = GPUTarget("cuda", 90, 32)
KERNELS = {
    "fwd": (attention_fwd._attn_fwd_kernel, attention_fwd.fwd_shared_memory),
    "bwd_kv": (attention_bwd._attn_bwd_kv_kernel, attention_bwd.bwd_kv_shared_memory),
    "bwd_q": (attention_bwd._attn_bwd_q_kernel, attention_bwd.bwd_q_shared_memory),
    "bwd_atomic": (attention_bwd._attn_bwd_kv_kernel, attention_bwd.bwd_atomic_shared_memory),
}
# (kernel, (BLOCK_M, BLOCK_N, num_warps, num_stages), head dim, dtype, mask dtype, causal, dropout_p, TMA[,
# key padding]): each kernel's largest tiles, and every mask kind, causal and dropout once, on the TMA path
# (what sm_90 runs); the pointer path (other GPUs, strides TMA cannot take) of the largest ones; masks
# (B, 1, L, S), or with key padding (B, 1, 1, S) (MASK_ROWS_BROADCAST), in each kernel and mask kind.
VARIANTS = [
    ("fwd", (128, 128, 8, 3), 128, torch.float16, None, False, 0.0, True),
    ("fwd", (128, 128, 8, 3), 128, torch.float16, None, False, 0.0, False),
    ("fwd", (128, 128, 8, 2), 128, torch.float16, torch.float32, False, 0.1, True),
    ("fwd", (64, 32, 4, 3), 64, torch.float32, torch.bool, True, 0.0, True),
    ("bwd_kv", (32, 128, 8, 3), 128, torch.float16, None, True, 0.1, True),
    ("bwd_kv", (32, 128, 8, 3), 128, torch.float16, None, True, 0.1, False),
    ("bwd_kv", (32, 64, 4, 4), 64, torch.float16, torch.float16, False, 0.0, True),
    ("bwd_q", (128, 64, 8, 2), 128, torch.float16, torch.bool, True, 0.1, True),
    ("bwd_q", (128, 64, 8, 2), 128, torch.float16, torch.bool, True, 0.1, False),
    ("bwd_q", (64, 32, 4, 3), 64, torch.float32, torch.float32, False, 0.0, True),
    ("bwd_atomic", (64, 64, 8, 3), 128, torch.float16, torch.bool, True, 0.1, True),
    ("bwd_atomic", (64, 64, 8, 3), 128, torch.float16, torch.bool, True, 0.1, False),
    ("bwd_atomic", (32, 16, 4, 3), 64, torch.float32, torch.float32, False, 0.0, True),
    ("fwd", (128, 128, 8, 3), 128, torch.float16, torch.float32, False, 0.0, True, True),
    ("fwd", (128, 64, 8, 3), 64, torch.float16, torch.bool, True, 0.1, False, True),
    ("bwd_kv", (32, 128, 8, 3), 128, torch.float16, torch.bool, False, 0.0, True, True),
    ("bwd_q", (128, 64, 8, 2), 128, torch.float16, torch.float32, True, 0.1, True, True),
    ("bwd_atomic", (64, 64, 8, 3), 128, torch.float16, torch.float16, False, 0.0, True, True),
]

# (kernel, head dim, dtype, causal, TMA) of the benchmarks (no mask, no dropout), compiled in the first
# config the pruning admits (what FASTTX_TRITON_AUTOTUNE=0 runs), on both paths: ptxas must not
# serialize their wgmma (C7515, see attention_common.score_block).
PTXAS_CHECKS = [(name, 128, torch.bfloat16, causal, tma) for name in ("fwd", "bwd_q") for causal in (False, True)
                for tma in (True, False)]
TUNING = {"fwd": attention_fwd.FWD_TUNING, "bwd_q": attention_bwd.BWD_Q_TUNING}


def specialization(kernel, **kwargs):
    """Triton's specialization of a launch of ``kernel`` with ``kwargs`` for TARGET: the signature and
    the properties (divisibility by 16, value 1, ...) its compiled-kernel cache is keyed by. Launches
    with equal ones run the same compiled kernel. Also for the interpreter's kernels (same function, the
    same do_not_specialize, which the interpreter keeps among its keyword arguments)."""
    dont = kernel.do_not_specialize if isinstance(kernel, JITFunction) else kernel.kwargs.get("do_not_specialize")
    fn = JITFunction(kernel.fn, do_not_specialize=dont)
    return create_function_from_signature(fn.signature, fn.params, make_backend(TARGET))(**kwargs)[1]


def compile_kernel(fn, num_warps, num_stages, **kwargs):
    """Compile ``fn`` for TARGET as a launch with ``kwargs`` would specialise it."""
    backend = make_backend(TARGET)
    spec = specialization(fn, **kwargs)
    signature = {p.name: s[0] for p, s in zip(fn.params, spec)}
    values = [s[1] for s in spec]
    constexprs = {path: get_iterable_path(values, path)
                  for path in find_paths_if(list(signature.values()), lambda _, v: v == "constexpr")}
    attrs = {path: backend.parse_attr(get_iterable_path(values, path))
             for path in find_paths_if(values, lambda _, v: isinstance(v, str))}
    options = backend.parse_options(dict(num_warps=num_warps, num_stages=num_stages)).__dict__
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)


def variant_args(name, block_m, block_n, head_dim, dtype, mask_dtype, causal, dropout_p, tma=False, num_warps=None,
                 key_padding=False):
    """A launch's arguments of kernel ``name`` at B, H, L = 2, 4, 1024, its tensors passed as TMA descriptors
    where ``tma`` (the launchers' choice on sm_90), with the block shapes of the config; for the forward
    with ``num_warps``, also the config's DEFER_FITS as the launcher's autotuner sets it (defer_pv_fits).
    The mask (of ``mask_dtype``, if any) is (B, 1, L, L), or (B, 1, 1, L) with ``key_padding``."""
    B, H, L = 2, 4, 1024
    q = torch.empty(B, H, L, head_dim, dtype=dtype)
    mask = None if mask_dtype is None else torch.empty(B, 1, 1 if key_padding else L, L, dtype=mask_dtype)
    lse = torch.empty(B, H, L)
    tensors = dict(fwd=dict(O=q), bwd_kv=dict(DO=q, DK=q, DV=q, DQ=q), bwd_atomic=dict(DO=q, DK=q, DV=q),
                   bwd_q=dict(DO=q, DQ=q))[name]
    args = dict(kernel_args(q, q, q, mask, torch.tensor(1), 0.125, causal, dropout_p, tma=tma, **tensors),
                BLOCK_M=block_m, BLOCK_N=block_n)
    set_block_shapes(args)
    if name == "fwd":
        if num_warps is not None:
            args.update(attention_fwd.defer_pv_fits((block_m, block_n, num_warps, None), args))
        return dict(args, LSE=lse)
    grads = dict(args, LSE=lse, Delta=lse, do_strides=q.stride()[:3], scale=0.125)
    if name == "bwd_kv":
        return dict(grads, DQ=None, ATOMIC_DQ=False)
    if name == "bwd_atomic":
        return dict(grads, DQ=torch.empty(q.shape), ATOMIC_DQ=True)
    return grads


def first_config(name, head_dim, dtype):
    """The first config the pruning admits for a call without a mask, as on an H100 / H200."""
    space, model, _ = TUNING[name]
    return space_configs(space, model, head_dim, head_dim, dtype.itemsize, 0, DEFAULT_SHARED_MEMORY)[0]


def ptxas_log(fn, num_warps, num_stages, **kwargs):
    """What ptxas reports (ptxas -v) when Triton builds ``fn`` as compile_kernel does: this Triton prints
    the log of a build when asked, so the build is forced past the cache."""
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compile_kernel(fn, num_warps, num_stages, **kwargs)
    return log.getvalue()


def check_ptxas():
    for name, head_dim, dtype, causal, tma in PTXAS_CHECKS:
        block_m, block_n, num_warps, num_stages = first_config(name, head_dim, dtype)
        log = ptxas_log(KERNELS[name][0], num_warps, num_stages,
                        **variant_args(name, block_m, block_n, head_dim, dtype, None, causal, 0.0, tma, num_warps))
        print(json.dumps(dict(kernel=name, config=[block_m, block_n, num_warps, num_stages], head_dim=head_dim,
                              dtype=str(dtype), causal=causal, tma=tma,
                              registers=re.findall(r"Used (\d+) registers", log),
                              warnings=sorted(set(re.findall(r"\((C\d+)\)", log))))), flush=True)


def main():
    if sys.argv[1:] == ["--ptxas"]:
        return check_ptxas()
    for name, (block_m, block_n, num_warps, num_stages), head_dim, dtype, mask_dtype, causal, p, tma, *pad in VARIANTS:
        fn, model = KERNELS[name]
        args = variant_args(name, block_m, block_n, head_dim, dtype, mask_dtype, causal, p, tma, num_warps, *pad)
        kernel = compile_kernel(fn, num_warps, num_stages, **args)
        mask_bytes = 0 if mask_dtype is None else mask_dtype.itemsize
        modelled = modelled_shared_memory(model, block_m, block_n, num_stages, head_dim, head_dim, dtype.itemsize,
                                          mask_bytes, args["MASK_ROWS_BROADCAST"], p > 0)
        print(json.dumps(dict(kernel=name, config=[block_m, block_n, num_warps, num_stages], head_dim=head_dim,
                              dtype=str(dtype), mask=str(mask_dtype), causal=causal, dropout_p=p, tma=tma,
                              key_padding=args["MASK_ROWS_BROADCAST"], shared=kernel.metadata.shared,
                              model=modelled)), flush=True)


if __name__ == "__main__":
    main()
