"""Attention hazards that only a compiled GPU run would show, tested here on what decides them: the
launch grid (CUDA caps grid dims 1 and 2 at 65535), Triton's specialization key (a recompile per key),
the autotuning key, the shared-memory pruning of the configs, the dropout seed under CUDA graphs and
int64 offsets of views past 2^31 elements. The few tests that need the GPU itself skip elsewhere."""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import triton

import fasttx
from fasttx import _ops
from fasttx.triton_kernels import attention_bwd, attention_common, attention_fwd

from ..conftest import DEVICE
from .test_attention import KERNEL_BACKENDS, attention_inputs, check

# (space, shared-memory model, wrong configs): what each kernel's autotuner is built from.
SPACES = {
    "fwd": attention_fwd.FWD_TUNING,
    "bwd_kv": attention_bwd.BWD_KV_TUNING,
    "bwd_q": attention_bwd.BWD_Q_TUNING,
    "bwd_atomic": attention_bwd.BWD_ATOMIC_TUNING,
}
H100_SHARED_MEMORY = 227 * 1024  # also H200's: the limit its OutOfResources errors name (232448)
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU: checks a limit of real launches")


# ---- grid -----------------------------------------------------------------------------------------


def test_grid_puts_batch_heads_on_dim_0():
    # B = 4097, H = 16: 65552 batch-heads, past the 65535 of grid dims 1 and 2.
    grid = attention_common.launch_grid(100, 16, 4097 * 16)
    assert grid == (7 * 4097 * 16,)
    assert attention_common.launch_grid(0, 16, 8) == (0,)


def test_grid_past_cuda_limit_is_an_error():
    with pytest.raises(ValueError, match="more than CUDA's 2147483647"):
        attention_common.launch_grid(2**20, 16, 2**18)


def test_programs_find_their_batch_head_and_block():
    """Many batch-heads of several query and key blocks (the interpreter runs 16-row blocks): every
    program reads and writes its own rows, forward, dK/dV (per kv head) and dQ."""
    q, k, v = attention_inputs(7, 4, 2, 37, 21, 16, dtype=torch.float32)
    check(q, k, v, "triton", enable_gqa=True)


@needs_cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_more_batch_heads_than_grid_dim_1_takes(backend):
    q, k, v = attention_inputs(4097, 16, 16, 16, 16, 32, dtype=torch.float16)
    check(q, k, v, backend)



