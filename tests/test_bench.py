"""The benchmark's own logic, in process: correctness before speed, the speed-up's baseline,
optional libraries, --compare, --backends, progress, and the reports without matplotlib."""

import importlib.util
import io
import json
import os
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F

from fasttx import cli
from fasttx.benchmarks import common, encoder_inference, host_overhead, mha_calls, modules, norms, progress, report

from .conftest import DEVICE, OpRecorder, runnable_backends


def _softmax_case(providers):
    x = torch.randn(16, 50, requires_grad=True)
    return common.Case({"rows": 16, "cols": 50}, [x], providers, lambda x: torch.softmax(x, -1), (1, 2))


def test_wrong_implementation_is_flagged():
    right = lambda x: torch.softmax(x, -1)  # noqa: E731
    wrong = lambda x: torch.softmax(x * 1.01, -1)  # noqa: E731
    rows = common.run_case("softmax", _softmax_case({"torch eager": right, "fasttx wrong": wrong}),
                           "cpu", torch.float32, {"GB/s": None})
    verdicts = {(r["provider"], r["pass"]): r["correct"] for r in rows}
    assert verdicts == {("torch eager", p): True for p in common.PASSES} | {("fasttx wrong", p): False for p in common.PASSES}
    assert all(r["ms"] > 0 for r in rows)
    # timed, but a wrong result never shows a speed-up nor enters the headline
    assert [r["speed-up"] for r in rows if r["provider"] == "fasttx wrong"] == [None] * 3
    assert report.headline(rows) == []
    assert [report.verdict(r) for r in rows].count("FAIL") == 3


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine torch's two threads can stretch a 16 x 50
    softmax to milliseconds of waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_rounds_warm_up_and_size_each_pass_once(monkeypatch):
    """On CPU the providers are timed in CPU_ROUNDS interleaved rounds; only the first warms each pass
    of each provider up and sizes its blocks (cpu_iteration_s), the later rounds time at once with
    those sizes (with the Triton interpreter the warm-up and sizing of every round were two thirds of
    a bench's time)."""
    sized, measured = [], common.cpu_iteration_s

    def counted(fn, grad_to_none=None, setup=None):
        sized.append(fn)
        return measured(fn, grad_to_none, setup)

    monkeypatch.setattr(common, "cpu_iteration_s", counted)
    calls = {"torch eager": 0, "fasttx torch": 0}

    def provider(name):
        def call(x):
            calls[name] += 1
            return torch.softmax(x, -1)
        return call

    rows = common.run_case("softmax", _softmax_case({name: provider(name) for name in calls}), "cpu",
                           torch.float32, {"GB/s": None})
    assert common.CPU_ROUNDS > 1 and len(sized) == len(calls) * len(common.PASSES)
    assert all(r["correct"] and r["ms"] > 0 and r["ms p20"] <= r["ms"] <= r["ms p80"] for r in rows)
    assert all(n > common.CPU_ROUNDS * len(common.PASSES) for n in calls.values())  # every round timed each


def test_speed_up_is_against_the_fastest_correct_baseline(one_thread):
    fast = lambda x: torch.softmax(x, -1)  # noqa: E731

    def slow(x):
        time.sleep(0.02)
        return torch.softmax(x, -1)

    providers = {"torch slow": slow, "torch wrong": lambda x: x, "torch eager": fast, "fasttx torch": fast}
    rows = common.run_case("softmax", _softmax_case(providers), "cpu", torch.float32, {"GB/s": None})
    by = {(r["provider"], r["pass"]): r for r in rows}
    for direction in ("fwd", "fwd+bwd"):  # the slow baseline sleeps in its forward only
        eager = by["torch eager", direction]
        assert all(r["vs"] == "torch eager" for r in rows if r["pass"] == direction and r["correct"])
        assert by["fasttx torch", direction]["speed-up"] == pytest.approx(eager["ms"] / by["fasttx torch", direction]["ms"])
        assert by["torch slow", direction]["speed-up"] < 0.5
    assert by["torch wrong", "fwd"]["speed-up"] is None
    best = {c["pass"]: c for c in report.headline(rows)}
    assert best["fwd"]["best PyTorch"] == "torch eager" and best["fwd"]["best fasttx"] == "fasttx torch"


