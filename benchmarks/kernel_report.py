"""What the Triton kernels compile to for sm_90a (H100 / H200), without a GPU (issue 17, item 4).

Every Triton kernel is compiled by Triton's own compiler and ptxas, for the launch configurations the
launchers choose at the benchmark shapes (benchmarks/norms.py, softmax.py, attention.py):
  norms      the forward's and the backward's launch constants, as their launchers choose them (block,
             rows a forward program, loop stages, warps), at hidden 512, 1024, 4096, 16384 (16384
             rows), the backward's persistent grid as its launcher sizes it on an
             H200: the programs an SM holds with the compiled kernel's registers, shared memory and
             warps (utils.resident_programs), times 132 SMs;
  softmax    _launch_config's block at a few column counts (4096 rows), no mask, the bench's (1, C)
             float mask broadcast over rows, a bool mask, causal;
  attention  the first config the pruning admits (what FASTTX_TRITON_AUTOTUNE=0 runs) for each head dim
             64 / 128, dtype bf16 / fp32, mask none / bool / float (a (B, 1, L, S) tile) and causal or
             not, for the forward, dK/dV and dQ kernels, on the path sm_90 runs (bf16: TMA descriptors,
             fp32: pointers); bf16 without a mask also on the pointer path; bf16 with a (B, 1, 1, S)
             key-padding mask, bool / bf16 (the row-broadcast vector path, MASK_ROWS_BROADCAST); and the
             rowsum(dO * O) kernel.
For each it reports, from the cubin Triton built: registers, the stack frame and the local-memory
instructions (STL / LDL: spill traffic) of its SASS; from ptxas -v rerun on Triton's PTX with the flags
this Triton passes: spill bytes and ptxas's performance warnings (the rerun's register count is checked
against the cubin's, so a rerun that does not reproduce the build says so); the shared memory Triton
allocates; and from the PTX: the global loads and stores by access width (ld.global.v4.b32 = 16 bytes a
thread), cp.async copies by size, TMA (cp.async.bulk.tensor), tensor-core MMAs (wgmma / mma.sync) and
whether a loop is software-pipelined (cp.async groups waited on, multi-buffered shared memory in the
TTGIR). Counts are static instructions in the code, not executions.

Run from the repository root, without TRITON_INTERPRET (it imports tests/ops/compile_attention.py's
compile helpers):
    python -m fasttx.benchmarks.kernel_report [--quick] [--out DIR]
It writes DIR/kernel_report.md and DIR/kernel_report.json. Compiled kernels land in Triton's cache, so
a rerun takes seconds; the first full run compiles ~110 kernels (minutes). Exit status 3: this Triton
cannot compile for sm_90a here (its internals moved, or its ptxas / cuobjdump is missing).
"""

import argparse
import collections
import datetime
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from unittest import mock

import torch
import triton

# The exit status of tests/ops/compile_attention.py for a Triton it cannot drive; the test skips on it.
UNSUPPORTED = 3
try:
    from tests.ops.compile_attention import TARGET, compile_kernel, variant_args
    from triton import knobs
    from triton.backends.nvidia.compiler import CUDABackend, sm_arch_from_capability
    from triton.compiler import make_backend
