"""Launch-configuration helpers shared by the row-wise Triton kernels (norms, softmax, ...)."""

import functools

import torch
import triton

# Resident warps to aim for per SM in persistent kernels: half of H100's 64 keeps enough loads in
# flight to saturate HBM, while more programs would only grow the per-program partial-sum buffers.
_WARPS_PER_SM = 32
# The interpreter runs programs one after another, so extra programs buy nothing; a few still
# exercise the cross-program reduction.
_INTERPRETER_PROGRAMS = 4


def row_block(n: int, max_block: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for one program walking a row of ``n`` elements in blocks of at most ``max_block``.

    8 elements per thread is two 16-byte fp32 loads (one for 16-bit types): enough bytes in flight per
    thread without leaving lanes idle on short rows. 16 warps at most, so that a CTA of 512 threads may
    still use 128 registers per thread (64K-register file) for its row-sized tensors.
    """
    block = min(triton.next_power_of_2(n), max_block)
    return block, min(max(block // 256, 1), 16)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 1 for non-CUDA devices (the Triton interpreter)."""
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


# Resident programs (CTAs) an SM may hold, whatever their size: 32 on sm_80 / sm_90.
_MAX_PROGRAMS_PER_SM = 32
# Shared memory the driver reserves per CTA (sm_80 on), on top of what the kernel allocates.
_RESERVED_SHARED_PER_PROGRAM = 1024


def programs_per_sm(kernel, device: torch.device) -> int:
    """How many programs of ``kernel`` (a compiled Triton kernel, e.g. from ``JITFunction.warmup``) one SM
    of the CUDA ``device`` holds at once: the least that its threads, registers and shared memory allow.

    Registers are allocated per warp in units of 256 (sm_80 / sm_90).
    """
    kernel._init_handles()  # loads the binary, which sets n_regs (Triton's own tutorials do the same)
    props = torch.cuda.get_device_properties(device)
    warps = kernel.metadata.num_warps
    regs_per_warp = triton.cdiv(kernel.n_regs * props.warp_size, 256) * 256
    by_threads = props.max_threads_per_multi_processor // (warps * props.warp_size)
    by_regs = props.regs_per_multiprocessor // (regs_per_warp * warps)
    by_shared = props.shared_memory_per_multiprocessor // (kernel.metadata.shared + _RESERVED_SHARED_PER_PROGRAM)
    return max(1, min(by_threads, by_regs, by_shared, _MAX_PROGRAMS_PER_SM))


def persistent_split(n_rows: int, num_warps: int, device: torch.device, per_sm: int | None = None) -> tuple[int, int]:
    """(programs, rows_per_program) for a kernel whose programs each loop over a contiguous row range.

    ``per_sm``: the programs an SM holds at once (:func:`programs_per_sm`), so that the grid is one full
    wave; without it, as many as fill half of an SM's warps with ``num_warps``-warp programs.
    Every program gets at least one row, so kernels may initialise per-program buffers on their first row.
    """
    if n_rows == 0:
        return 0, 0
    if device.type == "cuda":
        target = sm_count(device) * (per_sm or max(1, _WARPS_PER_SM // num_warps))
    else:
        target = _INTERPRETER_PROGRAMS
    rows = triton.cdiv(n_rows, min(n_rows, target))
    return triton.cdiv(n_rows, rows), rows
