"""Building and calling the host emulators of the CUDA kernels (tests/attention_emulator,
tests/rowwise_emulator: the norms and softmax): each compiles the real kernel source as C++ for the host, with this
directory's cta.h as the emulated GPU and params_by_name.h as the calling convention."""

import contextlib
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


def _own_state_flags():
    """GCC makes the emulator's inline variables (cta.h: every fiber's and CTA's state) GNU-unique
    symbols, which the dynamic linker binds process-wide even across libraries ctypes loads
    RTLD_LOCAL: the second emulator loaded would use the first one's. Mostly harmless while one host
    thread ran everything, but the CTAs of a cluster find each other's shared memory by offsets from a
    thread_local anchor of their own library (load_cluster_shared): from another library's it read
    garbage, now and then. -fno-gnu-unique keeps each emulator's state its own (clang emits no such
    symbols)."""
    if CXX is None:
        return []
    version = subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout
    return [] if "clang" in version else ["-fno-gnu-unique"]


_OWN_STATE = _own_state_flags()


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
    subprocess.run([CXX, "-std=c++20", "-O1", "-w", "-fPIC", "-shared", "-pthread", "-Wl,-z,defs", *_OWN_STATE,
                    "-I", directory, "-I", TESTS, "-I", os.path.join(ROOT, "csrc"), "-I", include,
                    os.path.join(directory, source), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


@contextlib.contextmanager
def cluster_device(emulator, max_cluster=16):
    """A row-wise emulator's device launching thread block clusters of up to ``max_cluster`` CTAs (16:
    an H100's largest; 1: none, the sm_80 path) inside the block, none after it.
    ``emulator.emu_largest_cluster_launched()`` says which path the launches took since it was last
    called (1: plain launches only)."""
    emulator.emu_set_max_cluster(max_cluster)
    try:
        yield emulator
    finally:
        emulator.emu_set_max_cluster(1)


class Guarded:
    """A tensor of ``shape`` inside a buffer filled with ``guard`` (NaN: poisons any result read from
    past the tensor; bool: False), ``offset`` elements past a 16-byte boundary (offset 1: the
    misaligned paths), GUARD elements of it on both sides: 16-byte multiples for every dtype."""

    GUARD = 64

    def __init__(self, shape, dtype, offset=0, fill=None):
        numel = 1
        for n in shape:
            numel *= n
        self.guard = False if dtype == torch.bool else float("nan")
        self.buffer = torch.full((self.GUARD + offset + numel + self.GUARD,), self.guard, dtype=dtype)
        self.start = self.GUARD + offset
        self.tensor = self.buffer[self.start:self.start + numel].view(shape)
        if fill is not None:
            self.tensor.copy_(fill)

    def check_guards(self, name):
        outside = torch.cat([self.buffer[:self.start], self.buffer[self.start + self.tensor.numel():]])
        intact = outside.isnan().all() if self.buffer.is_floating_point() else (outside == self.guard).all()
        assert intact, f"{name}: written past the tensor"


def call(entry, fields, *extra):
    """An emulator entry point taking (fields, n_fields, *extra) that returns nullptr or why it
    launched nothing (params_by_name.h's error_or_null): the latter raised as a ValueError."""
    entry.restype = ctypes.c_char_p
    error = entry(*marshal(fields, [])[:2], *extra)
    if error is not None:
        raise ValueError(f"{entry.__name__}: {error.decode()}")


def marshal(fields, inputs):
    """An entry point's (fields, n_fields, ranges, n_ranges) (params_by_name.h): fields {name: int, float,
    address or tuple of ints} as "name=value" entries; inputs: the tensors the kernels may read, as
    (address, bytes) ranges."""
    entries = [f"{name}={','.join(map(str, v)) if isinstance(v, tuple) else v}".encode() for name, v in fields.items()]
    ranges = [x for t in inputs for x in (t.data_ptr(), t.untyped_storage().nbytes() - t.storage_offset() * t.element_size())]
    return (ctypes.c_char_p * len(entries))(*entries), len(entries), (ctypes.c_int64 * len(ranges))(*ranges), len(inputs)


# Masks laid out to take each way the attention kernels read a mask (attention_common.cuh's add_mask,
# for queries along the fragment's rows and, in dK / dV, keys): (kind, whether the test's S is made odd).
# Even S and contiguous keys at an aligned address: adjacent keys in one load; a row stride of 0
# (key padding): one row read for two; a query stride of 0 in dK / dV: one element for all queries;
# anything else element by element: transposed storage (keys strided, queries contiguous: pairs in
# dK / dV instead), an odd element offset (no pair aligned), an odd row stride (every other row
# aligned), an odd S (a pair would reach past the last key).
MASK_LAYOUTS = [("bool_transposed", False), ("bool_transposed", True), ("float16_odd_offset", False),
                ("bool_odd_row_stride", False), ("bfloat16_key_padding", False), ("float32_key_padding", True),
                ("float32_2d_offset_8_bytes", False)]


def mask_layout(kind, B, H, L, S):
    """A mask view of kind (MASK_LAYOUTS) for (B, H, L, S) scores, with -inf or False entries, batch 0
    fully masked where the kind is key padding; broadcast dims as (1, ...) views, for expand."""
    if kind == "bool_transposed":
        return (torch.rand(B, H, S, L) > 0.4).transpose(-1, -2)
    if kind == "float16_odd_offset":
        mask = torch.randn(B, H, L, S + 1).half()[..., 1:]
        mask[torch.rand(mask.shape) > 0.7] = float("-inf")
        return mask
    if kind == "bool_odd_row_stride":
        return (torch.rand(B, H, L, S + 1) > 0.4)[..., :S]
    if kind.endswith("_key_padding"):
        mask = torch.randn(B, 1, 1, S, dtype=getattr(torch, kind.split("_")[0]))
        mask[..., torch.rand(S) > 0.7] = float("-inf")
        mask[0] = float("-inf")
        return mask
    assert kind == "float32_2d_offset_8_bytes"  # (L, S) broadcast over B and H, pairs of 8 bytes aligned
    return torch.randn(L, S + 2)[:, 2:]