except ImportError as e:  # tests/ not on the path (run from elsewhere), or Triton's internals moved
    if __name__ == "__main__":
        print(f"triton {triton.__version__}: {e} (run from the repository root)", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    raise

from fasttx.triton_kernels import attention_bwd, attention_common, attention_fwd, attention_tma, layer_norm, softmax, utils

from . import norms as bench_norms
from . import softmax as bench_softmax

# The persistent norm backward sizes its grid by the SM count and what one SM holds (an H200's limits,
# as torch.cuda.get_device_properties reports them on sm_90).
H200_SMS = 132
H200 = utils.SmLimits(warp_size=32, max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
                      shared_memory_per_multiprocessor=233472)
NORM_ROWS = bench_norms.PRESETS["full"][0][0]  # 16384 rows at every hidden size
SOFTMAX_ROWS = bench_softmax.PRESETS["full"][0][0]  # 4096 rows at every width
# quick keeps 16384: the backward's two passes over column blocks, whose loops are pipelined (the test checks it).
NORM_HIDDEN = {"quick": (4096, 16384), "full": (512, 1024, 4096, 16384)}
# (columns, mask kind, causal): the bench's none and (1, C) float at each width, the loop path beyond
# MAX_BLOCK, and bool / causal where the issue expects narrower loads.
SOFTMAX_CASES = {
    "quick": [(4096, "none", False), (4096, "none", True)],
    "full": [(c, kind, False) for c in (1024, 4096, 16384, 32768) for kind in ("none", "float")]
    + [(4096, "bool", False), (4096, "none", True), (16384, "none", True), (32768, "none", True)],
}
# (head dim, dtype, mask dtype or None, causal, TMA, key padding): every case on the path sm_90 runs (TMA for
# bf16, pointers for fp32: attention_tma.TMA_DTYPES) with (B, 1, L, S) masks, the benchmarks' (bf16, no
# mask) on the pointer path too (other GPUs, strides TMA cannot take), to compare, and bf16 with a (B, 1, 1, S)
# key-padding mask, bool or bf16, not causal (the row-broadcast path against the (B, 1, L, S) tile above).
ATTENTION_CASES = {
    "quick": [(128, torch.bfloat16, None, False, True, False)],
    "full": [(e, dtype, mask, causal, dtype in attention_tma.TMA_DTYPES, False) for e in (64, 128)
             for dtype in (torch.bfloat16, torch.float32) for mask in (None, torch.bool, dtype)
             for causal in (False, True)]
    + [(e, torch.bfloat16, None, causal, False, False) for e in (64, 128) for causal in (False, True)]
    + [(e, torch.bfloat16, mask, False, True, True) for e in (64, 128) for mask in (torch.bool, torch.bfloat16)],
}
ATTENTION_KERNELS = {  # name: (jit function, (space, shared-memory model, wrong configs))
    "attn_fwd": (attention_fwd._attn_fwd_kernel, attention_fwd.FWD_TUNING),
    "attn_bwd_kv": (attention_bwd._attn_bwd_kv_kernel, attention_bwd.BWD_KV_TUNING),
    "attn_bwd_q": (attention_bwd._attn_bwd_q_kernel, attention_bwd.BWD_Q_TUNING),
    "attn_bwd_atomic": (attention_bwd._attn_bwd_kv_kernel, attention_bwd.BWD_ATOMIC_TUNING),  # ATOMIC_DQ
}
DTYPE = torch.bfloat16  # the benchmarks' default dtype for the norms and softmax


# ---- reading the compiled code -----------------------------------------------------------------------

_GLOBAL = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)+)")
# cp.async.cg.shared.global [dst], [src], 0x10, src_size: the copy's bytes (hex in Triton's PTX).
_CP_ASYNC = re.compile(
    r"\bcp\.async\.c[ag]\.shared\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
# Multi-buffered shared memory: a (stages)x(tile) buffer, its stage count one digit (num_stages <= 8); not a
# tile of 16 rows or more held in one buffer (TMA's q), nor TMA's mbarriers (stages x 1 x i64).
_PIPELINE_ALLOC = re.compile(r"ttg\.local_alloc\s*:.*!ttg\.memdesc<(?![^>]*xi64)(\d)x[^>]*mutable")
_SASS_LOCAL = re.compile(r"\b(STL|LDL)(?:\.[\w]+)*\s")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_WARNING = re.compile(r"ptxas info\s*:\s*\((C\d+)\) ([^\n]*?)(?: in the function '[^']*')?\s*$", re.M)
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _access(suffix):
    """'v4.b32' and its bytes per thread from an ld / st.global suffix such as '.nc.L1::evict_last.v4.b32'."""
    parts = suffix.strip(".").split(".")
    vector = next((p for p in parts if re.fullmatch(r"v\d", p)), None)
    element = parts[-1]
    lanes = int(vector[1:]) if vector else 1
    return (f"{vector}." if vector else "") + element, lanes * int(re.sub(r"\D", "", element)) // 8


def ptx_facts(ptx, ttgir):
    """The global accesses by width, async copies, MMAs and pipelining of one kernel's PTX and TTGIR."""
    accesses = {"ld": collections.Counter(), "st": collections.Counter()}
    widths = {"ld": set(), "st": set()}
    for op, suffix in _GLOBAL.findall(ptx):
        name, nbytes = _access(suffix)
        accesses[op][name] += 1
        widths[op].add(nbytes)
    buffers = sorted({int(n) for n in _PIPELINE_ALLOC.findall(ttgir)})
    wait_groups = len(re.findall(r"\bcp\.async(?:\.bulk)?\.wait_group\b", ptx))
    barrier_waits = len(re.findall(r"\bmbarrier\.try_wait\b", ptx))  # TMA loads complete on an mbarrier
    tma = len(re.findall(r"\bcp\.async\.bulk\.tensor\b", ptx))
    return dict(
        global_loads=dict(accesses["ld"]), global_stores=dict(accesses["st"]),
        load_bytes=sorted(widths["ld"]), store_bytes=sorted(widths["st"]),
        cp_async=dict(collections.Counter(f"{int(n, 0)}B" for n in _CP_ASYNC.findall(ptx))),
        tma=tma, wgmma=len(re.findall(r"\bwgmma\.mma_async\b", ptx)), mma_sync=len(re.findall(r"\bmma\.sync\b", ptx)),
        # Tile shapes of the MMAs (m64nNk16 for wgmma): a narrow N means short MMAs, more overhead a FLOP.
        mma_shapes=dict(collections.Counter(
            re.findall(r"\b(?:wgmma\.mma_async|mma)\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
        wait_groups=wait_groups, barrier_waits=barrier_waits, smem_buffers=buffers,
        # A loop is pipelined when its loads go to multi-buffered shared memory through async copies
        # and it waits on them a stage at a time: cp.async by group, TMA by mbarrier.
        pipelined=bool((wait_groups or barrier_waits) and any(n > 1 for n in buffers)),
    )


def _ptxas():
    # What Triton runs for sm_90 in every version with knobs (3.4 on); get_ptxas's signature changed.
    return knobs.nvidia.ptxas.path


def _ptxas_flags():
    """The flag that changes register allocation, when this Triton's make_cubin passes it to ptxas (3.8
    does, to work around a ptxas 13 bug): the rerun must allocate registers as the build did."""
    flag = "--regAllocOptLevel=2"
    return [flag] if flag in inspect.getsource(CUDABackend.make_cubin) else []


def _tool(name):
    """A CUDA tool shipped beside the ptxas Triton uses."""
    path = os.path.join(os.path.dirname(_ptxas()), name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found beside Triton's ptxas ({path})")
    return path


def binary_facts(kernel):
    """Registers, spills and ptxas's warnings of a compiled kernel (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], check=True, capture_output=True, text=True).stdout
        fmad = [] if kernel.metadata.enable_fp_fusion else ["--fmad=false"]
        log = subprocess.run([_ptxas(), "-lineinfo", *fmad, "-v", *_ptxas_flags(),
                              f"--gpu-name={sm_arch_from_capability(TARGET.arch)}", ptx,
                              "-o", os.path.join(tmp, "rerun.cubin")],
                             check=True, capture_output=True, text=True).stderr
    regs, stack, _, _ = (int(v) for v in _RESOURCES.search(usage).groups())
    local = collections.Counter(_SASS_LOCAL.findall(sass))
    frame, spill_st, spill_ld = (int(v) for v in _PTXAS_SPILLS.search(log).groups())
    return dict(
        registers=regs, stack_bytes=stack, local_stores=local["STL"], local_loads=local["LDL"],
        spill_store_bytes=spill_st, spill_load_bytes=spill_ld,
        ptxas_rerun_reproduces=int(_PTXAS_REGS.search(log).group(1)) == regs and frame == stack,
        ptxas_warnings=sorted({f"{code}: {text.strip()}" for code, text in _PTXAS_WARNING.findall(log)}),
    )


def inspect_kernel(family, kernel_name, case, config, fn, num_warps, num_stages, kwargs):
    kernel = compile_kernel(fn, num_warps, num_stages, **kwargs)
    return dict(family=family, kernel=kernel_name, case=case, config=config, num_warps=num_warps,
                num_stages=num_stages, shared=kernel.metadata.shared,
                **binary_facts(kernel), **ptx_facts(kernel.asm["ptx"], kernel.asm["ttgir"]))


# ---- the launchers' configurations -------------------------------------------------------------------


def _default_stages(num_warps):
    # The row-wise launchers pass no num_stages: Triton's default for the target applies.
    return make_backend(TARGET).parse_options(dict(num_warps=num_warps)).num_stages


def norm_entries(preset):
    for op in ("layer_norm", "rms_norm"):
        rms = op == "rms_norm"
        flags = dict(IS_RMS=rms, HAS_W=True, HAS_B=not rms)
        for hidden in NORM_HIDDEN[preset]:
            x = torch.empty(NORM_ROWS, hidden, dtype=DTYPE)
            w = torch.empty(hidden, dtype=DTYPE)
            stats = torch.empty(NORM_ROWS)
            case = dict(op=op, rows=NORM_ROWS, hidden=hidden, dtype=str(DTYPE).replace("torch.", ""))
            consts = layer_norm._fwd_config(NORM_ROWS, hidden)  # the launcher's
            warps = consts.pop("num_warps")
            fwd = dict(X=x, Y=x, W=w, B=None if rms else w, Mean=None if rms else stats, Rstd=stats, N=hidden,
                       eps=bench_norms.EPS, **consts, **flags)
            config = dict(BLOCK_N=consts["BLOCK_N"], ROWS=consts["ROWS"])
            yield ("norm", f"{op}_fwd", case, config, layer_norm._norm_fwd_kernel, warps, _default_stages(warps), fwd)
            # The launcher's own constants (block, warps, loop stages) for these rows.
            consts = layer_norm._bwd_consts(x, x, w, not rms, rms)
            warps = consts.pop("num_warps")
            # As the launcher compiles it before its grid is known (the grid: persistent_grid, from the
            # compiled kernel): stand-in partial buffers. rows_per_program is do_not_specialize there,
            # which compile_kernel does not read: a value Triton specialises nothing on (not 1, not a
            # multiple of 16) compiles the launched kernel (1 would compile a one-row loop).
            partial = torch.empty(1, hidden)
            bwd = dict(DY=x, X=x, W=w, Mean=None if rms else stats, Rstd=stats, DX=x, DW=partial,
                       DB=None if rms else partial, M=NORM_ROWS, N=hidden, rows_per_program=3, **consts)
            config = dict(BLOCK_N=consts["BLOCK_N"], ROWS=consts["ROWS"], STAGES=consts["STAGES"])
            yield ("norm", f"{op}_bwd", case, config, layer_norm._norm_bwd_kernel, warps, _default_stages(warps), bwd)


def persistent_grid(result):
    """The grid the norm backward's launcher gives NORM_ROWS rows on an H200: one wave of the programs an
    SM holds (utils.resident_programs, as programs_per_sm computes it on the GPU) with the compiled
    kernel's registers, shared memory and warps."""
    per_sm = utils.resident_programs(result["registers"], result["shared"], result["num_warps"], H200)
    with mock.patch.object(utils, "_cuda_property", lambda index, name: {"multi_processor_count": H200_SMS}[name]):
        programs, rows = utils.persistent_split(NORM_ROWS, torch.device("cuda", 0), per_sm,
                                                row_multiple=result["config"]["ROWS"])
    return dict(programs_per_sm=per_sm, programs=programs, rows_per_program=rows)


# Kernels whose grid depends on their compiled code: their config gains it once compiled.
GRIDS = {"layer_norm_bwd": persistent_grid, "rms_norm_bwd": persistent_grid}


def softmax_entries(preset):
    for cols, kind, causal in SOFTMAX_CASES[preset]:
        x = torch.empty(1, 1, SOFTMAX_ROWS, cols, dtype=DTYPE)
        mask = None
        if kind != "none":  # the bench's (1, C) mask, broadcast over rows as functional.softmax passes it
            mask = torch.empty(1, 1, 1, cols, dtype=torch.bool if kind == "bool" else DTYPE).expand(x.shape)
        launch = softmax._launch_config(cols, plain_forward=kind == "none" and not causal)
        warps = launch.pop("num_warps")
        case = dict(rows=SOFTMAX_ROWS, cols=cols, mask=kind, causal=causal, dtype=str(DTYPE).replace("torch.", ""))
        fwd = dict(X=x, Mask=mask, Y=x, B=1, L=SOFTMAX_ROWS, C=cols, n_rows=SOFTMAX_ROWS,
                   **dict(zip(("stride_ma", "stride_mb", "stride_ml", "stride_mc"), (0, 0, 0, 0) if mask is None
                              else mask.stride())),
                   scale_log2=bench_softmax.SCALE * softmax._LOG2E.value, MASK_KIND=kind, IS_CAUSAL=causal, **launch)
        config = dict(BLOCK_C=launch["BLOCK_C"])
        stages = _default_stages(warps)
        yield ("softmax", "softmax_fwd", case, config, softmax._softmax_fwd_kernel, warps, stages, fwd)
        if kind == "none":  # the backward reads y and dy only (up to the causal limit): one per width and causal
            launch = softmax._launch_config(cols)  # the backward's: one block only up to MAX_BLOCK
            warps = launch.pop("num_warps")
            config, stages = dict(BLOCK_C=launch["BLOCK_C"]), _default_stages(warps)
            y = x.reshape(-1, cols)
            # L as the launcher passes it: the rows of a causal (L, C) matrix, else 1.
            bwd = dict(Y=y, DY=y, DX=y, L=SOFTMAX_ROWS if causal else 1, C=cols, n_rows=SOFTMAX_ROWS,
                       scale=bench_softmax.SCALE, IS_CAUSAL=causal, **launch)
            yield ("softmax", "softmax_bwd", dict(case, mask="-"), config, softmax._softmax_bwd_kernel, warps, stages,
                   bwd)


def attention_entries(preset):
    for head_dim, dtype, mask_dtype, causal, tma, key_padding in ATTENTION_CASES[preset]:
        kind = "none" if mask_dtype is None else "bool" if mask_dtype == torch.bool else "float"
        mask_bytes = 0 if mask_dtype is None else mask_dtype.itemsize
        case = dict(head_dim=head_dim, dtype=str(dtype).replace("torch.", ""), mask=kind,
                    mask_shape="-" if mask_dtype is None else "B,1,1,S" if key_padding else "B,1,L,S", causal=causal,
                    path="tma" if tma else "pointers")
        for name, (fn, (space, model, wrong)) in ATTENTION_KERNELS.items():
            admitted = attention_common.space_configs(
                space, model, head_dim, head_dim, dtype.itemsize, mask_bytes, attention_common.DEFAULT_SHARED_MEMORY,
                (wrong or {}).get((kind, dtype.itemsize == 4), ()),
                mask_vectors=attention_common.mask_vector_buffers(key_padding, tma, False))
            block_m, block_n, warps, stages = admitted[0]
            args = variant_args(name.removeprefix("attn_"), block_m, block_n, head_dim, dtype, mask_dtype, causal,
                                0.0, tma, warps, key_padding)
            config = dict(BLOCK_M=block_m, BLOCK_N=block_n)
            if "DEFER_FITS" in args:  # the forward's schedule (attention_fwd.defer_pv_fits)
                config["DEFER_FITS"] = args["DEFER_FITS"]
            yield ("attention", name, case, config, fn, warps, stages, args)
        sm90_path = tma == (dtype in attention_tma.TMA_DTYPES)  # not the pointer-path comparison
        if mask_dtype is None and not causal and sm90_path:  # rowsum(dO * O): one per head dim and dtype
            o = torch.empty(2, 4, 1024, head_dim, dtype=dtype)
            block_ev = attention_common._head_block(head_dim)
            block_m = min(attention_bwd._DELTA_ELEMENTS // block_ev, 1024)
            args = dict(O=o, DO=o, Delta=torch.empty(2, 4, 1024), o_strides=o.stride()[:3], do_strides=o.stride()[:3],
                        H=4, L=1024, EV=head_dim, BLOCK_EV=block_ev, BLOCK_M=block_m)
            yield ("attention", "attn_bwd_delta", dict(case, mask="-", mask_shape="-", causal="-", path="pointers"),
                   dict(BLOCK_M=block_m),
                   attention_bwd._attn_bwd_delta_kernel, 4, _default_stages(4), args)


FAMILIES = {"norm": norm_entries, "softmax": softmax_entries, "attention": attention_entries}


def entries(preset, families):
    """(family, kernel name, case, config, jit function, num_warps, num_stages, launch kwargs) of each kernel."""
    for family, generate in FAMILIES.items():
        if family in families:
            yield from generate(preset)


# ---- output --------------------------------------------------------------------------------------------


def _histogram(counts):
    def nbytes(name):
        return _access("." + name)[1]
    widest_first = sorted(counts.items(), key=lambda kv: -nbytes(kv[0]))
    return ", ".join(f"{n}x {name} ({nbytes(name)}B)" for name, n in widest_first)


def _row(r):
    case = " ".join(f"{k}={v}" for k, v in r["case"].items() if k not in ("rows", "dtype"))
    config = ", ".join(f"{k}={v}" for k, v in r["config"].items())
    spills = f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B"
    if not r["ptxas_rerun_reproduces"]:
        spills += " (rerun differs)"
    mma = "wgmma" if r["wgmma"] else "mma.sync" if r["mma_sync"] else "-"
    if r["mma_shapes"]:
        mma += " " + ", ".join(f"{n}x {shape}" for shape, n in r["mma_shapes"].items())
    copies = ", ".join(f"{n}x {size}" for size, n in r["cp_async"].items()) or "-"
    if r["pipelined"]:
        pipe = f"yes ({', '.join(map(str, r['smem_buffers']))}-deep)"
    else:  # async copies into one buffer overlap nothing across iterations
        pipe = "no (async, 1 buffer)" if r["wait_groups"] or r["barrier_waits"] else "no"
    warnings = "; ".join(w.split(":")[0] for w in r["ptxas_warnings"]) or ""
    return (f"| {r['kernel']} | {r['case'].get('dtype', '')} | {case} "
            f"| {config}, w={r['num_warps']}, s={r['num_stages']} "
            f"| {r['registers']} | {spills} | {r['shared']} | {_histogram(r['global_loads'])} "
            f"| {_histogram(r['global_stores'])} | {copies} | {r['tma'] or '-'} | {mma} | {pipe} | {warnings} |")


def markdown(results, meta):
    lines = [
        "# Triton kernels compiled for sm_90a: what the code shows",
        "",
        f"`python -m fasttx.benchmarks.kernel_report{' --quick' if meta['preset'] == 'quick' else ''}`, "
        f"{meta['date']}; "
        f"triton {meta['triton']}, {meta['ptxas']}; target {meta['target']}. No GPU: Triton's compiler and ptxas only.",
        "",
        "Columns: registers per thread (cubin); ptxas spill stores/loads (bytes, ptxas -v on Triton's PTX); shared "
        "memory Triton allocates (bytes); global loads and stores as static PTX instructions by access width "
        "(v4.b32 = 16 bytes a thread, the widest); cp.async copies to shared memory by size; "
        "TMA (cp.async.bulk.tensor) "
        "instructions; tensor-core MMA kind and tile shapes; pipelined: async copies into multi-buffered shared memory, waited on by "
        "group (cp.async) or mbarrier (TMA); ptxas performance warnings by code (text in the JSON). Attention's path: "
        "tma (TMA descriptors, what sm_90 runs for 16-bit dtypes) or pointers. Configs: w = num_warps, s = num_stages.",
    ]
    for family in FAMILIES:
        rows = [r for r in results if r["family"] == family]
        if not rows:
            continue
        lines += ["", f"## {family}", "",
                  "| kernel | dtype | case | config | regs | spills st/ld | smem B | global loads | global stores "
                  "| cp.async | TMA | MMA | pipelined | ptxas warnings |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(r) for r in rows]
    warnings = sorted({w for r in results for w in r["ptxas_warnings"]})
    if warnings:
        lines += ["", "ptxas warnings:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.benchmarks.kernel_report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few kernels (one per family and pass): for the test")
    parser.add_argument("--family", action="append", choices=tuple(FAMILIES),
                        help="only these kernel families (repeatable); all by default")
    parser.add_argument("--out", default=os.path.join("bench-out", "kernel-report"),
                        help="folder for kernel_report.md and .json")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 replaces the kernels by the interpreter: unset it")
    preset = "quick" if args.quick else "full"
    try:
        ptxas = subprocess.run([_ptxas(), "--version"], check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1]
        _tool("cuobjdump")
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        print(f"triton {triton.__version__}: no ptxas / cuobjdump for sm_{TARGET.arch}a here: {e}", file=sys.stderr)
        sys.exit(UNSUPPORTED)
    meta = dict(preset=preset, triton=triton.__version__, torch=torch.__version__, ptxas=ptxas,
                target=f"cuda sm_{TARGET.arch}a, warp {TARGET.warp_size}",
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    results = []
    families = set(args.family or FAMILIES)
    for family, name, case, config, fn, warps, stages, kwargs in entries(preset, families):
        results.append(inspect_kernel(family, name, case, config, fn, warps, stages, kwargs))
        if name in GRIDS:
            results[-1]["config"].update(GRIDS[name](results[-1]))
        print(f"{name} {case} {config}: {results[-1]['registers']} regs", file=sys.stderr, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernel_report.json"), "w") as f:
        json.dump(dict(meta=meta, kernels=results), f, indent=1)
    with open(os.path.join(args.out, "kernel_report.md"), "w") as f:
        f.write(markdown(results, meta))
    print(os.path.join(args.out, "kernel_report.md"))


if __name__ == "__main__":
    main()