def test_a_providers_context_covers_its_backward():
    """A provider's ``around`` (common.around) is entered for its checking and every timed pass, so a
    switch read by its backward, which autograd runs outside the forward call, is on there too."""
    state = {"on": False, "backwards": 0}

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            assert state["on"], "forward outside the provider's context"
            return torch.softmax(x, -1)

        @staticmethod
        def backward(ctx, grad):
            assert state["on"], "backward outside the provider's context"
            state["backwards"] += 1
            return grad  # not softmax's gradient: only the context is checked here

    class Switch:
        def __enter__(self):
            state["on"] = True

        def __exit__(self, *exc):
            state["on"] = False

    def switched(x):
        return Probe.apply(x)

    switched.around = Switch
    rows = common.run_case("softmax", _softmax_case({"torch eager": lambda x: torch.softmax(x, -1), "switched": switched}),
                           "cpu", torch.float32, {"GB/s": None})
    mine = [r for r in rows if r["provider"] == "switched"]
    assert all(r["ms"] > 0 and "error" not in r for r in mine), mine  # no assertion failed inside
    assert state["backwards"] > 1 and not state["on"]


def test_a_provider_that_raises_is_a_failure_not_a_crash():
    def broken(x):
        raise RuntimeError("no kernel for this shape")

    rows = common.run_case("softmax", _softmax_case({"torch eager": lambda x: torch.softmax(x, -1), "flash-attn": broken}),
                           "cpu", torch.float32, {"GB/s": None})
    failed = [r for r in rows if r["provider"] == "flash-attn"]
    assert all(r["correct"] is False and r["ms"] is None and "no kernel" in r["error"] for r in failed)


def test_optional_libraries_are_guarded(monkeypatch):
    for name in ("liger_kernel", "apex", "flash_attn"):
        monkeypatch.setitem(sys.modules, name, None)  # absent, even where installed
    assert common.external_providers(norms.EXTERNALS["layer_norm"], "cuda", torch.bfloat16) == {}
    cpu = lambda: set(next(norms.cases("layer_norm", torch.float32, "cpu", [(2, 8)], ("torch",))).providers)  # noqa: E731
    assert cpu() == {"torch eager", "fasttx torch"}

    fake = types.ModuleType("liger_kernel.transformers.functional")
    fake.liger_layer_norm = lambda x, w, b, eps: ("liger", eps)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", fake)
    found = common.external_providers(norms.EXTERNALS["layer_norm"], "cuda", torch.bfloat16)
    assert list(found) == ["liger"] and found["liger"](1, 2, 3) == ("liger", norms.EPS)
    assert cpu() == {"torch eager", "fasttx torch"}  # these libraries run CUDA tensors only
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "flash_attn", flash)
    from fasttx.benchmarks import attention

    assert list(common.external_providers([attention._flash_attn(True)], "cuda", torch.float16)) == ["flash-attn"]
    assert common.external_providers([attention._flash_attn(True)], "cuda", torch.float32) == {}  # fp16/bf16 only


def _bench(tmp_path, *args):
    cli.main(["bench", "--op", "rms_norm", "--shapes", "8x64,4x96", "--backends", "torch", "--dtype", "float32",
              "--out", str(tmp_path), "--no-progress", *args])
    return json.load(open(tmp_path / f"rms_norm_float32_{DEVICE}.json"))


def test_compare_flags_regressions_and_backends_filter(tmp_path, capsys):
    first = _bench(tmp_path / "old")
    # no triton: --backends torch (on GPU torch.compile is a baseline too)
    assert {r["provider"] for r in first["rows"] if common.kind(r["provider"]) == "fasttx"} == {"fasttx torch"}
    old = first["rows"]
    for r in old:  # fasttx 100x faster before (a regression now), torch eager 100x slower before
        r["ms"] *= 0.01 if r["provider"] == "fasttx torch" else 100
    json.dump(first, open(tmp_path / "old" / f"rms_norm_float32_{DEVICE}.json", "w"))
    capsys.readouterr()
    new = _bench(tmp_path / "new", "--compare", str(tmp_path / "old"), "--threshold", "0.2")
    out, err = capsys.readouterr()
    assert "the earlier run was on" not in err  # same device
    assert f"{len(old)} matching rows" in out and "6 regression(s) slower by more than 20%" in out
    flagged = {(r["provider"], r["regression"]) for r in new["rows"]}
    assert flagged == {("fasttx torch", True), ("torch eager", False)}
    assert all(r["new/old"] == pytest.approx(r["ms"] / r["old ms"]) for r in new["rows"])
    md = open(tmp_path / "new" / f"rms_norm_float32_{DEVICE}.md").read()
    assert md.count(" REGRESSION |") == 6 and "6 regression(s)" in md

    first["meta"]["device"] = "NVIDIA H100 80GB HBM3"
    json.dump(first, open(tmp_path / "old" / f"rms_norm_float32_{DEVICE}.json", "w"))
    now = _bench(tmp_path / "new", "--compare", str(tmp_path / "old" / f"rms_norm_float32_{DEVICE}.json"))
    assert f"the earlier run was on NVIDIA H100 80GB HBM3, this one on {now['meta']['device']}" in capsys.readouterr().err


