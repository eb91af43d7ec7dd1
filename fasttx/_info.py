"""fasttx.info(): versions, GPU, which backends are available here and why not, what ran last."""

import platform

import torch

from . import backends


def info():
    """A dict describing this installation; ``python -m fasttx info`` prints it."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    device_type = "cuda" if gpu else "cpu"
    available = {}
    for name in backends.BACKENDS:
        reason = backends.unavailable_reason(name, device_type)
        available[name] = "available" if reason is None else f"unavailable: {reason}"
    loaded, reason = backends.extension_state()
    return {
        "cuda extension": "loaded" if loaded else f"not loaded: {reason}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda (torch build)": torch.version.cuda,
        "gpu": gpu or "none visible",
        "triton interpreter": backends.triton_interpreted(),
        "default backend": backends.default_backend(),
        "backends (for " + device_type + " tensors)": available,
        "last backend used per op": dict(backends.last_used),
    }
