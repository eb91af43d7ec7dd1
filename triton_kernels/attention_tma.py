"""TMA tensor descriptors (Hopper's bulk tensor copies). On sm_90 the kernels read q, k, v, dO and write o,
dQ, dK, dV through host-side descriptors (triton.tools.tensor_descriptor.TensorDescriptor), 4-D over each
tensor's own (B, heads, rows, head dim) shape and strides: one TMA copy moves a tile into shared memory,
instead of 16-byte cp.async instructions of every thread with their addresses and predicates. Rows past
the head's end and columns past the head dim are zero-filled on loads and dropped on stores by TMA itself,
per dimension, which is what the pointer path's masks do (a 2-D (B H L, E) descriptor would read the next
head's rows instead). Host-side, not device-side (tl.make_tensor_descriptor): the same API in Triton 3.6
and 3.8, no global allocator to install (triton.set_allocator), no descriptor built by every program; the
descriptor is a kernel parameter, its block shape set per config by the autotuner's pre_hook
(set_block_shapes). use_tma decides for a launch, in one place, from the device, the dtype (fp16 and bf16:
fp32 spills on this path) and every such tensor's strides (TMA's rules); everything else (other GPUs, fp32,
strides TMA cannot take, FASTTX_TRITON_TMA=0) runs the pointer path, the same kernels with the constexpr
TMA off. The mask, LSE, Delta, the dropout seed and the atomic dQ buffer always go through pointers.
"""

import contextlib
import os

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

# FASTTX_TRITON_TMA: "auto" (the default) uses TMA descriptors on sm_90 where the strides allow (use_tma);
# "0" never (the pointer path everywhere: to compare the two on one GPU); "1" wherever the dtype and strides
# allow, on any device, the interpreter's CPU tensors included (the tests force it so).
_TMA = os.environ.get("FASTTX_TRITON_TMA", "auto")

# The rows and columns of a descriptor's block, by kernel argument: query-side tensors move BLOCK_M rows,
# key-side ones BLOCK_N, in every kernel; the head dim is padded to its power-of-2 tile.
_DESCRIPTOR_BLOCKS = {"Q": ("BLOCK_M", "BLOCK_E"), "O": ("BLOCK_M", "BLOCK_EV"), "DO": ("BLOCK_M", "BLOCK_EV"),
                      "DQ": ("BLOCK_M", "BLOCK_E"), "K": ("BLOCK_N", "BLOCK_E"), "V": ("BLOCK_N", "BLOCK_EV"),
                      "DK": ("BLOCK_N", "BLOCK_E"), "DV": ("BLOCK_N", "BLOCK_EV")}
TMA_ALIGN = 16  # bytes: TMA's alignment of the base address and of every stride but the last
TMA_MAX_STRIDE = 2**40  # bytes: TMA's bound on a stride
TMA_MAX_DIM = 2**32  # TMA's bound on a dimension


TMA_MODES = ("auto", "0", "1")


def _check_tma_mode(mode: str) -> None:
    if mode not in TMA_MODES:
        raise ValueError(f"FASTTX_TRITON_TMA must be one of {', '.join(TMA_MODES)}, got {mode!r}")


@contextlib.contextmanager
def tma_mode(mode: str):
    """Runs the block's launches with FASTTX_TRITON_TMA's setting ``mode`` ("auto", "0" or "1"), then
    restores the one before (the bench's pointer-path provider, forward and backward)."""
    global _TMA
    _check_tma_mode(mode)
    previous, _TMA = _TMA, mode
    try:
        yield
    finally:
        _TMA = previous


def tma_fits(t: torch.Tensor) -> bool:
    """Whether TMA can address the 4-D tensor ``t`` as it is: base 16-byte aligned, every dim non-empty and
    below 2^32, last stride 1, the others positive multiples of 16 bytes below 2^40, except on dims of size
    1, whose stride is never used (descriptor_strides replaces it). A 0 stride (a broadcast) is refused, and
    so are rows (head dims) that are not a multiple of 16 bytes, which only a tensor of one row could have
    passed the stride rule with."""
    size = t.element_size()
    return (t.dim() == 4 and t.data_ptr() % TMA_ALIGN == 0 and t.stride(-1) == 1
            and t.shape[-1] * size % TMA_ALIGN == 0 and all(0 < n < TMA_MAX_DIM for n in t.shape)
            and all(n == 1 or (0 < s * size < TMA_MAX_STRIDE and s * size % TMA_ALIGN == 0)
                    for n, s in zip(t.shape[:-1], t.stride()[:-1])))


# The dtypes read through descriptors. Not fp32: compiled for sm_90a (Triton 3.8), its tf32x3 products
# spill 550-1160 bytes a thread in every kernel on the TMA path (the dot operands stay in registers for
# their hi / lo split instead of shared memory), where the pointer path spills 0-76 (kernel_report.md).
TMA_DTYPES = (torch.float16, torch.bfloat16)


def use_tma(*tensors: torch.Tensor) -> bool:
    """The one decision between the TMA and the pointer path of a launch, from the (B, heads, rows, head
    dim) tensors its kernels read and write: TMA where the device is a Hopper (sm_90) GPU, their dtype 16
    bits (TMA_DTYPES) and TMA can address every one of them (tma_fits); FASTTX_TRITON_TMA overrides the
    device test (see its comment)."""
    _check_tma_mode(_TMA)
    if _TMA == "0":
        return False
    device = tensors[0].device
    on_hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
    return ((_TMA == "1" or on_hopper) and all(t.dtype in TMA_DTYPES for t in tensors)
            and all(tma_fits(t) for t in tensors))


def descriptor_strides(t: torch.Tensor) -> list[int]:
    """``t``'s strides, with 16 bytes' worth on its dims of size 1 (never stepped along, but TMA checks
    every stride's alignment)."""
    return [s if n > 1 else TMA_ALIGN // t.element_size() for n, s in zip(t.shape[:-1], t.stride()[:-1])] + [1]


def descriptor(t: torch.Tensor) -> TensorDescriptor:
    """A TMA descriptor over the 4-D tensor ``t``'s own shape and strides (tma_fits(t) holds); its block
    shape is a placeholder until set_block_shapes sets the launch config's."""
    return TensorDescriptor(t, list(t.shape), descriptor_strides(t), [1, 1, 16, 16])


def tensor_of(arg):
    """The tensor of a kernel argument, whether passed as itself or as its TMA descriptor."""
    return arg.base if isinstance(arg, TensorDescriptor) else arg


def set_block_shapes(args):
    """Give the TMA descriptors among a launch's arguments (``args``: name -> value, the config's BLOCK_M
    and BLOCK_N included) the block shapes of its tiles: (1, 1, rows, head-dim tile). Every config's
    pre_hook, so the autotuner calls it before each launch; a descriptor's block shape is part of the
    compiled kernel's signature."""
    for name, (rows, cols) in _DESCRIPTOR_BLOCKS.items():
        if isinstance(args.get(name), TensorDescriptor):
            args[name].block_shape = [1, 1, args[rows], args[cols]]