def test_reports_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    _bench(tmp_path)
    assert "no PNG plots: matplotlib is not installed" in capsys.readouterr().err
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv", ".json", ".md", ".md"]


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, quiet, expected", [
    (_Tty(), False, "\rsoftmax [############............] 1/2"),
    (io.StringIO(), False, "bench softmax case 1: rows=8\n"),
    (_Tty(), True, ""),
])
def test_progress(stream, quiet, expected):
    bar = progress.Progress("softmax", 2, quiet=quiet, stream=stream)
    bar.case("rows=8")
    bar.step("torch eager")
    bar.step("fasttx triton")
    bar.close()
    text = stream.getvalue()
    assert (expected in text) if expected else text == ""


def test_a_wrong_fasttx_kernel_fails_the_run(tmp_path, monkeypatch):
    from fasttx import functional

    real = functional.rms_norm
    monkeypatch.setattr(functional, "rms_norm", lambda x, shape, w, eps, backend: 1.01 * real(x, shape, w, eps, backend=backend))
    with pytest.raises(SystemExit) as exit_:
        _bench(tmp_path)
    assert "wrong results" in str(exit_.value.code) and "rows=8 hidden=64 fasttx torch: max rel err" in str(exit_.value.code)
    rows = json.load(open(tmp_path / f"rms_norm_float32_{DEVICE}.json"))["rows"]
    assert {r["provider"] for r in rows if r["correct"] is False} == {"fasttx torch"}
    assert "| FAIL |" in open(tmp_path / f"rms_norm_float32_{DEVICE}.md").read()


