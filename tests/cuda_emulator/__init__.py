"""Building and calling the host emulators of the CUDA kernels (tests/attention_emulator,
tests/norm_emulator): each compiles the real kernel source as C++ for the host, with this
directory's cta.h as the emulated GPU and params_by_name.h as the calling convention."""

import ctypes
import os
import shutil
import subprocess

import pytest
import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # csrc/common/dtype.h


def _cuda_include():
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (CUDA_HOME, "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "include", "cuda_fp16.h")):
            return os.path.join(home, "include")
    return None


def compile_emulator(tmp_path_factory, emulator, source):
    """tests/``emulator``/``source`` built as a shared library and loaded (skips without a C++ compiler
    or the CUDA headers). The emulator's directory comes first on the include path: its headers
    replace the real ones of the same name (the kernels' seams)."""
    include = _cuda_include()
    if CXX is None or include is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (cuda.h, cuda_fp16.h)")
    directory = os.path.join(TESTS, emulator)
    lib = tmp_path_factory.mktemp(emulator) / (os.path.splitext(source)[0] + ".so")
    # -z defs: a device function the emulation lacks fails here, not as a dlopen error.
    subprocess.run([CXX, "-std=c++20", "-O1", "-w", "-fPIC", "-shared", "-pthread", "-Wl,-z,defs", "-I", directory,
                    "-I", TESTS, "-I", os.path.join(ROOT, "csrc"), "-I", include, os.path.join(directory, source),
                    "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def marshal(fields, inputs):
    """An entry point's (fields, n_fields, ranges, n_ranges) (params_by_name.h): fields {name: int, float,
    address or tuple of ints} as "name=value" entries; inputs: the tensors the kernels may read, as
    (address, bytes) ranges."""
    entries = [f"{name}={','.join(map(str, v)) if isinstance(v, tuple) else v}".encode() for name, v in fields.items()]
    ranges = [x for t in inputs for x in (t.data_ptr(), t.untyped_storage().nbytes() - t.storage_offset() * t.element_size())]
    return (ctypes.c_char_p * len(entries))(*entries), len(entries), (ctypes.c_int64 * len(ranges))(*ranges), len(inputs)
