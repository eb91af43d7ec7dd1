"""The CUDA extension fasttx._C: built wherever nvcc is (make test builds it), for the
architectures asked for, with its ops registered and clear errors for CPU tensors."""

import atexit
import functools
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

import fasttx
from fasttx import _attention_kernels, _build, _extension
from fasttx._declarations import DECLARATIONS

HAVE_NVCC = torch.version.cuda is not None and shutil.which("nvcc") is not None
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="no nvcc / CUDA build of torch: the extension cannot be built")

# (op, direction) of every C++ op the declarations (fasttx/_declarations.py) say csrc/bindings.cpp defines.
CUDA_OPS = [(name, direction) for name, d in DECLARATIONS.items() if "cuda" in d.backends for direction in ("fwd", "bwd")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _built_head_dims():
    """The attention head dims fasttx._C reports, which must be those its build asked for (a build with
    FASTTX_ATTENTION_HEAD_DIMS set is tested with the same value set)."""
    import fasttx._C

    built = fasttx._C.ATTENTION_HEAD_DIMS
    assert built == _attention_kernels.build_head_dims(os.environ.get(_attention_kernels.BUILD_ENV))
    return built


@needs_nvcc
def test_extension_is_built_and_registers_its_ops():
    loaded, reason = _extension.load(allow_jit_build=False)
    assert loaded, reason
    for name, direction in CUDA_OPS:
        assert hasattr(torch.ops.fasttx, f"{name}_{direction}_cuda"), name


@needs_nvcc
@pytest.mark.parametrize("name,direction", CUDA_OPS)
def test_cpp_schema_matches_the_declaration(name, direction):
    """The schema strings of csrc/bindings.cpp are the declared ones, which the Triton ops are defined with."""
    assert _extension.load(allow_jit_build=False)[0]
    op = f"{name}_{direction}_cuda"
    declared = torch._C.parse_schema(f"fasttx::{op}{getattr(DECLARATIONS[name], direction + '_schema')}")
    assert str(getattr(torch.ops.fasttx, op).default._schema) == str(declared)


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


def _requested_archs():
    """The architectures the build was asked for (TORCH_CUDA_ARCH_LIST, make test's default where unset)."""
    return {a.strip() for a in os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a").replace(" ", ";").split(";") if a.strip()}


@needs_nvcc
def test_extension_holds_the_requested_architectures():
    import fasttx._C

    expected = {"sm_" + a.replace(".", "").replace("+PTX", "") for a in _requested_archs()}
    # The fatbin headers ("arch = sm_90a", "identifier = .../layer_norm_bwd.cu" per ELF), not --list-elf's
    # file names: the cuobjdump of CUDA 12.8 (Triton 3.6 ships it) names sm_90a cubins "....sm_90.cubin".
    listing = subprocess.run([_cuobjdump(), "--dump-resource-usage", fasttx._C.__file__], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    cubins, arch = set(), None
    for line in listing.stdout.splitlines():
        key, _, value = line.partition(" = ")
        if key == "arch":
            arch = value
        elif key == "identifier":
            cubins.add((os.path.splitext(os.path.basename(value))[0], arch))
    assert expected <= {arch for _, arch in cubins}, listing.stdout
    # Every attention kernel file (one per direction and built head dim, and one per sm_90a kernel and
    # built head dim: the other architectures get its trapping stubs) for every architecture, and none
    # of a head dim left out.
    built = _built_head_dims()
    files = [(f"attention_{direction}_hdim{d}", d) for direction in ("fwd", "bwd") for d in _attention_kernels.HEAD_DIMS]
    files += [(f"attention_{kernel}_sm90_hdim{d}", d)
              for kernel, dims in _attention_kernels.SM90_HEAD_DIMS.items() for d in dims]
    for name, d in files:
        for arch in expected:
            assert ((name, arch) in cubins) == (d in built), (name, arch, listing.stdout)


# A mangled C++ name as it sits in a cubin's string tables.
_MANGLED_NAME = re.compile(rb"_Z[0-9A-Za-z_]+")


@functools.lru_cache(maxsize=None)
def _extension_cubins():
    """{mangled name: [(arch, cubin path), ...]} over fasttx._C's cubins, extracted once a process
    (cuobjdump -xelf) into a folder removed at exit. The SASS tests dump only the cubins that hold their
    kernels, each whole: cuobjdump -sass -fun costs ~0.3 s a name even on one cubin (~0.6 s on the whole
    extension: 32 names took 20 s), the whole of the largest cubin ~2 s."""
    import fasttx._C

    folder = tempfile.mkdtemp(prefix="fasttx-cubins-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    extract = subprocess.run([_cuobjdump(), "-xelf", "all", fasttx._C.__file__], cwd=folder,
                             capture_output=True, text=True)
    assert extract.returncode == 0, extract.stderr
    # CUDA 12.8's cuobjdump names an sm_90a cubin "sm_90": where the build has no plain 9.0, it is the 9.0a one.
    renamed = {} if "9.0" in _requested_archs() else {"sm_90": "sm_90a"}
    holders = {}
    for file in sorted(os.listdir(folder)):  # <source>.<arch>.cubin
        arch = file.rsplit(".", 2)[1]
        arch = renamed.get(arch, arch)
        path = os.path.join(folder, file)
        with open(path, "rb") as f:
            for name in set(_MANGLED_NAME.findall(f.read())):
                holders.setdefault(name.decode(), []).append((arch, path))
    return holders


def _sm90a_kernels_sass(names):
    """{(arch, mangled name): its SASS lines} of the kernels `names` in fasttx._C, or a skip where the build
    has no 9.0a."""
    if "9.0a" not in _requested_archs():
        pytest.skip("built without 9.0a: no sm_90a attention kernels")
    holders, names = _extension_cubins(), set(names)
    sass = {}  # (arch, name) -> its SASS lines
    for arch, path in sorted({holder for name in names for holder in holders.get(name, ())}):
        dump = subprocess.run([_cuobjdump(), "-sass", path], capture_output=True, text=True)
        assert dump.returncode == 0, dump.stderr
        lines = None  # the SASS of the function being read, where it is one of `names`
        for line in dump.stdout.splitlines():
            if line.strip().startswith("Function : "):
                name = line.split(":", 1)[1].strip()
                lines = None
                if name in names:
                    lines = sass[(arch, name)] = []
            elif lines is not None:
                lines.append(line)
    return sass


# Per head dim and keys a block (csrc/attention/sm90/attention_fwd_sm90.cuh, Sm90Fwd): HGMMA of each shape (Q K^T
# in the first turn and the loop, E / 16 k-steps each; P V in the loop and the last turn, kBlockN / 16 k-steps
# of E / min(E, 128) wgmma each), TMA boxes loaded (Q; K before and in the loop; V: E / 64 each) and stored (O:
# E / 64 a consumer warpgroup), the exp2 of a block's softmax (kBlockN / 2 + 2), its 8-key tiles.
_SM90_FWD_SASS = {
    (64, 128): ({"64x128": 8, "64x64": 16}, 4, 1, 66, 16),
    (96, 128): ({"64x128": 12, "64x96": 16}, 8, 2, 66, 16),
    (128, 128): ({"64x128": 32}, 8, 2, 66, 16),
    (128, 176): ({"64x176": 16, "64x128": 22}, 8, 2, 90, 22),
    (256, 80): ({"64x80": 32, "64x128": 20}, 16, 4, 42, 10),
}


def _sm90_fwd_instances(head_dim):
    """{mangled name: (causal, mask, dropout, keys a block)} of the sm_90a forward's instances of a head dim:
    dtype x causal x mask x dropout, with the keys
    sm90_fwd_block_keys gives (176 at E = 128 without causality, mask or dropout; 80 at E = 256; 128
    elsewhere), and at E = 128 also the 128-key instance FASTTX_ATTENTION_SM90_KEYS=128 runs instead of the
    176-key one."""
    instances = {}
    for t in ("6__half", "13__nv_bfloat16"):
        for c, m, d in itertools.product((0, 1), repeat=3):
            keys = 80 if head_dim == 256 else 176 if head_dim == 128 and not (c or m or d) else 128
            for k in sorted({keys, 128} if keys == 176 else {keys}):
                name = (f"_ZN6fasttx4attn25attention_fwd_sm90_kernelI{t}Li{head_dim}ELb{c}ELb{m}ELb{d}ELi{k}EEEv"
                        "NS0_13Sm90FwdParamsE")
                instances[name] = (c, m, d, k)
    return instances


@needs_nvcc
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_sm90a_attention_forward_is_wgmma_and_tma_without_local_memory(head_dim):
    """The sm_90a attention forward (csrc/attention/sm90), every instance of a head dim (_sm90_fwd_instances):
    on sm_90a its matrix products are HGMMA, its loads and its O store TMA, no local memory (the mask's
    loads and Philox's state beside O, S and P fit the consumers' 240 registers, and so do 176-key O, S
    and P; at E = 64 without mask or dropout O, S and P fit the 160 of three consumers, Sm90FwdTile); the
    producer keeps 24 registers (setmaxnreg); the sm_80 objects hold only its trapping stub."""
    instances = _sm90_fwd_instances(head_dim)
    sass = _sm90a_kernels_sass(list(instances))
    for name, (_, masked, dropout, keys) in instances.items():
        hgmma, loads, stores, exp2, tiles = _SM90_FWD_SASS[head_dim, keys]
        code = "\n".join(sass[("sm_90a", name)])
        shapes = re.findall(r"HGMMA\.(64x\d+)x16\.F32", code)
        assert {shape: shapes.count(shape) for shape in set(shapes)} == hgmma, name
        assert code.count("UTMALDG.4D") == loads, name
        assert code.count("UTMASTG.4D") == stores, name
        assert "LDL" not in code and "STL" not in code, name
        three_consumers = head_dim == 64 and not masked and not dropout
        consumer_regs = "0xa0" if three_consumers else "0xf0"  # 160, 240
        assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code, name
        assert f"USETMAXREG.TRY_ALLOC.CTAPOOL UP0, {consumer_regs}" in code, name
        # The consumers' turns (ping-pong), and the softmax of the loop's block between the wait that
        # retires Q K^T with P V still in flight and the one that retires P V (ptxas hoisted the latter
        # above the softmax when both sat in one basic block).
        assert "BAR.SYNC" in code and "BAR.ARV" in code, name
        parts = code.split("WARPGROUP.DEPBAR.LE gsb0, 0x1")
        assert len(parts) == 2, name
        assert parts[1].split("WARPGROUP.DEPBAR.LE gsb0, 0x0")[0].count("MUFU.EX2") >= exp2 - 2, name
        # Dropout's keep bits (two shuffles per pair of 8-key tiles) drawn between passing the turn and that wait,
        # while the turn's wgmma run (ptxas may hoist a draw or a few above the pass).
        drawn = parts[0].rsplit("BAR.ARV", 1)[1].count("SHFL")
        assert drawn >= 3 * tiles // 4 if dropout else drawn == 0, name
        stub = "\n".join(sass.get(("sm_80", name), []))
        assert "BPT.TRAP" in stub and "HGMMA" not in stub, name


def _kernel_names(pattern):
    """The mangled names of fasttx._C's kernels that `pattern` finds (re.search): anonymous-namespace
    kernels carry a per-build hash in theirs."""
    import fasttx._C

    listing = subprocess.run([_cuobjdump(), "--dump-resource-usage", fasttx._C.__file__], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    return sorted({name for name in re.findall(r"Function (\S+):", listing.stdout) if re.search(pattern, name)})


@needs_nvcc
def test_rowwise_cluster_split_sass():
    """The row-wise kernels' rows split over a thread block cluster (csrc/common/row_layout.cuh), in the bf16
    instances (a sample: the dump takes ~1 s an instance). On sm_90a: the split instances pass the
    cluster barrier twice (UCGABAR_ARV and UCGABAR_WAIT twice each: cluster_allreduce's two arrivals,
    its wait before reading the other blocks' partials, and the wait before the block exits or, in the
    norm backward's row loop, writes its slot again), with no local memory, and 16-byte loads where the
    rows are vector-aligned. Those are
    the norms' kSplit instances (last template argument) and every softmax instance (one kernel,
    branching on row_split at run time); the norms' other instances have no cluster barrier. On sm_80,
    which never launches them, the norms' split instances are a trap alone."""
    names = _kernel_names(r"(norm_(fwd|bwd)_kernelILb[01]E|softmax_(fwd|bwd)_kernelI)13__nv_bfloat16S2_")
    assert len(names) == 22, names  # norms: 2 ops x 2 directions x (walk, aligned walk, split); softmax: 8 + 2
    sass = _sm90a_kernels_sass(names)
    for name in names:
        split = "softmax" in name or re.search(r"Lb1EEEvNS_13Norm(Fwd|Bwd)Params", name) is not None
        code = "\n".join(sass[("sm_90a", name)])
        barriers = (code.count("UCGABAR_ARV"), code.count("UCGABAR_WAIT"))
        assert barriers == ((2, 2) if split else (0, 0)), name
        assert "LDL" not in code and "STL" not in code, name
        if split and re.search(r"Lb1E(Lb1E)?EEvNS_", name):  # vector-aligned (the norms' split ones all are)
            assert "LDG.E.128" in code, name
        sm80 = "\n".join(sass[("sm_80", name)])
        assert "UCGABAR" not in sm80, name
        if split and "softmax" not in name:
            assert "BPT.TRAP" in sm80 and "LDG" not in sm80 and "STG" not in sm80, name


@needs_nvcc
def test_norm_long_rows_shared_accumulators_sass():
    """The norm backward's long-rows kernel (csrc/layer_norm/layer_norm_bwd_long_rows.cuh), bf16 instances
    on sm_80 and sm_90a: its dw, db accumulators in dynamic shared memory are read and written as float4s
    (LDS.128, STS.128: their planes' layout; the only 32-bit shared stores left are the row reduction's,
    one a row sum), no local memory, 16-byte global loads where the rows are aligned."""
    names = _kernel_names(r"norm_bwd_long_rows_kernelILb[01]E13__nv_bfloat16S2_")
    assert len(names) == 4, names  # 2 ops x (aligned, not)
    sass = _sm90a_kernels_sass(names)
    for arch in ("sm_80", "sm_90a"):
        for name in names:
            code = "\n".join(sass[(arch, name)])
            assert "LDS.128" in code and "STS.128" in code, (arch, name)
            row_sums = 1 if "ILb1E" in name else 2  # RMSNorm: g * xhat; LayerNorm: and g
            assert len(re.findall(r"\bSTS ", code)) <= row_sums, (arch, name)
            assert "LDL" not in code and "STL" not in code, (arch, name)
            if re.search(r"Lb1EEEvNS_13NormBwdParams", name):
                assert "LDG.E.128" in code, (arch, name)


def _while_wgmma_run(code, op):
    """How many `op` instructions of the SASS `code` lie between a wgmma issue (WARPGROUP.ARRIVE) and
    the next wait for every wgmma to complete: run while the tensor cores work (ptxas places them
    anywhere in that stretch: between the products' HGMMA, before or after a wait<1>)."""
    segments = code.split("WARPGROUP.DEPBAR.LE gsb0, 0x0")[:-1]
    return sum(seg.split("WARPGROUP.ARRIVE", 1)[1].count(op) for seg in segments if "WARPGROUP.ARRIVE" in seg)


# Per head dim (csrc/attention/sm90/bwd_common_sm90.cuh, Sm90BwdHead): HGMMA of each shape of the dK/dV
# kernel per pass (Sm90Grad, as mangled: 0 dK and dV, 1 dV, 2 dK; S^T = K Q^T and, where dK is
# accumulated, dP^T = V dO^T: E / 16 k-steps of 64x64 each; dV += P^T dO and dK += dS^T Q: 4 k-steps of
# E / min(E, 128) wgmma each) and of the dQ kernel (S = Q K^T and dP = dO V^T before the loop and in it:
# E / 16 k-steps each; dQ += dS K in the loop and after it: 4 k-steps of E / min(E, 128) wgmma each), and
# the TMA boxes each loads (E / 64 boxes a tile, rounded up: K, V (not in the dV pass), Q, dO).
_SM90_BWD_SASS = {
    64: ({0: ({"64x64": 16}, 4)}, {"64x64": 24}, 4),
    96: ({0: ({"64x64": 12, "64x96": 8}, 8)}, {"64x64": 24, "64x96": 8}, 8),
    128: ({0: ({"64x64": 16, "64x128": 8}, 8)}, {"64x64": 32, "64x128": 8}, 8),
    256: ({1: ({"64x64": 16, "64x128": 8}, 12), 2: ({"64x64": 32, "64x128": 8}, 16)}, {"64x64": 64, "64x128": 16}, 16),
}

def _hgmma_shapes(code):
    shapes = re.findall(r"HGMMA\.(64x\d+)x16\.F32", code)
    return {shape: shapes.count(shape) for shape in set(shapes)}


@needs_nvcc
@pytest.mark.parametrize("head_dim", sorted(_SM90_BWD_SASS))
def test_sm90a_attention_dkdv_is_wgmma_and_tma_without_local_memory(head_dim):
    """The sm_90a dK/dV kernel (csrc/attention/sm90/attention_bwd_sm90.cuh), every instance of a head dim
    (dtype x causal x mask x dropout, x its two passes at E = 256): on sm_90a its matrix products are
    HGMMA, its tile loads TMA, no local memory (the mask's loads and Philox's state beside the
    accumulators, S^T and dP^T fit the consumers' 240 registers), setmaxnreg 24 / 240; the sm_80 objects
    hold only its trapping stub."""
    passes, _, _ = _SM90_BWD_SASS[head_dim]
    names = {f"_ZN6fasttx4attn28attention_bwd_kv_sm90_kernelI{t}Li{head_dim}ELb{c}ELb{m}ELb{d}ELNS0_8Sm90GradE{g}EEEv"
             "NS0_13Sm90BwdParamsE": g
             for t in ("6__half", "13__nv_bfloat16") for c in (0, 1) for m in (0, 1) for d in (0, 1) for g in passes}
    sass = _sm90a_kernels_sass(list(names))
    for name, g in names.items():
        hgmma, loads = passes[g]
        code = "\n".join(sass[("sm_90a", name)])
        assert _hgmma_shapes(code) == hgmma, name
        assert code.count("UTMALDG.4D") == loads, name
        assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code and "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0" in code, name
        assert "LDL" not in code and "STL" not in code, name
        # Dropout's keep bits (three shuffles per pair of 8-query tiles, 12 a tile): with dK and dV in one
        # pass drawn while S^T and dP^T run, all of them or all but the last butterfly stage's last two,
        # which ptxas may place just after the wait, beside the first of the work on S^T (E = 128 unmasked,
        # not causal, since the draw has 7 Philox rounds); in E = 256's dK pass before they are issued
        # (Sm90Bwd::kDrawFirst); its dV pass leaves the place to ptxas.
        dropout = "ELb1ELNS0_8Sm90Grad" in name
        assert code.count("SHFL") == (12 if dropout else 0), name
        if g == 0:
            assert (10 if dropout else 0) <= _while_wgmma_run(code, "SHFL") <= (12 if dropout else 0), name
        elif g == 2:
            assert _while_wgmma_run(code, "SHFL") == 0, name
        stub = "\n".join(sass.get(("sm_80", name), []))
        assert "BPT.TRAP" in stub and "HGMMA" not in stub, name


# The atomic-dQ instances of the dK/dV kernel (Sm90Grad 3, kKVAtomicQ; E = 64, 96, 128): the products of
# the dK/dV pass plus dQ += dS K, 4 k-steps of 64 x E; the 8-byte reductions, E / 16 column tiles x 2
# rows a thread, compiled once for each consumer's half (the half is a compile-time index); no local
# memory (csrc/attention/README.md, "Atomic dQ").
_SM90_ATOMIC_SASS = {64: {"64x64": 20}, 96: {"64x64": 12, "64x96": 12}, 128: {"64x64": 16, "64x128": 12}}


@needs_nvcc
@pytest.mark.parametrize("head_dim", sorted(_SM90_ATOMIC_SASS))
def test_sm90a_attention_atomic_dq_is_wgmma_tma_and_vector_reductions(head_dim):
    names = [f"_ZN6fasttx4attn28attention_bwd_kv_sm90_kernelI{t}Li{head_dim}ELb{c}ELb{m}ELb{d}ELNS0_8Sm90GradE3EEEv"
             "NS0_13Sm90BwdParamsE" for t in ("6__half", "13__nv_bfloat16") for c in (0, 1) for m in (0, 1) for d in (0, 1)]
    sass = _sm90a_kernels_sass(names)
    _, _, loads = _SM90_BWD_SASS[head_dim]
    for name in names:
        code = "\n".join(sass[("sm_90a", name)])
        assert _hgmma_shapes(code) == _SM90_ATOMIC_SASS[head_dim], name
        assert code.count("UTMALDG.4D") == loads, name
        assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code and "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0" in code, name
        assert code.count("REDG.E.ADD.F32x2") == 2 * 2 * head_dim // 16, name
        assert "REDG.E.ADD.F32 " not in code and "ATOMG" not in code, name
        assert "LDL" not in code and "STL" not in code, name
        dropout = "ELb1ELNS0_8Sm90Grad" in name
        assert code.count("SHFL") == (12 if dropout else 0), name
        stub = "\n".join(sass.get(("sm_80", name), []))
        assert "BPT.TRAP" in stub and "HGMMA" not in stub, name


@needs_nvcc
@pytest.mark.parametrize("head_dim", sorted(_SM90_BWD_SASS))
def test_sm90a_attention_dq_is_wgmma_and_tma_without_local_memory(head_dim):
    """The sm_90a dQ kernel (csrc/attention/sm90/attention_dq_sm90.cuh), every instance of a head dim
    (dtype x causal x mask x dropout, with and without the consumers' turns; E = 256 has one consumer and
    only the instance with): on sm_90a its matrix products are HGMMA, its tile loads TMA, no local memory,
    setmaxnreg 24 / 240 (E = 256, one consumer warpgroup: 24 / 256); the turns' named barriers where two
    consumers take them; the sm_80 objects hold only its trapping stub."""
    _, hgmma, loads = _SM90_BWD_SASS[head_dim]
    overlap = head_dim <= 128  # Sm90Dq::kOverlap, two consumers
    names = {f"_ZN6fasttx4attn27attention_bwd_q_sm90_kernelI{t}Li{head_dim}ELb{c}ELb{m}ELb{d}ELb{turns}EEEv"
             f"NS0_13Sm90BwdParamsE": (d, turns and overlap)
             for t in ("6__half", "13__nv_bfloat16") for c, m, d in itertools.product((0, 1), repeat=3)
             for turns in ((0, 1) if overlap else (1,))}
    sass = _sm90a_kernels_sass(list(names))
    for name, (dropout, turns) in names.items():
        code = "\n".join(sass[("sm_90a", name)])
        # The turns: bar.sync and bar.arrive before and after the first turn's, the loop's and the last
        # turn's products (__syncthreads is the fourth BAR.SYNC).
        assert (code.count("BAR.SYNC"), code.count("BAR.ARV")) == ((4, 3) if turns else (1, 0)), name
        # S = Q K^T and dP = dO V^T before the loop and in it, dQ += dS K (4 k-steps over a 64-key block)
        # in it and after it.
        assert _hgmma_shapes(code) == hgmma, name
        assert code.count("UTMALDG.4D") == loads, name  # Q, dO, K, V
        alloc = "0xf0" if overlap else "0x100"
        assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code and f"USETMAXREG.TRY_ALLOC.CTAPOOL UP0, {alloc}" in code, name
        assert "LDL" not in code and "STL" not in code, name
        if overlap:
            # Software-pipelined: a block's 32 exponentials between the wait that retires S (dP still in
            # flight) and the one that retires dP, before the loop and in it (ptxas hoisted the latter
            # above them in one basic block).
            parts = code.split("WARPGROUP.DEPBAR.LE gsb0, 0x1")
            assert len(parts) == 3, name
            exps = [part.split("WARPGROUP.DEPBAR.LE gsb0, 0x0")[0].count("MUFU.EX2") for part in parts[1:]]
            assert min(exps) >= 32, name
        else:
            # Every wait retires all products in flight (dS K before the next S, S before P), and dP is
            # issued after S's wait: ptxas places it above some or all of the block's 32 exponentials.
            assert "WARPGROUP.DEPBAR.LE gsb0, 0x1" not in code and code.count("MUFU.EX2") >= 64, name
        # Dropout's keep bits (two shuffles per pair of 8-key tiles, 8 a block, before the loop and in it) drawn
        # while S and dP (E = 256: S) run, all of them or (E = 256) all but one.
        assert code.count("SHFL") == (16 if dropout else 0), name
        assert _while_wgmma_run(code, "SHFL") >= (16 if dropout and overlap else 15 if dropout else 0), name
        stub = "\n".join(sass.get(("sm_80", name), []))
        assert "BPT.TRAP" in stub and "HGMMA" not in stub, name


def _attention_args(q=None, k=None, v=None, mask=None, dropout_p=0.0, seed=None, dtype=torch.float16, d=64):
    """Well-formed attention_fwd_cuda arguments (on CPU), some replaced."""
    q = torch.randn(2, 4, 5, d, dtype=dtype) if q is None else q
    k = torch.randn(2, 2, 7, d, dtype=dtype) if k is None else k
    v = torch.randn(2, 2, 7, d, dtype=dtype) if v is None else v
    return q, k, v, mask, 0.125, False, dropout_p, seed


@needs_nvcc
@pytest.mark.parametrize("name,direction", CUDA_OPS)
def test_cpu_tensors_get_a_clear_error(name, direction):
    """Each op's first declared sample, on CPU; the backward's from the forward's fake outputs."""
    declaration = DECLARATIONS[name]
    args = declaration.samples(False, "cuda", "cpu")[0]
    if direction == "bwd":
        args = declaration.bwd_sample(args, declaration.fwd_fake(*args))
    message = "must be a CUDA tensor"
    if name == "attention" and args[0].shape[-1] not in _built_head_dims():
        message = "was left out of this build"  # FASTTX_ATTENTION_HEAD_DIMS: checked before the device
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.fasttx, f"{name}_{direction}_cuda")(*args)


BAD_ATTENTION_INPUTS = {
    "float32": (_attention_args(dtype=torch.float32), "q must be float16 or bfloat16 .* got float32"),
    "3-D q": (_attention_args(q=torch.randn(4, 5, 64, dtype=torch.float16)), r"q must be 4-D \(B, H, L, E\)"),
    "k dtype": (_attention_args(k=torch.randn(2, 2, 7, 64, dtype=torch.bfloat16)), "k must have q's dtype float16"),
    "k batch": (_attention_args(k=torch.randn(1, 2, 7, 64, dtype=torch.float16)), r"k must be \(B, Hkv, S, E\)"),
    "v keys": (_attention_args(v=torch.randn(2, 2, 6, 64, dtype=torch.float16)), "v must be .* with k's B, Hkv, S"),
    "heads": (_attention_args(k=torch.randn(2, 3, 7, 64, dtype=torch.float16),
                              v=torch.randn(2, 3, 7, 64, dtype=torch.float16)), "H = 4 must be a multiple of .* Hkv = 3"),
    "head dim 80": (_attention_args(d=80),
                    re.escape(f"head dims E == Ev in {_attention_kernels.HEAD_DIMS}, got E = 80, Ev = 80")),
    "E != Ev": (_attention_args(v=torch.randn(2, 2, 7, 32, dtype=torch.float16)), "got E = 64, Ev = 32"),
    "strided last dim": (_attention_args(q=torch.randn(2, 4, 5, 128, dtype=torch.float16)[..., ::2]),
                         "q needs a contiguous last dim"),
    "mask shape": (_attention_args(mask=torch.ones(2, 1, 5, 6, dtype=torch.bool)),
                   r"mask must be 4-D and broadcastable to \(B, H, L, S\) = \[2, 4, 5, 7\]"),
    "mask dtype": (_attention_args(mask=torch.ones(1, 1, 5, 7, dtype=torch.int32)), "mask must be bool or floating"),
    "dropout_p": (_attention_args(dropout_p=1.0), r"dropout_p must be in \[0, 1\), got 1"),
    "no seed": (_attention_args(dropout_p=0.1), "seed .* is required when dropout_p > 0"),
    "seed dtype": (_attention_args(dropout_p=0.1, seed=torch.tensor(3)[None].float()), "seed must be an int64 tensor"),
}


@needs_nvcc
@pytest.mark.parametrize("case", BAD_ATTENTION_INPUTS)
def test_attention_binding_rejects_bad_inputs(case):
    """The binding's checks, which run before its device check: testable on CPU tensors."""
    args, message = BAD_ATTENTION_INPUTS[case]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fasttx.attention_fwd_cuda(*args)


@needs_nvcc
@pytest.mark.parametrize("head_dim", _attention_kernels.HEAD_DIMS)
def test_attention_binding_takes_built_head_dims_and_names_those_left_out(head_dim):
    """Every head dim of the list passes the binding's head-dim check (on CPU tensors, the device check
    is the next to fail) if the build has it; one left out of the build (FASTTX_ATTENTION_HEAD_DIMS=64,128,
    say) gets an error saying how to build it, from both ops. fasttx/functional/attention.py's own check
    of that case is tested against a faked list in tests/ops/test_attention.py."""
    built = _built_head_dims()
    message = "must be a CUDA tensor" if head_dim in built else re.escape(
        f"head dim E = {head_dim} was left out of this build of fasttx._C (it has ({', '.join(map(str, built))})): "
        f"rebuild it with FASTTX_ATTENTION_HEAD_DIMS unset (all head dims) or listing {head_dim}")
    q, k, v, *rest = _attention_args(d=head_dim)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fasttx.attention_fwd_cuda(q, k, v, *rest)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fasttx.attention_bwd_cuda(q, q, k, v, q, torch.zeros(q.shape[:3]), *rest)


@needs_nvcc
def test_attention_backward_binding_checks_its_extra_inputs():
    q, k, v, *rest = _attention_args()
    out, lse = torch.randn(2, 4, 5, 64, dtype=torch.float16), torch.randn(2, 4, 5)
    bwd = torch.ops.fasttx.attention_bwd_cuda
    with pytest.raises(RuntimeError, match=r"grad_out must be \(B, H, L, Ev\) = \[2, 4, 5, 64\], got \[2, 4, 5, 32\]"):
        bwd(out[..., :32], q, k, v, out, lse, *rest)
    with pytest.raises(RuntimeError, match="out must have q's dtype float16, got bfloat16"):
        bwd(out, q, k, v, out.bfloat16(), lse, *rest)
    with pytest.raises(RuntimeError, match=r"lse must be a contiguous float32 \(B, H, L\)"):
        bwd(out, q, k, v, out, lse.double(), *rest)


GROUPED_LOCALE = r"""
#include <locale>
#include <string>
// A locale as iostreams would use it: digits grouped by 3 with "'", "," as the decimal point.
struct Grouped : std::numpunct<char> {
  char do_thousands_sep() const override { return '\''; }
  std::string do_grouping() const override { return "\3"; }
  char do_decimal_point() const override { return ','; }
};
extern "C" void use_grouped_locale() { std::locale::global(std::locale(std::locale::classic(), new Grouped)); }
"""

CALL_UNDER_GROUPED_LOCALE = """
import ctypes, sys
import torch
from fasttx import _extension
assert _extension.load(allow_jit_build=False)[0]
ctypes.CDLL(sys.argv[1]).use_grouped_locale()
q, k = torch.randn(1, 2, 3, 64, dtype=torch.float16), torch.randn(1, 2, 1000, 64, dtype=torch.float16)
for mask, dropout_p in [(torch.ones(1, 1, 3, 999, dtype=torch.bool), 0.0), (None, 1.5)]:
    try:
        torch.ops.fasttx.attention_fwd_cuda(q, k, k, mask, 0.125, False, dropout_p, None)
    except RuntimeError as error:
        print(str(error).splitlines()[0])
"""


@needs_nvcc
def test_messages_format_numbers_without_the_cpp_locale(tmp_path):
    """The bindings format the numbers and shapes of their messages without iostreams, whose number
    formatting reads the process-wide C++ locale: on the first GPU run, every check whose message
    streamed a number crashed the process. Here a locale that iostreams would honour ("1'000", "1,5")
    is installed in a fresh process (not this one), and the messages must not change."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    (tmp_path / "grouped.cpp").write_text(GROUPED_LOCALE)
    library = tmp_path / "libgrouped.so"
    subprocess.run([cxx, "-shared", "-fPIC", "-O1", str(tmp_path / "grouped.cpp"), "-o", str(library)], check=True)
    result = subprocess.run([sys.executable, "-c", CALL_UNDER_GROUPED_LOCALE, str(library)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.endswith("mask must be 4-D and broadcastable to (B, H, L, S) = [1, 2, 3, 1000] (each dim 1 or equal), "
                          "got shape [1, 1, 3, 999]"), first
    assert first.startswith("fasttx::attention_fwd_cuda: "), first
    assert second.endswith("dropout_p must be in [0, 1), got 1.5"), second


def test_info_names_the_extension_state():
    assert "cuda extension" in fasttx.info()


def _ptxas_table():
    """tools/ptxas_table.py, which writes the register tables of csrc/README.md and csrc/attention/README.md."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ptxas_table", os.path.join(ROOT, "tools", "ptxas_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Captured from nvcc 13.0 -Xptxas -v (attention_bwd_hdim128.cu, softmax_fwd.cu), plus a non-entry
# function's properties (a device function ptxas did not inline), which belong to no kernel.
PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb1ELi3EEEvNS_15AttentionParamsE' for 'sm_80'
ptxas info    : Function properties for _ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb1ELi3EEEvNS_15AttentionParamsE
    24 bytes stack frame, 20 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size, 656 bytes cmem[0]
ptxas info    : Compile time = 932.027 ms
ptxas info    : Compiling entry function '_ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb0ELi3EEEvNS_15AttentionParamsE' for 'sm_90a'
ptxas info    : Function properties for _ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb0ELi3EEEvNS_15AttentionParamsE
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _Z6helperf
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 254 registers, used 1 barriers, 656 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN6fasttx47_GLOBAL__N__4aaf383c_14_softmax_fwd_cu_9b2707f918softmax_fwd_kernelI13__nv_bfloat16S2_S2_Lb0EEEvNS_16SoftmaxFwdParamsEi' for 'sm_80'
ptxas info    : Function properties for _ZN6fasttx47_GLOBAL__N__4aaf383c_14_softmax_fwd_cu_9b2707f918softmax_fwd_kernelI13__nv_bfloat16S2_S2_Lb0EEEvNS_16SoftmaxFwdParamsEi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 106 registers, used 1 barriers, 128 bytes smem, 468 bytes cmem[0]
ptxas info    : Compile time = 70.908 ms
"""
PTXAS_SAMPLE_NAMES = {  # c++filt of the sample's names
    "_ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb1ELi3EEEvNS_15AttentionParamsE":
        "void fasttx::attn::attention_bwd_kv_kernel<__half, 128, true, 3>(fasttx::AttentionParams)",
    "_ZN6fasttx4attn23attention_bwd_kv_kernelI6__halfLi128ELb0ELi3EEEvNS_15AttentionParamsE":
        "void fasttx::attn::attention_bwd_kv_kernel<__half, 128, false, 3>(fasttx::AttentionParams)",
    "_ZN6fasttx47_GLOBAL__N__4aaf383c_14_softmax_fwd_cu_9b2707f918softmax_fwd_kernelI13__nv_bfloat16S2_S2_Lb0EEEvNS_16SoftmaxFwdParamsEi":
        "void fasttx::(anonymous namespace)::softmax_fwd_kernel<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, false>"
        "(fasttx::SoftmaxFwdParams, int)",
}


def test_ptxas_table_parses_and_groups_ptxas_output():
    """The parser of tools/ptxas_table.py on captured ptxas -v text (no compile: that takes minutes),
    and the grouping into the README tables."""
    table = _ptxas_table()
    kernels = table.parse_ptxas(PTXAS_SAMPLE)
    kv_causal, kv, softmax = PTXAS_SAMPLE_NAMES
    assert kernels == [
        table.Kernel(kv_causal, "sm_80", registers=255, spill_stores=20, spill_loads=40, smem=0),
        table.Kernel(kv, "sm_90a", registers=254, spill_stores=0, spill_loads=0, smem=0),
        table.Kernel(softmax, "sm_80", registers=106, spill_stores=0, spill_loads=0, smem=128),
    ]
    attention = table.render(table.FAMILIES["attention"], kernels[:2], PTXAS_SAMPLE_NAMES).splitlines()
    assert attention[0] == "| kernel | E = 128 |"
    assert attention[3] == "| dK/dV | 254-255; spills 20/40 B in 1 of 1 (sm_80) |"
    assert attention[2] == "| forward | - |"
    softmax_rows = table.render(table.FAMILIES["softmax"], kernels[2:], PTXAS_SAMPLE_NAMES).splitlines()
    assert softmax_rows[0] == "| kernel | sm_80 | sm_90a |"
    assert softmax_rows[4] == "| forward, float mask | 106, smem 128 B | - |"

    readme = "intro\n<!-- ptxas-table softmax -->\nstale\n<!-- /ptxas-table -->\nrest\n"
    text, families = table.replace_sections(readme, {"softmax": "fresh\n"})
    assert text == "intro\n<!-- ptxas-table softmax -->\nfresh\n<!-- /ptxas-table -->\nrest\n"
    assert families == {"softmax"}
    with pytest.raises(SystemExit, match="unknown kernel family 'softmax'"):
        table.replace_sections(readme, {"attention": "fresh\n"})
    # It compiles as setup.py builds: fasttx/_build.py's flags and architectures.
    command = table.nvcc_command("x.cu", "sm_90a", "x.cubin")
    assert all(flag in command for flag in _build.NVCC_FLAGS) and "--expt-relaxed-constexpr" in command
    assert table.ARCHS == ("sm_80", "sm_90a") and _build.DEFAULT_ARCH_LIST == "8.0;9.0a"


@pytest.mark.parametrize("name,row", [
    ("attention_fwd_sm90_kernel<__nv_bfloat16, 128, true>(fasttx::attn::Sm90FwdParams)", "forward"),
    ("attention_bwd_kv_sm90_kernel<__half, 128, false>(fasttx::attn::Sm90BwdParams)", "dK/dV"),
])
def test_ptxas_table_leaves_out_the_sm90_stubs(name, row):
    """The sm_90a attention kernels' sm_80 instances are trapping stubs: not a row entry."""
    table = _ptxas_table()
    name = "fasttx::attn::" + name
    kernels = [table.Kernel("stub", "sm_80", 4, 0, 0, 0), table.Kernel("real", "sm_90a", 168, 0, 0, 0)]
    rows = table.render(table.FAMILIES["attention"], kernels, {"stub": name, "real": name}).splitlines()
    assert f"| {row}, sm_90a (FlashAttention-3 scheme) | 168 |" in rows


def test_ptxas_table_gives_the_norm_split_instances_an_sm90_row():
    """The norm kernels' instances for rows split over a cluster (kSplit, their last template argument) are
    a row of their own, on sm_90a only: their sm_80 build is a trap."""
    table = _ptxas_table()
    split = ("void fasttx::(anonymous namespace)::norm_bwd_kernel<false, __half, __half, true, true>"
             "(fasttx::NormBwdParams, int, int)")
    names = {"split": split, "walk": split.replace("true, true>", "true, false>")}
    kernels = [table.Kernel("split", "sm_80", 4, 0, 0, 0), table.Kernel("split", "sm_90a", 128, 0, 0, 0),
               table.Kernel("walk", "sm_80", 126, 0, 0, 0), table.Kernel("walk", "sm_90a", 127, 0, 0, 0)]
    rows = table.render(table.FAMILIES["layer_norm"], kernels, names).splitlines()
    assert "| backward: dx, dw, db partial sums | 126 | 127 |" in rows
    assert "| backward: dx, dw, db partial sums, rows split over a cluster | - | 128 |" in rows


def _generator():
    """csrc/attention/generate_kernels.py, which writes the per-head-dim files from fasttx/_attention_kernels.py."""
    import importlib.util

    path = os.path.join(ROOT, "csrc", "attention", "generate_kernels.py")
    spec = importlib.util.spec_from_file_location("generate_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_attention_files_are_current():
    generator = _generator()
    assert generator.problems(ROOT, generator.generate(_attention_kernels.HEAD_DIMS,
                                                       _attention_kernels.SM90_HEAD_DIMS)) == []
    script = os.path.join(ROOT, "csrc", "attention", "generate_kernels.py")
    result = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_generator_check_fails_when_the_list_changes_without_regenerating():
    generator = _generator()
    sm90 = _attention_kernels.SM90_HEAD_DIMS
    added = generator.problems(ROOT, generator.generate((*_attention_kernels.HEAD_DIMS, 80), sm90))
    assert added == ["csrc/attention/attention_bwd_hdim80.cu: missing",
                     "csrc/attention/attention_fwd_hdim80.cu: missing",
                     "csrc/attention/attention_kernels.h: differs from what the list generates",
                     "tests/attention_emulator/attention_kernels.inc: differs from what the list generates"]
    last = _attention_kernels.HEAD_DIMS[-1]
    dropped = generator.problems(ROOT, generator.generate(_attention_kernels.HEAD_DIMS[:-1],
                                                          {kernel: dims[:-1] for kernel, dims in sm90.items()}))
    assert f"csrc/attention/attention_fwd_hdim{last}.cu: its head dim is not in the list" in dropped
    assert f"csrc/attention/attention_bwd_hdim{last}.cu: its head dim is not in the list" in dropped
    # The sm_90a kernels' lists: a head dim added to one kernel, one dropped from another.
    changed = generator.problems(ROOT, generator.generate(_attention_kernels.HEAD_DIMS,
                                                          {**sm90, "bwd_kvq": (*sm90["bwd_kvq"], 32),
                                                           "fwd": sm90["fwd"][1:]}))
    first = sm90["fwd"][0]
    assert changed == ["csrc/attention/sm90/attention_bwd_kvq_sm90_hdim32.cu: missing",
                       "csrc/attention/sm90/attention_sm90_kernels.h: differs from what the list generates",
                       "tests/attention_emulator/attention_sm90_bwd_kernels.inc: differs from what the list generates",
                       "tests/attention_emulator/attention_sm90_fwd_kernels.inc: differs from what the list generates",
                       f"csrc/attention/sm90/attention_fwd_sm90_hdim{first}.cu: its head dim is not in the list"]
    with pytest.raises(ValueError, match=r"SM90_HEAD_DIMS: .*unknown head dims \{'fwd': \[80\]\}"):
        generator.generate(_attention_kernels.HEAD_DIMS, {**sm90, "fwd": (64, 80)})
    with pytest.raises(ValueError, match=r"SM90_HEAD_DIMS: the kernels are \['bwd_kv', 'bwd_kvq', 'bwd_q', 'fwd'\]"):
        generator.generate(_attention_kernels.HEAD_DIMS, {"fwd": (64,)})


def test_generator_writes_the_list_and_removes_dropped_head_dims(tmp_path):
    generator = _generator()
    (tmp_path / "csrc" / "attention" / "sm90").mkdir(parents=True)
    (tmp_path / "tests" / "attention_emulator").mkdir(parents=True)
    both = {"fwd": (32, 64), "bwd_kv": (64,), "bwd_q": (64,), "bwd_kvq": (32, 64)}
    generator.write(str(tmp_path), generator.generate((32, 64), both))
    one = {kernel: (64,) for kernel in both}
    generator.write(str(tmp_path), generator.generate((64,), one))
    assert generator.problems(str(tmp_path), generator.generate((64,), one)) == []
    assert sorted(os.listdir(tmp_path / "csrc" / "attention")) == [
        "attention_bwd_hdim64.cu", "attention_fwd_hdim64.cu", "attention_kernels.h", "sm90"]
    assert sorted(os.listdir(tmp_path / "csrc" / "attention" / "sm90")) == [
        "attention_bwd_kv_sm90_hdim64.cu", "attention_bwd_kvq_sm90_hdim64.cu", "attention_bwd_q_sm90_hdim64.cu",
        "attention_fwd_sm90_hdim64.cu", "attention_sm90_kernels.h"]
    text = (tmp_path / "csrc" / "attention" / "attention_bwd_hdim64.cu").read_text()
    assert "template bool attention_bwd_hdim<64>(const AttentionBwdParams& p, cudaStream_t stream);" in text
    text = (tmp_path / "csrc" / "attention" / "sm90" / "attention_bwd_kvq_sm90_hdim64.cu").read_text()
    assert '#include "attention/sm90/attention_bwd_sm90.cuh"' in text
    assert "template bool attention_bwd_kvq_sm90_hdim<64>(const AttentionBwdParams& p, cudaStream_t stream);" in text
    header = (tmp_path / "csrc" / "attention" / "attention_kernels.h").read_text()
    assert "constexpr int kAttentionHeadDims[] = {64};" in header
    assert ("using AttentionBuiltHeadDims = std::integer_sequence<int\n#ifndef FASTTX_ATTENTION_SKIP_HDIM64\n    , 64\n"
            "#endif\n    >;") in header
    header = (tmp_path / "csrc" / "attention" / "sm90" / "attention_sm90_kernels.h").read_text()
    assert ("using Sm90BwdKvqHeadDims = std::integer_sequence<int\n#ifndef FASTTX_ATTENTION_SKIP_HDIM64\n    , 64\n"
            "#endif\n    >;") in header


def test_build_flag_selects_head_dims():
    """FASTTX_ATTENTION_HEAD_DIMS as setup.py reads it."""
    build = _attention_kernels.build_head_dims
    assert build(None) == build(" ") == _attention_kernels.HEAD_DIMS
    assert build("128, 64") == (64, 128)
    with pytest.raises(ValueError, match=r"FASTTX_ATTENTION_HEAD_DIMS='64,80': no kernels for head dims \[80\]"):
        build("64,80")
    with pytest.raises(ValueError, match="expected comma-separated head dims"):
        build("64;128")


def test_build_sources_and_flags_follow_the_head_dims_asked_for():
    """fasttx/_build.py, what setup.py and the first-use build compile: every csrc file and no define by
    default; with FASTTX_ATTENTION_HEAD_DIMS, none of the files of the head dims left out, and their
    FASTTX_ATTENTION_SKIP_HDIM<E> for both compilers."""
    sources, flags, left_out = _build.extension_build(ROOT, {})
    on_disk = sorted(os.path.relpath(os.path.join(d, f), ROOT) for d, _, files in os.walk(os.path.join(ROOT, "csrc"))
                     for f in files if f.endswith((".cu", ".cpp")))
    assert sources == on_disk and left_out == []
    assert flags == {"cxx": list(_build.CXX_FLAGS), "nvcc": list(_build.NVCC_FLAGS)}

    sources, flags, left_out = _build.extension_build(ROOT, {_attention_kernels.BUILD_ENV: "128,64"})
    assert left_out == [d for d in _attention_kernels.HEAD_DIMS if d not in (64, 128)] and left_out
    dropped = {s for s in on_disk if re.search(r"_hdim(%s)\.cu$" % "|".join(map(str, left_out)), s)}
    assert dropped and sorted(set(on_disk) - dropped) == sources
    assert "csrc/attention/sm90/attention_fwd_sm90_hdim128.cu" in sources
    defines = [f"-DFASTTX_ATTENTION_SKIP_HDIM{d}" for d in left_out]
    assert flags == {"cxx": [*_build.CXX_FLAGS, *defines], "nvcc": [*_build.NVCC_FLAGS, *defines]}
    with pytest.raises(ValueError, match="no kernels for head dims"):
        _build.extension_build(ROOT, {_attention_kernels.BUILD_ENV: "80"})


def test_first_use_build_compiles_as_setup_py_does(monkeypatch):
    """fasttx/_extension.py's torch.utils.cpp_extension.load call: _build's sources (absolute) and flags,
    FASTTX_ATTENTION_HEAD_DIMS honoured, and 9.0a for an H100/H200 where TORCH_CUDA_ARCH_LIST is unset
    (torch would guess 9.0, without the sm_90a kernels); the variable is restored after."""
    import torch.utils.cpp_extension

    calls = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load",
                        lambda **kw: calls.append((kw, os.environ.get("TORCH_CUDA_ARCH_LIST"))))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv(_attention_kernels.BUILD_ENV, "64")
    with pytest.warns(UserWarning, match="compiling it now"):
        _extension._jit_build()
    (kwargs, arch_list), = calls
    sources, flags, _ = _build.extension_build(ROOT, {_attention_kernels.BUILD_ENV: "64"})
    assert kwargs["sources"] == [os.path.join(ROOT, s) for s in sources]
    assert (kwargs["extra_cflags"], kwargs["extra_cuda_cflags"]) == (flags["cxx"], flags["nvcc"])
    assert arch_list == "9.0a" and "TORCH_CUDA_ARCH_LIST" not in os.environ

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    with pytest.warns(UserWarning):
        _extension._jit_build()
    assert calls[-1][1] == "8.6"


def test_first_use_build_architectures():
    assert _build.arch_list_for([(9, 0), (8, 0), (9, 0)]) == "8.0;9.0a"
    assert _build.arch_list_for([(8, 6)]) == "8.6"
    assert _build.arch_list_for([(10, 0)]) == "10.0"
