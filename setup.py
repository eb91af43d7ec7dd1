"""Build and install fasttx.

The CUDA extension ``fasttx._C`` is built when nvcc and a CUDA build of torch are present.
FASTTX_BUILD_CUDA=0 skips it, =1 forces it (and fails loudly when it cannot be built).
Architectures come from TORCH_CUDA_ARCH_LIST, default "8.0;9.0a": with no GPU visible torch
cannot guess them, so we always set them explicitly. The sources and flags are fasttx/_build.py's,
shared with the first-use build (fasttx/_extension.py). FASTTX_ATTENTION_HEAD_DIMS=64,128 compiles the
CUDA attention kernels of those head dims only (default: all of fasttx/_attention_kernels.py), to
cut build time; the extension then rejects the others with an error saying how to build them.
"""

import importlib.util
import os
import shutil
import sys

from setuptools import setup


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


def _build_config(root):
    """fasttx/_build.py, the extension's sources and flags, loaded by path: fasttx is not installed yet."""
    spec = importlib.util.spec_from_file_location("fasttx_build", os.path.join(root, "fasttx", "_build.py"))
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return config


def _cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    config = _build_config(root)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", config.DEFAULT_ARCH_LIST)
    sources, flags, left_out = config.extension_build(root, os.environ)
    if left_out:
        print(f"fasttx: FASTTX_ATTENTION_HEAD_DIMS: leaving out the attention kernels of head dims {left_out}",
              file=sys.stderr)
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
