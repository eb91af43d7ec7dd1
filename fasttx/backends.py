"""Which backends exist here, and which one runs an op.

- ``"torch"``: torch's fused ops plus fasttx's semantics (fasttx.functional.native); runs anywhere.
- ``"triton"``: fasttx.triton_kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
- ``"cuda"``: the CUDA C++ extension fasttx._C; CUDA tensors.

``"auto"`` picks, per call, the first backend in AUTO_KERNELS[op] that can run the op on CUDA
tensors of that dtype, else torch (always torch on CPU), and records the choice (``last_used``,
shown by ``fasttx.info()`` and the modules' repr). A backend named explicitly
never falls back: if it cannot run, a RuntimeError says why.
"""

import contextlib
import importlib.util
import os
import threading

import torch

BACKENDS = ("torch", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The kernel backends "auto" may pick for CUDA tensors, fastest first, per op; an op with none (or
# not listed) runs torch's own op. A kernel joins its op's list only once a `make gpu-check` run has
# shown it passing the GPU test suite and faster than torch on that device (docs/gpu-status.md): a
# drop-in must never be a regression. The first GPU run (H200, benchmarks/results/2026-12-04-h200)
# timed the Triton attention at 0.62-0.75x the speed of torch's default SDPA (cuDNN / flash) and the
# CUDA C++ one at 0.15-0.23x (bf16, head dim 128, seq 4096-8192, fwd and bwd); the norm and softmax
# kernels passed the tests but their benchmark did not run. Until a run shows one faster, "auto" is
# torch everywhere; backend="triton" / "cuda" still select the kernels.
AUTO_KERNELS = {"attention": (), "layer_norm": (), "rms_norm": (), "softmax": ()}

# op -> backend that ran it last; read by fasttx.info() and the modules' extra_repr.
last_used = {}

class _ThreadState(threading.local):
    # use_backend()'s stack of this thread; the class's empty default where it never ran, so that
    # reading it raises nothing (getattr(local, name, None) on a missing name raises and catches an
    # AttributeError: ~0.4 us of every op call's host time).
    stack = ()


_local = _ThreadState()


def _check_choice(name, argument="backend"):
    if name not in CHOICES:
        raise ValueError(f"{argument} must be one of {CHOICES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Make ``name`` the default backend of fasttx ops inside the ``with`` block (this thread)."""
    _check_choice(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


# FASTTX_BACKEND is read once, when fasttx is imported, as torch reads its own environment
# variables: read on every call, it cost a small norm's call ~3 us of host time (os.environ's
# lookup of a missing key raises and catches a KeyError). Checked where it is used, so a bad value
# fails the first call that needs the default, not the import.
_ENVIRONMENT_DEFAULT = os.environ.get("FASTTX_BACKEND", "auto")


def default_backend():
    """The backend used for ``backend="auto"``-less calls: use_backend(), FASTTX_BACKEND, auto."""
    stack = _local.stack
    if stack:
        return stack[-1]
    if _ENVIRONMENT_DEFAULT in CHOICES:  # (a call of _check_choice less, on every op call)
        return _ENVIRONMENT_DEFAULT
    return _check_choice(_ENVIRONMENT_DEFAULT, "FASTTX_BACKEND")


def requested(backend):
    """The backend a call asked for once the default has been applied: "auto" or a name."""
    return default_backend() if backend == "auto" else _check_choice(backend)


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Resolved once, here: the ops ask on every call, and torch.compile cannot trace the import system
# (torch 2.11's dynamo refuses importlib.util.find_spec under fullgraph=True). find_spec locates
# triton without importing it, so importing fasttx still never imports triton.
_TRITON_MISSING = None if importlib.util.find_spec("triton") is not None else "triton is not installed"


def extension_state(allow_jit_build=True):
    """(loaded, reason it is not) of the CUDA extension fasttx._C."""
    from . import _extension

    return _extension.load(allow_jit_build)


def unavailable_reason(backend, device_type=None, dtype=None, op=None):
    """Why ``backend`` cannot run ``op`` on this device type and dtype, or None when it can."""
    if backend == "torch":
        return None
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return f"the {backend} kernels take float32, float16 or bfloat16 input, got {dtype}"
    if backend == "triton":
        if _TRITON_MISSING is not None:
            return _TRITON_MISSING
        if device_type == "cpu" and not triton_interpreted():
            return "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1"
        if device_type not in (None, "cpu", "cuda"):
            return f"Triton kernels run on CUDA tensors, got a {device_type} tensor"
        return None
    if device_type not in (None, "cuda"):
        return f"the CUDA extension runs on CUDA tensors, got a {device_type} tensor"
    loaded, reason = extension_state()
    if loaded and op is not None:
        from . import _ops

        if not _ops.has_op(op, "cuda"):
            return f"the CUDA extension has no {op} kernel"
    return reason


def resolve(op, backend, tensor):
    """Name of the backend that runs ``op`` on ``tensor`` when the caller passed ``backend``."""
    wanted = default_backend() if backend == "auto" else backend  # (checked below where not torch or auto)
    # Torch runs anywhere: no need to read the tensor's device (~0.3 us: it makes a torch.device), nor,
    # for "auto", whether it is a CUDA one where no kernel is listed for the op.
    if wanted == "torch" or wanted == "auto" and not (AUTO_KERNELS.get(op) and tensor.is_cuda):
        chosen = "torch"
    elif wanted == "auto":
        chosen = next((b for b in AUTO_KERNELS[op] if unavailable_reason(b, "cuda", tensor.dtype, op) is None),
                      "torch")
    else:
        _check_choice(wanted)  # (default_backend() has checked FASTTX_BACKEND's value)
        reason = unavailable_reason(wanted, tensor.device.type, tensor.dtype, op)
        if reason is not None:
            raise RuntimeError(f"fasttx.{op}: backend={wanted!r} cannot run here: {reason}")
        chosen = wanted
    if not torch.compiler.is_compiling():
        last_used[op] = chosen
    return chosen
