"""Loading the CUDA extension ``fasttx._C``, and the switches it reads from the environment.

Importing it registers the ``torch.ops.fasttx.*_cuda`` ops (TORCH_LIBRARY in csrc/bindings.cpp).
When no prebuilt extension is installed but this is a source checkout on a machine with a GPU
and nvcc, the extension is compiled on first use with ``torch.utils.cpp_extension.load``
(ninja, cached under torch's extension directory), and we say so.
"""

import contextlib
import importlib
import os
import shutil
import warnings

import torch

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

_state = {"loaded": False, "reason": None, "tried_import": False, "tried_jit": False}


# The switch of the CUDA row-wise kernels' row split (csrc/common/row_layout.cuh): rows longer than a
# block's chunk (softmax: 16384 elements), split over a thread block cluster on sm_90, unless it is "0";
# read at each such launch.
CLUSTERS_SWITCH = "FASTTX_CUDA_CLUSTERS"


def cuda_clusters(enabled: bool):
    """Runs the block with the CUDA row-wise kernels' long rows split over thread block clusters (the
    default, where the GPU runs them) or each walked chunk by chunk by one block (CLUSTERS_SWITCH "0"),
    restoring the setting before: what the benchmarks' "fasttx cuda (no clusters)" times."""
    return environment(CLUSTERS_SWITCH, None if enabled else "0")


@contextlib.contextmanager
def environment(name: str, value):
    """Runs the block with the environment variable ``name``, a switch the extension reads at each
    call, set to ``value`` (None: unset), restoring what was there before."""
    before = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if before is not None:
            os.environ[name] = before


def _jit_build():
    from torch.utils.cpp_extension import load

    from . import _build

    root = os.path.dirname(_CSRC)
    sources, flags, _ = _build.extension_build(root, os.environ)
    warnings.warn(
        "fasttx: the CUDA extension fasttx._C is not installed; compiling it now from "
        f"{_CSRC} with torch.utils.cpp_extension.load (cached after the first time)",
        stacklevel=3,
    )
    # torch would build for the visible GPUs' architectures, but as 9.0 where the sm_90a kernels need 9.0a.
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or _build.arch_list_for(
        torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    with environment("TORCH_CUDA_ARCH_LIST", arch_list):
        load(
            name="fasttx_C",
            sources=[os.path.join(root, source) for source in sources],
            extra_include_paths=[_CSRC],
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags["nvcc"],
            is_python_module=False,
        )


def _why_no_jit_build():
    if not torch.cuda.is_available():
        return "no CUDA device is visible, so it is not compiled on first use"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not os.path.isdir(_CSRC):
        return "the csrc/ sources are not next to the package (not a source checkout)"
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        return "nvcc was not found to compile it on first use"
    return None


def _loaded():
    from . import _ops

    _ops.register_cuda_ops()
    _state["loaded"], _state["reason"] = True, None


def load(allow_jit_build=True):
    """Return (loaded, reason it is unavailable or None).

    The prebuilt extension is imported at most once; the JIT build is tried at most once, and only
    when ``allow_jit_build`` (``import fasttx`` does not allow it: it would compile at import).
    """
    if not _state["tried_import"]:
        _state["tried_import"] = True
        try:
            importlib.import_module("fasttx._C")  # importing registers the ops

            _loaded()
        except ImportError as import_error:
            _state["reason"] = f"fasttx._C is not built ({import_error})"
        except OSError as load_error:  # built against another torch / CUDA runtime
            _state["reason"] = f"fasttx._C failed to load: {load_error}"
            _state["tried_jit"] = True  # a JIT build would hit the same mismatch
    if not _state["loaded"] and allow_jit_build and not _state["tried_jit"]:
        _state["tried_jit"] = True
        why_not = _why_no_jit_build()
        if why_not is not None:
            _state["reason"] += f"; {why_not}"
        else:
            try:
                _jit_build()
                _loaded()
            except Exception as build_error:  # a failed build must not break the other backends
                _state["reason"] = f"compiling fasttx._C on first use failed: {build_error}"
    return _state["loaded"], _state["reason"]