@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_zero_keys_run_one_fully_masked_block(mask, is_causal):
    """attention_common.key_blocks makes the kernels' loop over key blocks run at least once (ptxas
    serializes the wgmma otherwise): at S = 0, a block of keys all past S, which must add nothing, with
    dropout too."""
    q, k, v = attention_inputs(2, 3, 3, 5, 0, 16, dtype=torch.float32)
    attn_mask = {None: None, "bool": torch.ones(1, 1, 5, 0, dtype=torch.bool, device=DEVICE),
                 "float": torch.zeros(1, 1, 5, 0, device=DEVICE)}[mask]
    seed = torch.tensor(3, device=DEVICE)
    o, lse = attention_fwd.attention_fwd(q, k, v, attn_mask, 0.25, is_causal, 0.1, seed)
    assert (o == 0).all() and (lse == float("inf")).all()
    dq, dk, dv = attention_bwd.attention_bwd(torch.randn_like(o), q, k, v, o, lse, attn_mask, 0.25, is_causal, 0.1,
                                             seed)
    assert (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape

# ---- specialization: one compiled kernel whatever the seed -----------------------------------------


def compile_tools():
    """tests/ops/compile_attention.py, which uses Triton internals (they change between versions)."""
    try:
        from . import compile_attention
    except ImportError as e:
        pytest.skip(f"triton {triton.__version__} lacks what compile_attention uses: {e}")
    return compile_attention


def specialization(kernel, **kwargs):
    return compile_tools().specialization(kernel, **kwargs)


def fwd_call(seed, L=48, S=40, dropout_p=0.1):
    """A forward launch's arguments, on the pointer path wherever the tests run (on sm_90 the launchers
    would pass descriptors: the same scalar arguments, which these tests are about)."""
    q, k, v = attention_inputs(1, 2, 2, L, S, 16)
    args = attention_common.kernel_args(q, k, v, None, seed, 0.25, False, dropout_p, tma=False)
    return dict(O=torch.empty_like(q), LSE=torch.empty(q.shape[:3]), BLOCK_M=16, BLOCK_N=16, **args)


def test_specialization_detects_an_int_seed():
    """What the next test relies on: Triton specialises an int argument on its divisibility by 16 and
    on the value 1."""
    @triton.jit
    def int_seed(X, seed):
        pass

    keys = [specialization(int_seed, X=torch.empty(1), seed=s) for s in (17, 16, 1)]
    assert keys[0] != keys[1] and keys[0] != keys[2]


# (seed, dropout_p) of two launches: seeds and drop thresholds (dropout_threshold: 6554, 1, 16) of
# every divisibility.
@pytest.mark.parametrize("calls", [((17, 0.1), (16, 0.1)), ((17, 0.1), (1, 0.1)), ((2**40 + 1, 0.1), (2**40, 0.1)),
                                   ((17, 0.1), (17, 2**-16)), ((17, 0.1), (17, 2**-12))], ids=str)
def test_seed_and_dropout_p_never_specialise_the_kernels(calls):
    """The seed is read from a tensor and the drop threshold is do_not_specialize: seeds and dropout_p
    of any divisibility launch the same compiled kernels."""
    first, second = (fwd_call(torch.tensor(s), dropout_p=p) for s, p in calls)
    kernel = attention_fwd._attn_fwd_kernel
    assert specialization(kernel, **first) == specialization(kernel, **second)
    bwd = []
    for call in (first, second):
        grads = dict(DO=call.pop("O"), Delta=call["LSE"], do_strides=call["Q"].stride()[:3], scale=0.25)
        bwd.append(dict(call, **grads))
    kernel = attention_bwd._attn_bwd_kv_kernel
    kv = [specialization(kernel, DK=call["K"], DV=call["V"], DQ=dq_sum, ATOMIC_DQ=atomic, **call)
          for call in bwd for dq_sum, atomic in ((None, False), (torch.empty(call["Q"].shape), True))]
    kernel = attention_bwd._attn_bwd_q_kernel
    dq = [specialization(kernel, DQ=call["Q"], **call) for call in bwd]
    assert kv[:2] == kv[2:] and dq[0] == dq[1]


def test_kernels_compile_for_sm90_within_their_shared_memory_model():
    """Compiled, not interpreted (Triton's compiler and ptxas run without a GPU): every kernel in each
    mask kind, causal and dropout, at its largest tiles; the shared memory each takes is at most what
    its model, which prunes the configs, says."""
    compile_attention = compile_tools()
    results = run_compile_attention(compile_attention)
    assert len(results) == len(compile_attention.VARIANTS)
    for r in results:
        assert 0 < r["shared"] <= r["model"], r


def test_ptxas_never_serializes_the_matrix_products():
    """ptxas's warning C7515 ("wgmma.mma_async instructions are serialized ...") on the forward or the dQ
    kernel as the benchmarks run them (bf16, head dim 128, causal or not) means the softmax never
    overlaps the tensor-core products: measured at 0.70-0.75x cuDNN's forward on an H200 with it
    (benchmarks/notes/attention.md). Its cause, a second loop over the checked key blocks, is in
    attention_common.score_block."""
    compile_attention = compile_tools()
    results = run_compile_attention(compile_attention, "--ptxas")
    assert len(results) == len(compile_attention.PTXAS_CHECKS)
    for r in results:
        assert r["registers"], f"no ptxas log captured: {r}"  # the check below would pass on an empty log
        assert "C7515" not in r["warnings"], r


def run_compile_attention(compile_attention, *args):
    """The JSON lines of tests/ops/compile_attention.py run compiled (without the interpreter); a skip
    where this Triton cannot compile for sm_90a here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.ops.compile_attention", *args], capture_output=True,
                          text=True, env=env, cwd=pathlib.Path(__file__).parents[2], timeout=1200)
    if done.returncode == compile_attention.UNSUPPORTED:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


# ---- autotuning key ---------------------------------------------------------------------------------


def test_autotune_key_buckets_sequence_lengths():
    bucket = attention_common.seq_bucket
    assert [bucket(n) for n in (1, 16, 17, 100, 128, 129, 4096, 10**6)] == [16, 16, 32, 128, 128, 256, 4096, 16384]
    for tuner in (attention_fwd._attn_fwd, attention_bwd._attn_bwd_kv, attention_bwd._attn_bwd_q,
                  attention_bwd._attn_bwd_atomic):
        assert "seq_buckets" in tuner.keys
    assert fwd_call(None, L=100, S=3000, dropout_p=0.0)["seq_buckets"] == (128, 4096)


def test_sequence_buckets_never_specialise_the_kernels():
    """Only the autotuner reads the buckets: lengths of other buckets (but the same divisibility) run
    the same compiled kernel."""
    short, long = fwd_call(None, L=32, S=32, dropout_p=0.0), fwd_call(None, L=2048, S=4096, dropout_p=0.0)
    assert short["seq_buckets"] != long["seq_buckets"]
    long["sizes"] = short["sizes"]
    long["strides"] = short["strides"]
    keys = [specialization(attention_fwd._attn_fwd_kernel, **call) for call in (short, long)]
    assert keys[0] == keys[1]


# ---- shared memory ------------------------------------------------------------------------------


def test_shared_memory_models_match_compiled_kernels():
    """Figures of Triton 3.8 compiling for sm_90a (fp16, E = 128, a (B, 1, L, S) mask, its last
    stride 1): the models count exactly what it allocated (dK/dV: 256 B more)."""
    fwd, kv, q = (SPACES[name][1] for name in ("fwd", "bwd_kv", "bwd_q"))

    def tile(block_m, block_n, stages, mask_bytes):  # a (B, 1, L, S) mask's buffers
        return attention_common.mask_buffer_bytes(block_m, block_n, stages, mask_bytes, False)

    assert fwd(128, 128, 3, 128, 128, 2) == 229376  # 3 KB below the 227 KB of H100
    assert fwd(128, 128, 3, 128, 128, 2) + tile(128, 128, 3, 4) == 360448
    assert fwd(128, 64, 3, 128, 128, 2) + tile(128, 64, 3, 4) == 196608
    assert kv(32, 128, 3, 128, 128, 2) - 256 == 115200
    assert kv(32, 128, 3, 128, 128, 2) + tile(32, 128, 3, 4) - 256 == 147968
    assert q(128, 64, 2, 128, 128, 2) + tile(128, 64, 2, 4) == 163840
    atomic = SPACES["bwd_atomic"][1]  # an upper bound: exact, less dK/dV's 256 B, where it was fitted
    assert atomic(32, 64, 3, 128, 128, 2) - 256 == 107008
    assert atomic(64, 64, 2, 128, 128, 2) - 512 == 131584


@pytest.mark.parametrize("name", SPACES)
def test_configs_fit_shared_memory_with_any_mask(name):
    """Without a mask every listed config fits its model at its key's head dims, so all are kept;
    with any mask some fit, with fewer stages where the mask's pipeline buffers need it."""
    space, model, _ = SPACES[name]
    for (head_dim, fp32), configs in space.items():
        dtype_bytes = 4 if fp32 else 2
        for mask_bytes in (0, 1, 2, 4, 8):
            kept = attention_common.space_configs(space, model, head_dim, head_dim, dtype_bytes, mask_bytes,
                                                  H100_SHARED_MEMORY)
            assert kept, (head_dim, fp32, mask_bytes)
            if mask_bytes == 0:
                assert kept == configs, (head_dim, fp32)
            for block_m, block_n, _, stages in kept if mask_bytes else ():
                use = attention_common.modelled_shared_memory(model, block_m, block_n, stages, head_dim, head_dim,
                                                              dtype_bytes, mask_bytes)
                assert use <= H100_SHARED_MEMORY, (head_dim, fp32, mask_bytes)


def test_float_mask_takes_stages_off_the_largest_forward_tile():
    model = SPACES["fwd"][1]
    kept = attention_common.space_configs(attention_fwd.FWD_SPACE, model, 128, 128, 2, 4, H100_SHARED_MEMORY)
    assert kept == [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 8, 4)]
    nothing_fits = attention_common.fitting_configs([(128, 128, 8, 3)], lambda m, n, s: 10**6, H100_SHARED_MEMORY)
    assert nothing_fits == []


