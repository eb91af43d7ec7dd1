"""The CUDA extension fasttx._C: built wherever nvcc is (make test builds it), for the
architectures asked for, with its ops registered and clear errors for CPU tensors."""

import os
import shutil
import subprocess

import pytest
import torch

import fasttx
from fasttx import _extension

HAVE_NVCC = torch.version.cuda is not None and shutil.which("nvcc") is not None
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="no nvcc / CUDA build of torch: the extension cannot be built")

CUDA_OPS = ["layer_norm_fwd_cuda", "layer_norm_bwd_cuda", "rms_norm_fwd_cuda", "rms_norm_bwd_cuda",
            "softmax_fwd_cuda", "softmax_bwd_cuda"]


@needs_nvcc
def test_extension_is_built_and_registers_its_ops():
    loaded, reason = _extension.load(allow_jit_build=False)
    assert loaded, reason
    for name in CUDA_OPS:
        assert hasattr(torch.ops.fasttx, name), name


def _cuobjdump():
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton ships."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [shutil.which("cuobjdump"), os.path.join(CUDA_HOME or "", "bin", "cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    found = [c for c in candidates if c and os.path.isfile(c)]
    assert found, "cuobjdump not found on PATH, in CUDA_HOME/bin or in triton's bundled tools"
    return found[0]


@needs_nvcc
def test_extension_holds_the_requested_architectures():
    import fasttx._C

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a").replace(" ", ";").split(";")
    expected = {"sm_" + a.strip().replace(".", "").replace("+PTX", "") for a in archs if a.strip()}
    listing = subprocess.run([_cuobjdump(), "--list-elf", fasttx._C.__file__], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    # lines like "ELF file    1: layer_norm_bwd.sm_90a.cubin"
    found = {name.split(".")[-2] for name in listing.stdout.split() if name.endswith(".cubin")}
    assert expected <= found, listing.stdout


@needs_nvcc
@pytest.mark.parametrize("name", CUDA_OPS)
def test_cpu_tensors_get_a_clear_error(name):
    x = torch.randn(4, 8)
    w, stats = torch.randn(8), torch.randn(4)
    args = {
        "layer_norm_fwd_cuda": (x, w, None, 1e-5),
        "layer_norm_bwd_cuda": (x, x, w, stats, stats, False),
        "rms_norm_fwd_cuda": (x, w, 1e-5),
        "rms_norm_bwd_cuda": (x, x, w, stats),
        "softmax_fwd_cuda": (x.view(1, 1, 4, 8), None, 1.0, False, torch.float32),
        "softmax_bwd_cuda": (x, x, 1.0, torch.float32),
    }[name]
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        getattr(torch.ops.fasttx, name)(*args)


def test_info_names_the_extension_state():
    assert "cuda extension" in fasttx.info()