@pytest.mark.parametrize("op", ["layer_norm", "softmax", "attention", "mha", "encoder_layer"])
def test_reference_by_slices_equals_whole(op):
    """The float64 oracle computed in slices (rows, heads) gives the whole computation's output and
    gradients, including those of inputs passed whole (a norm's weight and bias: summed)."""
    from fasttx.benchmarks import REGISTRY

    shape = {"layer_norm": (37, 24), "softmax": (37, 24), "attention": (8, 19, 4), "mha": (9, 16, 4),
             "encoder_layer": (9, 16, 4)}[op]
    # the last case: softmax's and attention's with their mask
    case = list(REGISTRY[op].cases(op, torch.float32, "cpu", [shape], ("torch",)))[-1]
    assert case.chunk_dim is not None
    dy = torch.randn_like(case.reference(*case.inputs)).detach()
    sliced = common._reference_results(case, dy)
    whole = common._reference_results(common.dataclasses.replace(case, chunk_dim=None), dy)
    assert len(sliced) == len(whole) == 1 + sum(t.requires_grad for t in case.inputs)
    for a, b in zip(sliced, whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cpu_peak_memory_counts_tensor_allocations():
    """On CPU the peak is the running total of the allocations torch reports to the profiler:
    a 4 MiB temporary freed before an 8 MiB one peaks at 8 MiB (plus the output), not 12."""
    def temporaries():
        a = torch.ones(1 << 20)  # 4 MiB
        del a
        b = torch.ones(2 << 20)  # 8 MiB
        return b.sum()

    assert 8 <= common.peak_memory_mb(temporaries, "cpu") < 8.1


def test_cpu_module_workloads_are_checked_and_measured():
    """--preset cpu: each module op has its workload, (seq, d_model, heads, batch); a small one runs
    through the whole path: torch.nn vs fasttx.patch, correct, timed, peak memory on CPU."""
    assert set(modules.PRESETS["cpu"]) == set(modules.OPS)
    for op in modules.OPS:
        (case,) = [c for c in modules.cases(op, torch.float32, "cpu", [(16, 32, 4, 3)], ("torch",))
                   if c.label["need_weights"] is False and c.label["attention"] != "cross"]
        assert case.label["batch"] == 3 and set(case.providers) == {"torch.nn", "fasttx torch"}
        rows = common.run_case(op, case, "cpu", torch.float32, {"GB/s": None, "TFLOP/s": None})
        assert all(r["correct"] and r["ms"] > 0 and r["peak MB"] > 0 for r in rows)


def test_compiled_baseline_is_timed_with_its_donated_buffers(monkeypatch):
    """torch.compile frees a norm's saved statistics into its backward (donated buffers); a backward
    compiled that way refuses a retained graph, which failed every torch.compile baseline on the
    H200 (torch 2.11). The bwd pass times each backward on a fresh graph instead: the compiled
    baseline is checked and timed, donated buffers on, as a training step runs it."""
    import torch._inductor.config as inductor_config

    # A cached compile may have been made by a retained-graph backward, which compiles without
    # donated buffers: compile afresh, so the mechanism is the one a first run meets.
    monkeypatch.setattr(inductor_config, "force_disable_caches", True)
    case = next(norms.cases("layer_norm", torch.float32, DEVICE, [(8, 64)], ()))
    eager = case.providers["torch eager"]
    compiled = common.compiled(lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, norms.EPS))
    leaves = common._leaves(case.inputs)
    compiled(*leaves).sum().backward()  # compiles the backward, as the correctness check does
    with pytest.raises(RuntimeError, match="donated buffers"):  # the mechanism is there
        compiled(*leaves).sum().backward(retain_graph=True)
    case = common.dataclasses.replace(case, providers={"torch eager": eager, "torch.compile": compiled})
    rows = common.run_case("layer_norm", case, DEVICE, torch.float32, {"GB/s": None})
    assert {(r["provider"], r["pass"]) for r in rows} == {(p, d) for p in case.providers for d in common.PASSES}
    assert all(r["correct"] and r["ms"] > 0 and "error" not in r for r in rows), [r.get("error") for r in rows]


def _slow_cases(monkeypatch, before_s=0.0, after_s=0.0):
    real = common.run_case

    def slow(*args, **kwargs):
        time.sleep(before_s)
        rows = real(*args, **kwargs)
        time.sleep(after_s)
        return rows

    monkeypatch.setattr(common, "run_case", slow)


def test_time_limit_does_not_start_a_case_that_would_not_fit(tmp_path, monkeypatch, capsys):
    _slow_cases(monkeypatch, after_s=3.0)  # each case takes 3 s and more: after the first, < 3 s is left
    cli.main(["bench", "--op", "rms_norm", "--shapes", "8x64,4x96,2x32", "--backends", "torch", "--dtype", "float32",
              "--out", str(tmp_path), "--no-progress", "--no-compile", "--time-limit", "6"])
    data = json.load(open(tmp_path / f"rms_norm_float32_{DEVICE}.json"))
    assert {(r["rows"], r["hidden"]) for r in data["rows"]} == {(8, 64)}
    assert data["meta"]["cut"] == ["rows=4 hidden=96", "rows=2 hidden=32"] and data["meta"]["time_limit_s"] == 6
    assert not any(common.is_compiled(r["provider"]) for r in data["rows"])
    assert "rms_norm rows=2 hidden=32: cut by --time-limit" in capsys.readouterr().err
    assert "Cut by --time-limit 6 s" in open(tmp_path / f"rms_norm_float32_{DEVICE}.md").read()


def test_time_limit_interrupts_a_running_case(tmp_path, monkeypatch, capsys):
    _slow_cases(monkeypatch, before_s=30.0)
    begin = time.monotonic()
    cli.main(["bench", "--op", "rms_norm", "--shapes", "8x64,4x96", "--backends", "torch", "--dtype", "float32",
              "--out", str(tmp_path), "--no-progress", "--time-limit", "0.5"])
    assert time.monotonic() - begin < 10
    assert "rms_norm rows=8 hidden=64: cut by --time-limit" in capsys.readouterr().err
    assert not (tmp_path / f"rms_norm_float32_{DEVICE}.json").exists()  # no case finished: no table
    assert "No case finished within --time-limit" in open(tmp_path / f"report_float32_{DEVICE}.md").read()