def test_the_model_prunes_without_a_mask_too():
    """An H200 run of the dQ kernel's (128, 16, 8, 2) at E = 128 fp32, causal without a mask, failed
    with "OutOfResources: shared memory, Required: 294912, Hardware limit: 232448": its model says as
    much, and the pruning applies the model without a mask as with one (on any device's limit)."""
    model = SPACES["bwd_q"][1]
    assert model(128, 16, 2, 128, 128, 4) == 294912 > H100_SHARED_MEMORY
    listed = {(128, True): [(128, 16, 8, 2), (16, 32, 4, 2)]}
    for mask_bytes in (0, 1, 4):
        assert attention_common.space_configs(listed, model, 128, 128, 4, mask_bytes, H100_SHARED_MEMORY) == \
            [(16, 32, 4, 2)]
    # A device with less shared memory (99 KB): stages come off, or configs go, without a mask too.
    kept = attention_common.space_configs(attention_fwd.FWD_SPACE, SPACES["fwd"][1], 128, 128, 2, 0, 99 * 1024)
    assert kept == [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 4)]


def pruning(name, monkeypatch):
    """The early_config_prune of the ``name`` kernel's autotuner, built as the module builds it, with
    the timing on (whatever FASTTX_TRITON_AUTOTUNE the caller has set): (q, mask, E, dropout) -> kept
    configs."""
    monkeypatch.setattr(attention_common, "_INTERPRET", False)  # the interpreter's tuner has no pruning
    monkeypatch.setattr(attention_common, "_AUTOTUNE", True)
    # The pruning reads only the call's arguments: any kernel serves to build the tuner.
    tuner = attention_common.attention_autotune(*SPACES[name])(attention_fwd._attn_fwd_kernel)

    def kept(q, mask, head_dim, has_dropout=False, rows_broadcast=False):
        block = max(16, triton.next_power_of_2(head_dim))
        mask_kind = "none" if mask is None else "bool" if mask.dtype == torch.bool else "float"
        args = {"Q": q, "Mask": mask, "BLOCK_E": block, "BLOCK_EV": block, "MASK_KIND": mask_kind,
                "MASK_ROWS_BROADCAST": rows_broadcast, "HAS_DROPOUT": has_dropout, "TMA": True}
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in tuner.early_config_prune(tuner.configs, args)]

    return kept


