"""How the CUDA extension ``fasttx._C`` is compiled: its sources, compiler flags and architectures.

One place for setup.py's build, the first-use build (fasttx/_extension.py) and tools/ptxas_table.py,
so that all three compile the same code the same way. Plain Python importing nothing of fasttx:
setup.py loads it by path, before fasttx is installed.
"""

import glob
import importlib.util
import os
import re

# Where TORCH_CUDA_ARCH_LIST is unset (A100 and H100/H200): with no GPU visible torch cannot guess
# them. 9.0a, not 9.0: the sm_90a attention kernels use wgmma and setmaxnreg, which only the
# architecture-specific target has (compiled for plain 9.0 they are stubs the dispatch never picks).
DEFAULT_ARCH_LIST = "8.0;9.0a"

# No -std: torch adds the standard its headers need (C++20 for torch >= 2.10).
# -Xfatbin=-compress-all: nvcc compresses only the larger cubins by default; compressing every one, as
# torch's own build does, took the extension from 227 MB to 38 MB (nvcc 13.0, sm_80 + sm_90a), the
# same code decompressed once per module when a kernel of it first loads.
CXX_FLAGS = ("-O3",)
NVCC_FLAGS = ("-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xfatbin=-compress-all")


def _attention_kernels():
    """fasttx/_attention_kernels.py, the list of the attention kernels' head dims, loaded by path as
    this file is."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_attention_kernels.py")
    spec = importlib.util.spec_from_file_location("fasttx_attention_kernels", path)
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return config


def extension_build(root, environ):
    """(sources, flags, left_out) of a build of ``root``/csrc: the .cu and .cpp files relative to root,
    sorted; {"cxx": [...], "nvcc": [...]}, torch's extra_compile_args; the attention head dims left out.

    FASTTX_ATTENTION_HEAD_DIMS in ``environ`` picks the head dims (unset or blank: all). A head dim
    left out: its generated files (attention_{fwd,bwd}_hdim<E>.cu, the sm_90a kernels'
    attention_<kernel>_sm90_hdim<E>.cu) are not compiled, and every file sees FASTTX_ATTENTION_SKIP_HDIM<E>
    (csrc/attention/attention_kernels.h, sm90/attention_sm90_kernels.h), so nothing refers to them.
    """
    config = _attention_kernels()
    built = config.build_head_dims(environ.get(config.BUILD_ENV))
    left_out = [d for d in config.HEAD_DIMS if d not in built]
    skipped = re.compile(r"attention_(fwd|bwd|\w+_sm90)_hdim(%s)\.cu" % "|".join(map(str, left_out)))
    sources = sorted(
        os.path.relpath(path, root)
        for pattern in ("csrc/**/*.cu", "csrc/**/*.cpp")
        for path in glob.glob(os.path.join(root, pattern), recursive=True)
        if not (left_out and skipped.fullmatch(os.path.basename(path)))
    )
    defines = [f"-DFASTTX_ATTENTION_SKIP_HDIM{d}" for d in left_out]
    return sources, {"cxx": [*CXX_FLAGS, *defines], "nvcc": [*NVCC_FLAGS, *defines]}, left_out


def arch_list_for(capabilities):
    """TORCH_CUDA_ARCH_LIST for GPUs of these (major, minor) compute capabilities: the first-use build's,
    where it is unset. torch's own guess would name 9.0, which leaves the sm_90a kernels out."""
    return ";".join(sorted({f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")
                            for major, minor in capabilities}))