def test_every_declared_op_is_benchmarked_by_its_declared_module():
    """The bench registry derives from the op declarations: a declared op whose ``bench`` module does
    not list it in OPS would silently drop out of `python -m fasttx bench --op all`."""
    from fasttx._declarations import DECLARATIONS
    from fasttx.benchmarks import REGISTRY

    for name, declaration in DECLARATIONS.items():
        assert REGISTRY[name].__name__ == f"fasttx.benchmarks.{declaration.bench}", name


def test_softmax_causal_and_short_row_cases():
    """A shape whose rows are whole heads (rows a multiple of the columns) gets a causal case, with the
    bytes of the kept triangle; the fasttx softmax checked against the reference on it."""
    from fasttx.benchmarks import softmax

    assert [kind for kind in softmax.mask_kinds(64, 16)] == ["none", softmax.FLOAT_MASK, "causal"]
    assert "causal" not in softmax.mask_kinds(37, 24)
    here = runnable_backends("cpu", "softmax")  # triton under the interpreter on the CPU machine
    cases = list(softmax.cases("softmax", torch.float32, "cpu", [(64, 16)], here))
    causal = cases[-1]
    assert causal.label == {"rows": 64, "cols": 16, "mask": "causal"} and causal.inputs[0].shape == (4, 16, 16)
    kept = 4 * 16 * 17 // 2
    assert causal.work == (kept * 4 + 64 * 16 * 4, 2 * kept * 4 + 64 * 16 * 4)
    assert cases[0].work == (2 * 64 * 16 * 4, 3 * 64 * 16 * 4)  # without causal: unchanged
    rows = common.run_case("softmax", causal, "cpu", torch.float32, {"GB/s": None})
    assert {r["provider"] for r in rows} == {"torch eager"} | {f"fasttx {b}" for b in here}
    assert all(r["correct"] for r in rows), rows


def test_rows_the_cuda_kernels_split_are_also_timed_unsplit(monkeypatch):
    """On sm_90, rows past a CUDA kernel's one-block chunk (split over a cluster there) also get
    "fasttx cuda (no clusters)": the same call inside cuda_clusters(False), backward included (its
    around); shorter rows, other GPUs and runs without the CUDA backend do not."""
    from fasttx._extension import CLUSTERS_SWITCH

    seen = []
    providers = {"torch eager": None, "fasttx cuda": lambda x: seen.append(os.environ.get(CLUSTERS_SWITCH))}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    assert common.with_unsplit_rows(providers, 16384, 16384) is providers
    assert common.with_unsplit_rows({"torch eager": None}, 32768, 16384) == {"torch eager": None}
    unsplit = common.with_unsplit_rows(providers, 16385, 16384)["fasttx cuda (no clusters)"]
    with common.around(unsplit):
        unsplit(None)
    providers["fasttx cuda"](None)
    assert seen == ["0", None]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (8, 0))
    assert common.with_unsplit_rows(providers, 32768, 16384) is providers


@pytest.mark.skipif("triton" not in runnable_backends("cpu", "attention"), reason="Triton does not run here")
def test_attention_times_the_opt_in_backward_beside_the_default():
    """Where Triton runs, each attention case has "fasttx triton (deterministic=False)" (the atomic-dQ
    backward) beside "fasttx triton", with the case's one FLOP count; both correct against the reference."""
    from fasttx.benchmarks import attention

    case = next(c for c in attention.cases("attention", torch.float32, "cpu", [(16, 1, 16)], ("triton",))
                if c.label["causal"])
    assert {"fasttx triton", "fasttx triton (deterministic=False)"} <= set(case.providers)
    rows = common.run_case("attention", case, "cpu", torch.float32, {"TFLOP/s": None})
    opt_in = [r for r in rows if r["provider"] == "fasttx triton (deterministic=False)"]
    assert {r["pass"] for r in opt_in} == set(common.PASSES) and all(r["correct"] for r in opt_in), opt_in