MASK_DTYPES = [None, torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("name", SPACES)
def test_pruning_keeps_a_config_for_every_call_and_no_wrong_one(name, monkeypatch):
    """Every dtype, mask kind and mask dtype, mask tile or row-broadcast vector, head dim, with and without
    dropout (whose keep tile takes shared memory too): the pruning keeps some config, never one its
    kernel lists as wrong for the call; in particular never the forward's (64, 32, 4, 3) for fp32 with
    a float mask (inf / NaN on an H200, see attention_fwd.FWD_WRONG), kept with no mask or a bool one."""
    kept = pruning(name, monkeypatch)
    wrong = SPACES[name][2] or {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q = torch.empty(1, 1, 1, 1, dtype=dtype)
        for head_dim in (8, 16, 32, 64, 80, 128, 200, 256):
            for mask_dtype, has_dropout, rows in itertools.product(MASK_DTYPES, (False, True), (False, True)):
                mask = None if mask_dtype is None else torch.empty(1, 1, 1, 1, dtype=mask_dtype)
                configs = kept(q, mask, head_dim, has_dropout, rows and mask is not None)
                case = (dtype, head_dim, mask_dtype, has_dropout, rows)
                assert configs, case
                kind = "none" if mask is None else "bool" if mask_dtype == torch.bool else "float"
                assert not set(configs) & set(wrong.get((kind, dtype == torch.float32), ())), case
                if name == "fwd" and dtype == torch.float32 and head_dim <= 64:
                    assert ((64, 32, 4, 3) in configs) == (kind != "float"), case


def test_autotune_off_runs_the_first_kept_config(monkeypatch):
    """FASTTX_TRITON_AUTOTUNE=0 (make gpu-check's test stage) narrows the pruned configs to the first:
    one compile per key instead of one per config; by default every kept config is timed. Both set
    here, whatever the caller's environment."""
    kept = pruning("fwd", monkeypatch)
    q = torch.empty(1, 1, 1, 128, dtype=torch.float16)
    expected = attention_fwd.FWD_SPACE[(128, False)]
    assert kept(q, None, 128) == expected
    fp32_float_mask = (torch.empty(1, 1, 1, 64), torch.empty(1, 1, 1, 1), 64)
    assert kept(*fp32_float_mask)[0] == (64, 64, 4, 2)  # not the wrong (64, 32, 4, 3)
    monkeypatch.setattr(attention_common, "_AUTOTUNE", False)
    assert kept(q, None, 128) == expected[:1]
    assert kept(*fp32_float_mask) == [(64, 64, 4, 2)]


# ---- dropout seed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_seed_is_drawn_on_the_inputs_device(backend, monkeypatch):
    """The op gets the seed as a device tensor from the device's generator (a CUDA graph replays that
    draw with a new Philox offset), never as a host value."""
    seeds = []
    real_op = _ops.op

    def op_spy(name, direction, backend_):
        fn = real_op(name, direction, backend_)

        def spy(*args):
            seeds.append(args[7])  # (q, k, v, mask, scale, is_causal, dropout_p, seed, deterministic)
            return fn(*args)

        return spy

    monkeypatch.setattr(_ops, "op", op_spy)
    q, k, v = attention_inputs(1, 2, 2, 16, 16, 32)
    torch.manual_seed(3)
    fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend)
    fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend)
    torch.manual_seed(3)
    expected = torch.randint(0, 2**62, (), dtype=torch.int64, device=DEVICE)
    assert [(s.dtype, s.shape, s.device) for s in seeds] == [(torch.int64, (), q.device)] * 2
    assert torch.equal(seeds[0], expected) and not torch.equal(seeds[0], seeds[1])


