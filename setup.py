"""Build and install fasttx.

The CUDA extension ``fasttx._C`` is built when nvcc and a CUDA build of torch are present.
FASTTX_BUILD_CUDA=0 skips it, =1 forces it (and fails loudly when it cannot be built).
Architectures come from TORCH_CUDA_ARCH_LIST, default "8.0;9.0a": with no GPU visible torch
cannot guess them, so we always set them explicitly. FASTTX_ATTENTION_HEAD_DIMS=64,128 compiles the
CUDA attention kernels of those head dims only (default: all of fasttx/_attention_kernels.py), to
cut build time; the extension then rejects the others with an error saying how to build them.
"""

import glob
import importlib.util
import os
import re
import shutil
import sys

from setuptools import setup

DEFAULT_ARCH_LIST = "8.0;9.0a"


def _set_cuda_home():
    """Point CUDA_HOME at the toolkit when it is unset. torch guesses the parent of nvcc's folder,
    which is wrong where nvcc is a wrapper script (here /usr/local/bin/nvcc runs
    /usr/local/cuda-13.0/bin/nvcc): the C++ files then miss cuda_runtime.h."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


def _cuda_build_reason_to_skip():
    """Why the CUDA extension cannot be built here, or None when it can."""
    _set_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return "torch is not installed (install torch first, then pip install --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        return "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def _attention_head_dims_left_out(root):
    """Head dims of the CUDA attention kernels that FASTTX_ATTENTION_HEAD_DIMS leaves out of the build
    (the list is fasttx/_attention_kernels.py, loaded by path: fasttx is not installed yet)."""
    path = os.path.join(root, "fasttx", "_attention_kernels.py")
    spec = importlib.util.spec_from_file_location("_attention_kernels", path)
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    built = config.build_head_dims(os.environ.get(config.BUILD_ENV))
    left_out = [d for d in config.HEAD_DIMS if d not in built]
    if left_out:
        print(f"fasttx: {config.BUILD_ENV}: building the attention kernels of head dims {built} only", file=sys.stderr)
    return left_out


def _cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    root = os.path.dirname(os.path.abspath(__file__))
    left_out = _attention_head_dims_left_out(root)
    # A head dim left out: its generated files (attention_{fwd,bwd}_hdim<E>.cu and the sm_90a kernels'
    # attention_<kernel>_sm90_hdim<E>.cu) are not compiled, and every file sees FASTTX_ATTENTION_SKIP_HDIM<E>
    # (csrc/attention/attention_kernels.h, sm90/attention_sm90_kernels.h), so nothing refers to them.
    skipped = re.compile(r"attention_(fwd|bwd|\w+_sm90)_hdim(%s)\.cu" % "|".join(map(str, left_out))) if left_out else None
    sources = sorted(
        os.path.relpath(p, root)
        for pattern in ("csrc/**/*.cu", "csrc/**/*.cpp")
        for p in glob.glob(os.path.join(root, pattern), recursive=True)
        if skipped is None or not skipped.fullmatch(os.path.basename(p))
    )
    # No -std: torch adds the standard its headers need (C++20 for torch >= 2.10). tools/ptxas_table.py
    # reads the "nvcc" list as written here; fasttx/_extension.py's first-use build passes the same.
    # -Xfatbin=-compress-all: nvcc compresses only the larger cubins by default; compressing every one, as
    # torch's own build does, took the extension from 227 MB to 38 MB (nvcc 13.0, sm_80 + sm_90a), the
    # same code decompressed once per module when a kernel of it first loads.
    flags = {"cxx": ["-O3"], "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xfatbin=-compress-all"]}
    for compiler_flags in flags.values():
        compiler_flags += [f"-DFASTTX_ATTENTION_SKIP_HDIM{d}" for d in left_out]
    return CUDAExtension(
        name="fasttx._C",
        sources=sources,
        include_dirs=[os.path.join(root, "csrc")],
        extra_compile_args=flags,
        py_limited_api=False,
    )


def _ext_modules_and_cmdclass():
    mode = os.environ.get("FASTTX_BUILD_CUDA", "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        print("fasttx: FASTTX_BUILD_CUDA=0, not building the CUDA extension", file=sys.stderr)
        return [], {}
    reason = _cuda_build_reason_to_skip()
    if reason is not None:
        if mode in ("1", "true", "yes", "on"):
            raise RuntimeError(f"FASTTX_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"fasttx: not building the CUDA extension fasttx._C: {reason}", file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import BuildExtension

    return [_cuda_extension()], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules_and_cmdclass()

setup(
    packages=[
        "fasttx",
        "fasttx.reference",
        "fasttx.cli",
        "fasttx.integrations",
        "fasttx.functional",
        "fasttx.nn",
        "fasttx.benchmarks",
        "fasttx.triton_kernels",
    ],
    package_dir={"fasttx.triton_kernels": "triton_kernels", "fasttx.benchmarks": "benchmarks"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