def test_attention_mask_and_dropout_cases():
    """Each attention shape has, after the unmasked and causal cases, a key-padding case (a (B, 1, 1, S)
    bool mask padding 1/8 to 1/2 of each batch's keys, given to every provider and the reference) and a
    dropout case, labelled so the speed targets (unmasked, no dropout) leave them out. The masked case's
    providers are checked against the reference; the dropout case's are run and checked finite only
    (random draws no two providers share), their rows without an error figure."""
    from fasttx.benchmarks import attention

    kept = attention.key_padding_mask(5, 16, "cpu")
    assert kept.shape == (5, 1, 1, 16) and kept.dtype == torch.bool
    assert kept.sum(-1).flatten().tolist() == [14, 12, 10, 8, 14]  # a prefix of keys kept, per batch
    assert kept.flatten(1)[:, :8].all()
    backends = tuple(b for b in ("torch", "triton") if b in runnable_backends("cpu", "attention"))
    cases = list(attention.cases("attention", torch.float32, "cpu", [(16, 1, 16)], backends))
    assert [(c.label["causal"], c.label["mask"], c.label["dropout"], c.checked) for c in cases] == [
        (False, "none", 0.0, True), (True, "none", 0.0, True), (False, "key padding", 0.0, True),
        (False, "none", 0.1, False)]
    for case in cases[2:]:
        assert {f"fasttx {b}" for b in backends} <= set(case.providers) and "torch sdpa" in case.providers
        rows = common.run_case("attention", case, "cpu", torch.float32, {"TFLOP/s": None})
        assert rows and all(r["correct"] for r in rows), [(r["provider"], r.get("error")) for r in rows
                                                          if not r["correct"]]
        assert all((r["max rel err"] is None) == (not case.checked) for r in rows)


def test_an_unchecked_case_still_fails_a_provider_with_non_finite_results():
    """Case.checked=False (dropout) compares nothing, but a provider whose output or gradient is not
    finite is still wrong."""
    x = torch.randn(4, 8, requires_grad=True)
    providers = {"torch eager": lambda t: t * 2, "fasttx torch": lambda t: t * float("nan")}
    case = common.Case({"rows": 4}, [x], providers, None, (1.0, 1.0), checked=False)
    rows = common.run_case("softmax", case, "cpu", torch.float32, {})
    verdicts = {r["provider"]: r["correct"] for r in rows}
    assert verdicts == {"torch eager": True, "fasttx torch": False}
    assert report.verdict(next(r for r in rows if r["provider"] == "torch eager")) == "ran"


def test_gpu_timing_reports_the_hosts_issue_time_beside_the_events(monkeypatch):
    """On GPU, bench_ms gives the median host time of issuing a call beside the CUDA events' times
    (here CUDA's events, synchronize and the L2 flush buffer stand in on CPU: the events read the host
    clock, so a call that sleeps on the host shows the same time both ways); CPU rows have no host time,
    GPU rows show it in the reports."""
    class HostClockEvent:
        def __init__(self, enable_timing):
            self.at = None

        def record(self):
            self.at = time.perf_counter()

        def elapsed_time(self, end):
            return 1e3 * (end.at - self.at)

    empty = torch.empty
    monkeypatch.setattr(common, "L2_FLUSH_BYTES", 16)
    monkeypatch.setattr(torch.cuda, "Event", HostClockEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: empty(*a, **k))
    ms, p20, p80, host = common.bench_ms(lambda: time.sleep(0.003), "cuda")
    assert 3 <= p20 <= ms <= p80 and 3 <= host <= 1.5 * ms
    monkeypatch.undo()
    *_, cpu_host = common.bench_ms(lambda: None, "cpu")
    assert cpu_host is None

    rows = common.run_case("softmax", _softmax_case({"torch eager": lambda x: torch.softmax(x, -1)}), "cpu",
                           torch.float32, {"GB/s": None})
    assert all("host ms" not in r for r in rows)
    assert "host ms" not in report.markdown_section("softmax", rows, {"measured_peaks": {}, "device": "cpu"})
    gpu_rows = [dict(r, **{"host ms": 0.25}) for r in rows]
    section = report.markdown_section("softmax", gpu_rows, {"measured_peaks": {}, "device": "cuda"})
    header = next(line for line in section.splitlines() if "| p20-p80 |" in line)
    assert "| p20-p80 | host ms |" in header and "| 0.25 |" in section
    assert "the GPU waited on the host" in section


