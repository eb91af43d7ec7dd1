"""Launch-configuration helpers shared by the Triton launchers (norms, softmax, attention)."""

import functools
import math
import typing

import torch

# The interpreter runs programs one after another, so extra programs buy nothing; a few still
# exercise the cross-program reduction.
_INTERPRETER_PROGRAMS = 4


# Host-side twins of triton.cdiv and triton.next_power_of_2, whose constexpr_function wrappers cost
# ~2 us a call on the host; a launch calls them several times.
def cdiv(x: int, y: int) -> int:
    return -(-x // y)


def next_power_of_2(n: int) -> int:
    """The least power of 2 >= n (0 for n = 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def row_block(n: int, max_block: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for one program walking a row of ``n`` elements in blocks of at most ``max_block``.

    8 elements per thread is two 16-byte fp32 loads (one for 16-bit types): enough bytes in flight per
    thread without leaving lanes idle on short rows. 16 warps at most, so that a CTA of 512 threads may
    still use 128 registers per thread (64K-register file) for its row-sized tensors.
    """
    block = min(next_power_of_2(n), max_block)
    return block, min(max(block // 256, 1), 16)


# The elements a row-wise program gets at least when rows are shorter: several rows share it (row_tile).
SHORT_ROWS_TILE = 1024


def row_tile(n: int, n_rows: int, max_block: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) for ``n_rows`` rows of ``n`` elements, one program taking a [ROWS, BLOCK]
    tile: BLOCK as :func:`row_block` gives it, and rows that fit one block several to a program.

    Up to SHORT_ROWS_TILE elements a program: one row of < 256 elements alone would be a single warp with
    idle lanes, and SMs run too few programs at once (32 on Hopper) to keep enough loads in flight with
    such small ones. ROWS is a power of two dividing ``n_rows`` (the gcd of both), so that no program
    runs past the last row and the kernels need no row mask; an odd row count keeps one row a program.
    The warps are row_block's for the tile's elements: 8 a thread, as for one longer row.
    """
    block, _ = row_block(n, max_block)
    rows = math.gcd(max(SHORT_ROWS_TILE // block, 1), n_rows) if n <= block else 1
    _, num_warps = row_block(rows * block, max_block)
    return block, rows, num_warps


@functools.lru_cache(maxsize=None)
def _cuda_property(index: int, name: str):
    return getattr(torch.cuda.get_device_properties(index), name)


def device_property(device: torch.device, name: str, off_cuda):
    """``torch.cuda.get_device_properties(device).<name>``, cached; ``off_cuda`` for non-CUDA devices."""
    if device.type != "cuda":
        return off_cuda
    return _cuda_property(device.index if device.index is not None else torch.cuda.current_device(), name)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 1 for non-CUDA devices (the Triton interpreter)."""
    return device_property(device, "multi_processor_count", 1)


def l2_bytes(device: torch.device) -> int:
    """L2 cache bytes of ``device``; 0 for non-CUDA devices (the Triton interpreter)."""
    return device_property(device, "L2_cache_size", 0)


# At most this many looping programs an SM (l2_resident_programs): 16-warp programs with two 8 KB blocks
# of each tensor in flight, already above the ~21 KB an H200 SM needs in flight (softmax.md).
_MAX_LOOPING_PROGRAMS_PER_SM = 2


def l2_resident_programs(n_rows: int, row_bytes: int, device: torch.device) -> int:
    """Programs for a persistent grid over ``n_rows`` rows that a program reads twice, ``row_bytes`` each
    (every tensor the two passes read): as many as keep the rows in flight within half the L2 (the rest
    holds what the second pass writes and what other work leaves), at least one an SM, at most
    _MAX_LOOPING_PROGRAMS_PER_SM an SM, and never more than the rows. One program on non-CUDA devices.

    With a program a row, every resident program's row is in flight: on an H200 (132 SMs, 50 MB of L2)
    four 16-warp programs an SM of 65536-column bf16 rows are 68 MB, so the second pass re-reads the
    rows from HBM, not from L2 (softmax.md, change 1).
    """
    sms = sm_count(device)
    per_sm = max(1, min(_MAX_LOOPING_PROGRAMS_PER_SM, l2_bytes(device) // 2 // (sms * row_bytes)))
    return max(1, min(n_rows, sms * per_sm))


# Resident programs (CTAs) an SM may hold, whatever their size: 32 on sm_80 / sm_90.
_MAX_PROGRAMS_PER_SM = 32
# Shared memory the driver reserves per CTA (sm_80 on), on top of what the kernel allocates.
_RESERVED_SHARED_PER_PROGRAM = 1024


class SmLimits(typing.NamedTuple):
    """What one SM holds, named as ``torch.cuda.get_device_properties`` names it (whose result
    :func:`resident_programs` takes as well)."""

    warp_size: int
    max_threads_per_multi_processor: int
    regs_per_multiprocessor: int
    shared_memory_per_multiprocessor: int


def resident_programs(n_regs: int, shared: int, num_warps: int, limits) -> int:
    """How many programs of a kernel using ``n_regs`` registers a thread, ``shared`` bytes of shared
    memory and ``num_warps`` warps one SM with ``limits`` (:class:`SmLimits` or a device's properties)
    holds at once: the least that its threads, registers and shared memory allow.

    Registers are allocated per warp in units of 256 (sm_80 / sm_90).
    """
    regs_per_warp = cdiv(n_regs * limits.warp_size, 256) * 256
    by_threads = limits.max_threads_per_multi_processor // (num_warps * limits.warp_size)
    by_regs = limits.regs_per_multiprocessor // (regs_per_warp * num_warps)
    by_shared = limits.shared_memory_per_multiprocessor // (shared + _RESERVED_SHARED_PER_PROGRAM)
    return max(1, min(by_threads, by_regs, by_shared, _MAX_PROGRAMS_PER_SM))


def programs_per_sm(kernel, device: torch.device) -> int:
    """:func:`resident_programs` of ``kernel`` (a compiled Triton kernel, e.g. from ``JITFunction.warmup``)
    on the CUDA ``device``."""
    kernel._init_handles()  # loads the binary, which sets n_regs (Triton's own tutorials do the same)
    return resident_programs(kernel.n_regs, kernel.metadata.shared, kernel.metadata.num_warps,
                             torch.cuda.get_device_properties(device))


def persistent_split(n_rows: int, device: torch.device, per_sm: int | None = None,
                     row_multiple: int = 1) -> tuple[int, int]:
    """(programs, rows_per_program) for a kernel whose programs each loop over a contiguous row range.

    ``per_sm``, required on CUDA: the programs an SM holds at once (:func:`programs_per_sm`), so that
    the grid is one full wave. Every program gets at least one row, so kernels may initialise
    per-program buffers on their first row. ``row_multiple``: rows_per_program is a multiple of it (a
    kernel stepping through its rows that many at a time then has a partial step only at the last row).
    """
    if n_rows == 0:
        return 0, 0
    if device.type == "cuda":
        if per_sm is None:
            raise ValueError("persistent_split: per_sm (programs_per_sm of the compiled kernel) is required on CUDA")
        target = sm_count(device) * per_sm
    else:
        target = _INTERPRETER_PROGRAMS
    rows = cdiv(cdiv(n_rows, min(n_rows, target)), row_multiple) * row_multiple
    return cdiv(n_rows, rows), rows