def test_seed_on_another_device_is_read_the_same():
    """The launchers take the seed wherever it is (the op's schema allows any device)."""
    q, k, v = attention_inputs(1, 2, 2, 16, 24, 16, dtype=torch.float32)
    seed = torch.tensor(2**40 + 17)
    o, _ = attention_fwd.attention_fwd(q, k, v, None, 0.25, False, 0.5, seed.to(DEVICE))
    assert torch.equal(o, attention_fwd.attention_fwd(q, k, v, None, 0.25, False, 0.5, seed)[0])


@needs_cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dropout_draws_anew_at_each_cuda_graph_replay(backend):
    q, k, v = (t.requires_grad_() for t in attention_inputs(2, 4, 4, 128, 128, 64))

    def step():
        out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend)
        out.sum().backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning) off the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    q.grad = k.grad = v.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    results = []
    for _ in range(2):
        graph.replay()
        results.append((out.clone(), q.grad.clone()))
    assert all(o.isfinite().all() and dq.isfinite().all() for o, dq in results)
    assert not torch.equal(results[0][0], results[1][0]) and not torch.equal(results[0][1], results[1][1])


@needs_cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dropout_draws_anew_under_reduce_overhead_compile(backend):
    q, k, v = attention_inputs(2, 4, 4, 128, 128, 64)
    attend = torch.compile(lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend=backend),
                           mode="reduce-overhead", fullgraph=True)
    outs = [attend(q, k, v).clone() for _ in range(4)]  # warm-up, recording, then replays
    assert all(o.isfinite().all() for o in outs)
    assert not torch.equal(outs[-1], outs[-2])


# ---- int64 offsets --------------------------------------------------------------------------------


def test_views_past_2_31_elements():
    """A (B, L, H, E) view transposed to (B, H, L, E) whose batch stride L * H * E times the batch index
    passes 2^31: the kernels' batch offsets are int64 (the interpreter wraps int32 as the GPU does).
    The storage is reserved, not touched: only the view's own pages are written."""
    B, L, H, E = 3, 8, 2, 16
    batch_stride = 2**30 + 2**12  # batch 2 starts past 2^31
    # On CUDA (6 GB, the kernels compiled); on the CPU under the interpreter (only reserved there).
    storage = torch.empty(B * batch_stride, dtype=torch.float16, device=DEVICE)
    views = []
    for i in range(3):  # q, k, v side by side in each batch's slot
        view = storage.as_strided((B, H, L, E), (batch_stride, E, H * E, 1), storage_offset=i * L * H * E)
        view.copy_(torch.randn(B, H, L, E, device=DEVICE))
        views.append(view)
    check(*views, "triton", is_causal=True)