def test_host_overhead_times_the_ops_own_path_and_restores_the_kernels():
    """python -m fasttx.benchmarks.host_overhead: every case has the three providers timed, the
    triton provider reaches the op's forward (the path a GPU call takes, not a fallback to torch),
    and the Triton kernels and TRITON_INTERPRET are as before afterwards."""
    from fasttx.triton_kernels import layer_norm as triton_layer_norm

    launcher, interpret = triton_layer_norm._norm_fwd_kernel, os.environ.get("TRITON_INTERPRET")
    with host_overhead.triton_kernels_not_launched():
        providers = host_overhead.calls()
        cases = [("attention (B, H, L, E)", "attention"), ("layer_norm", "layer_norm"), ("rms_norm", "rms_norm"),
                 ("softmax", "softmax"), ("MultiheadAttention, self", "attention"),
                 ("MultiheadAttention, self, key padding", "attention"), ("TransformerEncoderLayer", "attention")]
        if importlib.util.find_spec("timm") is not None:
            cases.append(("timm ViT Attention", "attention"))
        for case, op in cases:
            with OpRecorder() as recorder:
                providers[case]["fasttx triton (not launched)"]()
            assert f"fasttx::{op}_fwd_triton" in recorder.ops, case
        # --inference: eval mode under no_grad, where the fasttx torch modules take torch's fused kernel
        with torch.no_grad(), OpRecorder() as recorder:
            host_overhead.calls(inference=True)["TransformerEncoderLayer"]["fasttx torch"]()
        assert "aten::_transformer_encoder_layer_fwd" in recorder.ops
    assert triton_layer_norm._norm_fwd_kernel is launcher and os.environ.get("TRITON_INTERPRET") == interpret
    with pytest.raises(ValueError, match="exclude each other"):
        host_overhead.measure(backward=True, inference=True)
    for backward, inference in ((False, False), (True, False), (False, True)):
        results = host_overhead.measure(calls_per_run=2, repeats=1, backward=backward, inference=inference)
        assert list(results) == list(providers)
        assert all(list(row) == ["torch", "fasttx torch", "fasttx triton (not launched)"] and min(row.values()) > 0
                   for row in results.values())
        assert "| layer_norm |" in host_overhead.table(results)


def test_encoder_inference_bench_compares_the_two_stacks_on_the_same_padded_batch():
    """python -m fasttx.benchmarks.encoder_inference: both stacks timed on one padded batch, outputs
    equal (both write 0 at padding), work from the formula over the real tokens."""
    rows = encoder_inference.run("quick", rounds=1)
    assert len(rows) == len(encoder_inference.PRESETS["quick"])
    for row in rows:
        assert row["torch_ms"] > 0 and row["fasttx_ms"] > 0 and row["max_abs_diff"] < 1e-4
        kept = encoder_inference.lengths(row["batch"], row["seq"], 0.5)
        assert row["real"] == sum(kept) / (row["batch"] * row["seq"]) < 1
        assert row["fasttx_gflops"] * row["fasttx_ms"] == pytest.approx(
            encoder_inference.flops(row["d_model"], row["layers"], kept) / 1e6)
    assert encoder_inference.lengths(4, 10, 0.5) == [8, 6, 4, 2]
    assert "| speed-up |" in encoder_inference.table(rows).splitlines()[0]


def test_mha_calls_bench_times_both_modules_on_the_same_masked_call():
    """python -m fasttx.benchmarks.mha_calls: each case in training and inference, both modules timed on
    the same call, the same outputs, the FLOP formula as documented."""
    rows = mha_calls.run("quick", rounds=1)
    assert [row["mode"] for row in rows] == ["train", "inference"]
    for row in rows:
        assert row["max_abs_diff"] < 1e-5
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["fasttx_ms"])
        work = mha_calls.flops(row["batch"], row["queries"], row["keys"], row["d_model"])
        assert row["fasttx_gflops"] == pytest.approx(work * (3 if row["mode"] == "train" else 1) / row["fasttx_ms"] / 1e6)
    assert mha_calls.flops(1, 2, 3, 4) == 2 * 16 * 10 + 4 * 2 * 3 * 4
    assert "| speed-up |" in mha_calls.table(rows).splitlines()[0]
