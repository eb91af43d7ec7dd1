"""benchmarks/kernel_report.py: the Triton kernels compiled for sm_90a without a GPU, and what their code
shows (registers, spills, shared memory, global access widths, async copies, MMAs, pipelining).

Its --quick subset runs in a subprocess without TRITON_INTERPRET (the interpreter replaces the kernels);
the figures are checked against each other and against what the launch configurations imply, so a
report that invents or misreads them fails here."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import triton

ROOT = pathlib.Path(__file__).parents[1]


def report_module():
    try:
        from fasttx.benchmarks import kernel_report
    except ImportError as e:  # Triton internals that tests/ops/compile_attention.py uses moved
        pytest.skip(f"triton {triton.__version__} lacks what kernel_report uses: {e}")
    return kernel_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    kernel_report = report_module()
    out = tmp_path_factory.mktemp("kernel-report")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fasttx.benchmarks.kernel_report", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if done.returncode == kernel_report.UNSUPPORTED:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads((out / "kernel_report.json").read_text())
    return data, (out / "kernel_report.md").read_text()


def entry(kernels, name, **case):
    found = [k for k in kernels if k["kernel"] == name and all(k["case"].get(c) == v for c, v in case.items())]
    assert len(found) == 1, (name, case, [k["case"] for k in kernels if k["kernel"] == name])
    return found[0]


def test_ptx_reading():
    """The PTX forms Triton emits: predicated, cache-hinted, vector loads; hex cp.async sizes; TTGIR buffers."""
    facts = report_module().ptx_facts(
        "@%p1 ld.global.L1::evict_last.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n"
        "ld.global.nc.b16 %rs1, [ %rd2 + 0 ];\n"
        "st.global.v2.b32 [ %rd3 + 0 ], { %r1, %r2 };\n"
        "cp.async.cg.shared.global [ %r5 + 0 ], [ %rd4 + 0 ], 0x10, %r6;\n"
        "cp.async.commit_group;\ncp.async.wait_group 2;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n",
        "%k = ttg.local_alloc : () -> !ttg.memdesc<3x64x128xbf16, #shared, #smem, mutable> loc(#loc1)\n"
        "%q = ttg.local_alloc %q0 : (tensor<128x128xbf16, #blocked>) -> !ttg.memdesc<128x128xbf16, #shared, #smem>\n")
    assert facts["global_loads"] == {"v4.b32": 1, "b16": 1} and facts["load_bytes"] == [2, 16]
    assert facts["global_stores"] == {"v2.b32": 1} and facts["store_bytes"] == [8]
    assert facts["cp_async"] == {"16B": 1} and facts["wgmma"] == 1 and facts["mma_sync"] == 0
    assert facts["mma_shapes"] == {"m64n64k16": 1}
    assert facts["smem_buffers"] == [3] and facts["pipelined"]
    # TMA's forms: a tile held in one buffer and the mbarriers are no pipeline stages; the mbarrier wait is.
    facts = report_module().ptx_facts(
        "cp.async.bulk.tensor.4d.shared::cta.global.mbarrier::complete_tx::bytes [%r1], [%rd1, {%r2, %r3, %r4, %r5}],"
        " [%r6];\nmbarrier.try_wait.parity.shared::cta.b64 %p1, [%r6], %r7;\n",
        "%q = ttg.local_alloc : () -> !ttg.memdesc<128x128xbf16, #shared1, #smem, mutable>\n"
        "%b = ttg.local_alloc : () -> !ttg.memdesc<3x1xi64, #shared2, #smem, mutable>\n"
        "%k = ttg.local_alloc : () -> !ttg.memdesc<3x64x128xbf16, #shared1, #smem, mutable>\n")
    assert facts["tma"] == 1 and facts["barrier_waits"] == 1 and facts["wait_groups"] == 0
    assert facts["smem_buffers"] == [3] and facts["pipelined"]


def test_quick_report_compiles_every_family(report):
    data, md = report
    kernels = data["kernels"]
    assert {k["kernel"] for k in kernels} >= {"layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd",
                                              "softmax_fwd", "softmax_bwd", "attn_fwd", "attn_bwd_kv", "attn_bwd_q"}
    # One table row per kernel: the rows start with the kernel's name.
    assert sum(line.startswith(("| layer_norm", "| rms_norm", "| softmax", "| attn")) for line in md.splitlines()) \
        == len(kernels)
    assert data["meta"]["triton"] == triton.__version__


def test_registers_and_spills_agree_with_the_cubin(report):
    """Registers come from the cubin Triton built; spill bytes from ptxas -v rerun on its PTX. Where the
    rerun reproduces the cubin, ptxas's spill stores and the SASS's local stores (STL) agree; and no
    local-memory traffic without a stack frame."""
    for k in report[0]["kernels"]:
        assert 0 < k["registers"] <= 255, k
        assert k["stack_bytes"] > 0 or k["local_stores"] == k["local_loads"] == 0, k
        if k["ptxas_rerun_reproduces"]:
            assert (k["spill_store_bytes"] > 0) == (k["local_stores"] > 0), k
            assert (k["spill_load_bytes"] > 0) == (k["local_loads"] > 0), k


def test_attention_uses_tensor_cores_and_pipelines(report):
    fwd = entry(report[0]["kernels"], "attn_fwd", head_dim=128, dtype="bfloat16", mask="none", causal=False,
                path="tma")
    assert fwd["wgmma"] + fwd["mma_sync"] > 0
    # On sm_90 TMA moves q, k, v (and o): no cp.async is left, and the loop waits on mbarriers.
    assert fwd["pipelined"] and fwd["tma"] and not fwd["cp_async"] and fwd["barrier_waits"]
    # The q tile and the streamed k / v stages live in shared memory.
    assert fwd["shared"] >= 128 * 128 * 2


def test_row_kernels_load_16_bytes_a_thread(report):
    """At hidden / columns 4096 in bf16, row_block gives 16 warps 8 elements a thread: one 16-byte access."""
    kernels = report[0]["kernels"]
    for name in ("layer_norm_fwd", "rms_norm_fwd", "layer_norm_bwd"):
        k = entry(kernels, name, hidden=4096)
        assert k["num_warps"] == 16 and 16 in k["load_bytes"] and 16 in k["store_bytes"], k
    # The backward's row loop is software-pipelined (the next rows' x, dy copied while one reduces).
    assert entry(kernels, "layer_norm_bwd", hidden=4096)["pipelined"]
    k = entry(kernels, "softmax_fwd", cols=4096, mask="none", causal=False)
    assert k["load_bytes"] == [16] and k["store_bytes"] == [16], k
    # Causal rows too: their loads stop at a multiple of 16 columns, so Triton can prove 16-byte
    # alignment (they were scalar 2-byte loads while they stopped at the row's last kept column).
    causal = entry(kernels, "softmax_fwd", cols=4096, mask="none", causal=True)
    assert causal["load_bytes"] == [16], causal


def test_wide_norm_backward_pipelines_its_column_loops(report):
    """Rows past the one-block limit (16384): the backward's column loops are pipelined, in blocks small
    enough that no register spills and at least four programs share an SM (one did with 8192-column blocks)."""
    from fasttx.triton_kernels import layer_norm

    for name in ("layer_norm_bwd", "rms_norm_bwd"):
        k = entry(report[0]["kernels"], name, hidden=16384)
        assert k["config"]["BLOCK_N"] == layer_norm.BWD_LOOP_BLOCK and k["pipelined"], k
        assert k["spill_store_bytes"] == 0 and k["config"]["programs_per_sm"] >= 4, k
        assert k["cp_async"] and 16 in k["store_bytes"], k


@pytest.mark.parametrize("regs, warps, shared, expected", [
    (64, 16, 32856, 2),  # registers allow two 512-thread programs (64 x 512 x 2 = 64K)
    (90, 16, 16384, 1),  # 90 registers: one
    (63, 4, 8232, 8),  # 63 round up to 64 a thread (256 a warp): eight 4-warp programs
    (255, 1, 0, 8),  # 255 round up to 256: 8192 a warp, eight of them in 64K
    (32, 4, 120000, 1),  # shared memory the limit: 2 x (120000 + 1024 reserved) > 228 KiB
    (16, 1, 0, 32),  # the hardware's cap on resident programs
])
def test_resident_programs_with_h200_limits(regs, warps, shared, expected):
    """The arithmetic the norm backward's launcher (programs_per_sm, on the GPU) and the report (from the
    cubin's registers) share, with the H200 limits the report uses."""
    from fasttx.triton_kernels import utils

    assert utils.resident_programs(regs, shared, warps, report_module().H200) == expected


def test_norm_backward_grid_is_one_wave_of_its_compiled_kernel(report):
    """The report's programs for the persistent norm backward: 132 SMs times the programs one holds with
    the compiled kernel's registers, shared memory and warps, each program a contiguous share of the rows."""
    from fasttx.triton_kernels import utils

    kernel_report = report_module()
    backwards = [k for k in report[0]["kernels"] if k["kernel"] in ("layer_norm_bwd", "rms_norm_bwd")]
    assert len(backwards) == 2 * len(kernel_report.NORM_HIDDEN["quick"])
    for k in backwards:
        config = k["config"]
        assert config["programs_per_sm"] == utils.resident_programs(k["registers"], k["shared"], k["num_warps"],
                                                                    kernel_report.H200), k
        rows = config["rows_per_program"]
        assert config["programs"] <= kernel_report.H200_SMS * config["programs_per_sm"], k
        assert (config["programs"] - 1) * rows < kernel_report.NORM_ROWS <= config["programs"] * rows, k
    assert "programs_per_sm=" in report[1]
