"""The one list of the CUDA attention kernels' compile-time configurations (csrc/attention).

Read by csrc/attention/generate_kernels.py (which writes the per-head-dim .cu files, the C++ header
attention_kernels.h and the emulator's list from it), fasttx/_build.py (the builds' sources:
FASTTX_ATTENTION_HEAD_DIMS builds a subset), fasttx/functional/attention.py and the tests. Plain
Python with no imports, so that fasttx/_build.py can load it by path before fasttx is installed.
Adding a head dim: docs/contributing.md.
"""

# Head dims E (== Ev) with kernels: one attention_fwd_hdim<E>.cu and one attention_bwd_hdim<E>.cu each.
HEAD_DIMS = (32, 64, 96, 128, 256)
# The sm_90a kernels (csrc/attention/sm90) and the head dims each has instances for, a subset of
# HEAD_DIMS: one sm90/attention_<kernel>_sm90_hdim<E>.cu per kernel and head dim, so that a build
# compiles them in parallel (one file of all a kernel's instances set the build's critical path: the
# forward's 66 took 103 s of one core). The keys name the launches (attention_<kernel>_sm90_hdim<E>).
SM90_HEAD_DIMS = {
    "fwd": (64, 96, 128, 256),     # the forward
    "bwd_kv": (64, 96, 128, 256),  # the backward's dK / dV kernel (at E = 256 two passes)
    "bwd_q": (64, 96, 128, 256),   # the backward's dQ kernel
    "bwd_kvq": (64, 96, 128),      # dK / dV with dQ by atomics, the opt-in deterministic=False
}
# Input dtypes: every head-dim file instantiates both (and causal or not) behind a runtime switch.
DTYPES = ("float16", "bfloat16")

# The builds' flag (setup.py and the first-use build, fasttx/_build.py): a comma-separated subset of
# HEAD_DIMS to compile (unset or empty: all).
BUILD_ENV = "FASTTX_ATTENTION_HEAD_DIMS"


def build_head_dims(value):
    """The head dims a build compiles, from the value of BUILD_ENV (None or blank: all)."""
    if value is None or not value.strip():
        return HEAD_DIMS
    chosen = set()
    for item in value.split(","):
        try:
            chosen.add(int(item))
        except ValueError:
            raise ValueError(f"{BUILD_ENV}={value!r}: expected comma-separated head dims out of {HEAD_DIMS}") from None
    unknown = sorted(chosen.difference(HEAD_DIMS))
    if unknown:
        raise ValueError(f"{BUILD_ENV}={value!r}: no kernels for head dims {unknown}; the head dims are {HEAD_DIMS}")
    return tuple(d for d in HEAD_DIMS if d in chosen)
