"""`make gpu-check` on the CPU: its plumbing end to end (the dry run: tiny shapes, the Triton
interpreter, GPU-only stages reported as skipped), the parts that judge results, and the committed
docs/gpu-status.md, so that the one-call GPU validation cannot rot between GPU loans."""

import ast
import fnmatch
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from fasttx.cli import gpu_autotune, gpu_check, gpu_sanitize, gpu_status, gpu_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    proc = subprocess.run([sys.executable, "-m", "fasttx.cli.gpu_check", "--dry-run", "--out", str(out),
                           "--tests", "tests/test_backends.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, out


def test_dry_run_writes_at_most_8_plain_files_and_prints_the_table_last(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert set(files) == set(gpu_check.OUTPUT_FILES) and len(files) <= 8, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) and os.path.isfile(out / f) for f in files)
    last = proc.stdout.strip().splitlines()
    table_start = next(i for i, line in enumerate(last) if line.startswith("fasttx gpu-check on"))
    assert all(not line.startswith("gpu-check:") for line in last[table_start:]), "the summary table is not last"


def test_dry_run_reports_every_stage(dry_run):
    _, out = dry_run
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert report["dry_run"] and report["stages_selected"] == list(gpu_check.STAGES)
    for name in ("build", "ceilings", "sanitize"):
        assert stages[name]["status"] == "skipped" and "no GPU" in stages[name]["summary"]
    assert stages["hazards"]["status"] == "skipped"
    assert stages["tests"]["status"] == "pass" and stages["tests"]["counts"]["passed"] > 0
    # Every autotuner of fasttx.triton_kernels reached and its (interpreter) config checked.
    assert stages["autotune"]["status"] == "pass", stages["autotune"]
    assert set(stages["autotune"]["kernels"]) == set(gpu_autotune.autotuners())
    assert stages["bench"]["status"] == "pass", stages["bench"]["summary"]
    assert {t["status"] for t in stages["bench"]["targets"]} == {"no data"}  # no target shape on the CPU
    bench = json.loads((out / "bench.json").read_text())
    assert {r["op"] for r in bench["rows"]} == set(gpu_check.HEADLINE) and bench["profile"]["variants"]
    # every op of the plan ran under its cap, and nothing was cut on these tiny shapes
    assert list(stages["bench"]["seconds per op"]) == [name for name, _, _ in gpu_check.bench_plan(gpu=False)]
    assert all(0 < op["took"] for op in stages["bench"]["seconds per op"].values()) and stages["bench"]["cut"] == {}
    summary = (out / "summary.md").read_text()
    assert "CPU dry run" in summary and all(f"| {name} |" in summary for name in gpu_check.STAGES)


def test_bench_plan_times_the_cuda_norm_kernels():
    """On a GPU the norm benches leave the fasttx backends to the bench's default there (triton and
    cuda, fasttx/cli/bench.py), so the CUDA LayerNorm / RMSNorm kernels, backward included, are
    measured at the shapes benchmarks/notes/layer_norm.md predicts for (its CUDA section)."""
    plan = {name: argv for name, argv, _ in gpu_check.bench_plan(gpu=True)}
    for op in ("layer_norm", "rms_norm"):
        assert "--backends" not in plan[op]
        assert plan[op][plan[op].index("--shapes") + 1] == "16384x4096,8192x8192,4096x16384,65536x256"


def test_bench_plan_covers_every_target_memory_bound_ops_first_gpt_step_last():
    """The GPU plan of the bench stage: run in order, a shape for every target of gpu_targets (rows
    made from the plan's shapes as the bench labels them, every baseline a target names), the
    memory-bound ops first and the GPT step at the target's configuration last."""
    from fasttx.benchmarks import REGISTRY, common, modules
    from fasttx.cli.bench import _parse_shapes

    plan = gpu_check.bench_plan(gpu=True)
    names = [name for name, _, _ in plan]
    assert set(names[:3]) == {"layer_norm", "rms_norm", "softmax"} and names[-1] == "gpt step"
    assert set(names[:-1]) == set(gpu_check.HEADLINE) and all(share > 0 for _, _, share in plan)
    rows = []
    for name, argv, _ in plan[:-1]:
        assert "--time-limit" not in argv  # the worker adds each op's cap when it starts it
        keys = REGISTRY[name].SHAPE.lower().split("x")
        for shape in _parse_shapes(argv[argv.index("--shapes") + 1]):
            label = dict(zip(keys, shape))
            if name == "mha":  # on a GPU: batch = TOKENS // seq; the first case is self-attention without weights
                label.update(batch=modules.TOKENS // label["seq"], attention="self", need_weights=False)
            # attention: each shape also with dropout (benchmarks/attention.py's VARIANTS)
            variants = [{"dropout": 0.0}, {"dropout": 0.1}] if name == "attention" else [{}]
            rows += [{"op": name, "provider": provider, "pass": direction, "ms": 1.0, "correct": True,
                      "% of peak": 95.0, **label, **variant}
                     for provider in ("torch eager", "torch sdpa flash", "torch.nn", "fasttx triton", "fasttx cuda")
                     for direction in common.PASSES for variant in variants]
    gpt = plan[-1][1]
    config = {key.replace("-", "_"): int(gpt[gpt.index(f"--{key}") + 1]) for key in ("d-model", "layers", "seq", "batch")}
    variant = {"tokens_per_s": 1.0, "peak_memory_mb": 1.0}
    targets = gpu_targets.evaluate(rows, {"config": config, "variants": {"torch": variant, "fasttx": variant}})
    assert [t["check"] for t in targets if t["status"] == "no data"] == []


def test_status_page_from_a_dry_run_says_nothing_ran_on_a_gpu(dry_run, tmp_path):
    _, out = dry_run
    page = tmp_path / "gpu-status.md"
    assert gpu_status.main([str(out / "gpu_check.json"), "--out", str(page)]) == 0
    text = page.read_text()
    assert "No kernel of fasttx has run on a GPU yet" in text
    assert text.count("| no |") == len(gpu_status.KERNELS) * len(gpu_status.BACKENDS)


def test_committed_status_page_is_generated():
    with open(os.path.join(ROOT, "docs", "gpu-status.md")) as f:
        text = f.read()
    assert text.startswith("# GPU status") and "python -m fasttx.cli.gpu_status" in text


def test_budget_too_short_skips_stages_and_says_which(tmp_path, capsys):
    code = gpu_check.main(["--dry-run", "--budget", "20", "--only", "tests,autotune,bench", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and report["stages_skipped"] == ["tests", "autotune", "bench"]
    assert all("budget" in report["stages"][name]["summary"] for name in report["stages_skipped"])
    assert "skipped: budget" in capsys.readouterr().out


def _context(tmp_path):
    import argparse

    args = argparse.Namespace(budget=60.0, dry_run=True, test_timeout=300, tests="tests")
    ctx = gpu_check.Context(args)
    ctx.work = str(tmp_path)
    return ctx


@pytest.mark.parametrize("capability,arch", [((9, 0), "9.0a"), ((8, 0), "8.0"), ((8, 6), "8.6")])
def test_build_stage_targets_the_visible_gpu_as_the_first_use_build_does(monkeypatch, capability, arch):
    """sm_90 is built as 9.0a (the sm_90a attention kernels' wgmma and setmaxnreg): fasttx/_build.py's
    rule, shared with the first-use build."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    assert gpu_check._arch() == arch


def test_pytest_command_ends_a_hung_test_and_reports_durations(tmp_path, monkeypatch):
    """A test blocked in a CUDA call (a kernel that never ends) is out of reach of pytest-timeout's default
    signal method: the command asks for its thread method wherever pytest-timeout is installed."""
    ctx = _context(tmp_path)
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: name in ("pytest_timeout", "xdist"))
    cmd = gpu_check._pytest_command(ctx, "tests", ["tests"], 8)
    assert cmd[cmd.index("--timeout") + 1] == "300" and cmd[cmd.index("--timeout-method") + 1] == "thread"
    assert "--durations=25" in cmd and cmd[cmd.index("-n") + 1] == "8"
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: False)
    cmd = gpu_check._pytest_command(ctx, "hazards", ["tests/test_gpu_hazards.py"], 1)
    assert "--timeout" not in cmd and "--timeout-method" not in cmd and "-n" not in cmd


def test_a_stage_past_its_time_is_interrupted_first_and_keeps_its_junit_report(tmp_path):
    """SIGINT, then SIGKILL: pytest (with xdist workers) ends as on Ctrl-C and writes the report of the
    tests that ran, which the tests stage counts, where a kill alone left no report at all."""
    test_file = tmp_path / "test_slow.py"
    test_file.write_text("import time\n\ndef test_quick():\n    pass\n\n"
                         "def test_stuck():\n    time.sleep(600)\n")
    ctx = _context(tmp_path)
    cmd = gpu_check._pytest_command(ctx, "stuck", [str(test_file), "--rootdir", str(tmp_path)], 2)
    rc = ctx.run(cmd, "stuck", 20)
    log = open(ctx.log("stuck")).read()
    assert rc is None and "[gpu-check: timed out after 20 s, stopped]" in log
    parsed = gpu_check.parse_junit(os.path.join(ctx.work, "stuck.xml"))
    assert parsed["counts"]["passed"] == 1, log[-3000:]
    assert gpu_check._tests_result(parsed, rc)["summary"].startswith("timed out: 1 passed")


def test_tests_stage_leaves_the_cpu_only_files_to_ci(tmp_path, monkeypatch):
    ctx = _context(tmp_path)
    commands = []
    monkeypatch.setattr(ctx, "run", lambda cmd, name, timeout, env=None: commands.append(cmd) or 0)
    gpu_check.stage_tests(ctx, 100)
    (cmd,) = commands
    ignored = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--ignore"]
    assert ignored[0] == gpu_check.HAZARD_TESTS and len(ignored) == len(set(ignored))
    for pattern in gpu_check.CPU_ONLY_TESTS:  # each still names a file: a rename would run it again
        assert any(fnmatch.fnmatch(path, pattern) for path in ignored), pattern
    assert {"tests/test_cuda_attention_sm90_emulated.py", "tests/test_cuda_norm_emulated.py"} <= set(ignored)
    assert "tests/test_cuda_attention_sm90.py" not in ignored and "tests/ops/test_attention.py" not in ignored
    # the whole suite but those, its GPU-only checks first, every other test file once
    suite = cmd[cmd.index("--junitxml=" + os.path.join(ctx.work, "tests.xml")) + 1:cmd.index("--ignore")]
    assert suite[:len(gpu_check.FIRST_TESTS)] == list(gpu_check.FIRST_TESTS) and len(suite) == len(set(suite))
    files = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)}
    for path in files:
        covered = [t for t in suite if path == t or path.startswith(t + os.sep)]
        assert len(covered) == (0 if path in ignored else 1), (path, covered)


def _bench_lines(*lines, then_sleep=0):
    """A process printing bench_worker's progress lines, then sleeping (a hung op)."""
    code = "".join(f"print({line!r}, flush=True)\n" for line in lines) + f"import time; time.sleep({then_sleep})\n"
    return [sys.executable, "-c", code]


def test_watch_bench_stops_an_op_past_its_time_limit_and_names_it(tmp_path):
    import time

    ctx = _context(tmp_path)
    begin = time.monotonic()
    rc, hung = gpu_check.watch_bench(
        ctx, _bench_lines("gpu-check bench: softmax starts, its 1 s", "gpu-check bench: softmax took 0.2 s of its 1 s",
                          "gpu-check bench: attention starts, its 1 s", then_sleep=60),
        time.monotonic() + 50, grace=1, poll=0.1)
    assert (rc, hung) == (None, "attention") and time.monotonic() - begin < 20
    assert "[gpu-check: attention ran 1 s past its 1 s, stopped]" in open(ctx.log("bench")).read()
    # a second process appends to the same log: the first one's unfinished op is not taken for its own
    rc, hung = gpu_check.watch_bench(ctx, _bench_lines("gpu-check bench: mha starts, its 5 s",
                                                       "gpu-check bench: mha took 0.1 s of its 5 s"),
                                     time.monotonic() + 50, grace=1, poll=0.1)
    assert (rc, hung) == (0, None)
    # no op over its limit, but the stage's end reached
    rc, hung = gpu_check.watch_bench(ctx, _bench_lines("gpu-check bench: mha starts, its 100 s", then_sleep=60),
                                     time.monotonic() + 1, grace=1, poll=0.1)
    assert (rc, hung) == (None, None) and "the stage's time ran out, stopped" in open(ctx.log("bench")).read()


def test_bench_stage_runs_the_ops_after_a_hung_one_in_a_new_process(tmp_path, monkeypatch):
    ctx = _context(tmp_path)
    plans = []

    def watch(ctx, cmd, end, **_):
        plans.append([name for name, _, _ in ast.literal_eval(cmd[-1].split("bench_worker(")[1].rsplit(",", 1)[0])])
        return (None, "attention") if len(plans) == 1 else (0, None)

    monkeypatch.setattr(gpu_check, "watch_bench", watch)
    result = gpu_check.stage_bench(ctx, 200)
    names = [name for name, _, _ in gpu_check.bench_plan(gpu=False)]
    assert plans == [names, names[names.index("attention") + 1:]]
    assert result["status"] == "fail" and result["hung"] == ["attention"]
    assert "hung, stopped: attention" in result["summary"] and "missing: attention" not in result["summary"]


def test_only_takes_known_stages():
    assert gpu_check._parse_only("bench,tests") == ["bench", "tests"]
    with pytest.raises(Exception, match="subset of build,ceilings"):
        gpu_check._parse_only("tests,benchmark")


def test_autotune_summary_fails_on_an_autotuner_no_case_reaches():
    reached = {"autotuners": {"attention_fwd._attn_fwd": ["A", "B"]},
               "records": [dict(case="c", kernel="attention_fwd._attn_fwd", config=c, status="pass", error=0.0,
                                message=None) for c in ("A", "B")], "cases": []}
    assert gpu_autotune.summarize([reached])["status"] == "pass"
    new_kernel = {"autotuners": {"norms._new_kernel": ["C"]}, "records": [], "cases": []}
    summary = gpu_autotune.summarize([reached, new_kernel])
    assert summary["status"] == "fail" and summary["counts"]["not covered"] == 1
    failing = dict(reached, records=reached["records"][:1] + [dict(reached["records"][1], status="error",
                                                                    message="OutOfResources")])
    assert gpu_autotune.summarize([failing])["configs"]["attention_fwd._attn_fwd [B]"]["status"] == "fail"


@pytest.mark.parametrize("text,rc,status", [
    ("========= COMPUTE-SANITIZER\n========= Error: Device not supported\n", 1, "refused"),
    ("ok    layer_norm\n========= ERROR SUMMARY: 0 errors\n", 0, "pass"),
    ("========= Invalid __global__ read of size 16 bytes\n========= ERROR SUMMARY: 3 errors\n", 99, "fail"),
    ("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", 0, "pass"),
    ("FAIL  softmax 2x5x7 bf16: max rel err 1.00e+00\n========= ERROR SUMMARY: 0 errors\n", 1, "fail"),
    ("partial output", None, "fail"),
])
def test_sanitizer_output_is_judged(text, rc, status):
    assert gpu_check.parse_sanitizer(text, rc)[0] == status


def test_sanitize_driver_cases_run_on_the_reference_backend(capsys):
    # The program compute-sanitizer runs: its cases and checks, on the CPU through backend torch.
    assert gpu_sanitize.main(["--backend", "torch", "--only", "1024"]) == 0
    assert capsys.readouterr().out.count("ok ") >= 4
    names = [case.name for case in gpu_sanitize.cases()]
    assert all(any(f"E={d} " in n for n in names) for d in gpu_sanitize.HEAD_DIMS)


def test_sm90_cases_run_forward_and_backward_switched_on():
    """The sm_90a switch is read by the extension at each call, the backward's included (its dK/dV
    kernel): a case's forward and backward both run inside its ``around`` context, and the sm_90a
    attention cases' context sets the switch."""
    import contextlib

    import torch

    from fasttx.cli import gpu_cases
    from fasttx.functional.attention import SM90_SWITCH

    inside, seen = [False], []

    @contextlib.contextmanager
    def around():
        inside[0] = True
        yield
        inside[0] = False

    def make(device):
        def call(impl, x):
            seen.append(("forward", inside[0]))
            out = impl.softmax(x, -1)
            out.register_hook(lambda grad: seen.append(("backward", inside[0])))
            return out
        return [torch.randn(3, 5, device=device, requires_grad=True)], call

    run, _ = gpu_cases.prepare(gpu_cases.OpCase("spy", torch.float32, make, around=around), "cpu")
    seen.clear()  # the reference's run
    run("torch")
    assert seen == [("forward", True), ("backward", True)]
    sm90 = [c for c in gpu_sanitize.cases() if "sm_90a" in c.name]
    assert len(sm90) == 12 and any("causal gqa" in c.name for c in sm90)
    assert sum("atomic dQ" in c.name for c in sm90) == 2 and any("mask" in c.name for c in sm90)
    assert {f"E={e} " for e in (64, 96, 128, 256)} == {f"E={c.name.split('E=')[1].split()[0]} " for c in sm90}
    assert any("dropout" in c.name and "mask" in c.name for c in sm90)
    for case in sm90:
        with case.around():
            assert os.environ.get(SM90_SWITCH) == "1"


def test_junit_counts_per_kernel_backend_and_dtype(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<testsuites><testsuite>
      <testcase classname="tests.ops.test_attention" name="test_x[33-100-torch.bfloat16-triton]"/>
      <testcase classname="tests.ops.test_attention" name="test_x[33-100-torch.float16-cuda]"><failure/></testcase>
      <testcase classname="tests.ops.test_softmax" name="test_y[cuda]"><skipped/></testcase>
      <testcase classname="tests.test_cli" name="test_z"/></testsuite></testsuites>""")
    parsed = gpu_check.parse_junit(str(xml))
    assert parsed["counts"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 1}
    assert parsed["by kernel"]["attention"]["triton"]["bfloat16"]["passed"] == 1
    assert parsed["by kernel"]["attention"]["cuda"]["float16"]["failed"] == 1
    assert parsed["by kernel"]["softmax"]["cuda"]["any dtype"]["skipped"] == 1
    assert parsed["failures"] == ["tests.ops.test_attention::test_x[33-100-torch.float16-cuda]"]


def _row(op, provider, direction, ms, correct=True, percent=None, **label):
    return {"op": op, "provider": provider, "pass": direction, "ms": ms, "correct": correct, "% of peak": percent,
            **label}


def test_targets_are_judged_on_the_qualifying_rows_against_same_run_baselines():
    norm = dict(rows=16384, hidden=4096)
    attention = dict(batch=4, seq=4096, heads=16, head_dim=128, causal=False, dropout=0.0)
    dropout = dict(attention, dropout=0.1)
    mha = dict(batch=8, seq=2048, d_model=1024, heads=16, attention="self", need_weights=False)
    rows = [
        _row("layer_norm", "torch eager", "fwd+bwd", 3.0, **norm),
        _row("layer_norm", "fasttx triton", "fwd+bwd", 1.5, **norm),  # 2.0x: meets 1.5x
        _row("layer_norm", "torch eager", "bwd", 2.0, **norm),
        _row("layer_norm", "fasttx triton", "bwd", 2.5, **norm),  # slower than eager: fails
        _row("layer_norm", "fasttx triton", "fwd", 0.5, percent=93.0, **norm),
        _row("layer_norm", "fasttx triton", "fwd", 0.1, percent=50.0, rows=16384, hidden=1024),  # hidden < 4096
        _row("attention", "torch sdpa flash", "fwd", 0.5, **dropout),  # not the fwd target's baseline
        _row("attention", "torch sdpa flash", "fwd", 1.2, **attention),
        _row("attention", "fasttx triton", "fwd", 1.0, **attention),  # 1.2x: meets it exactly
        _row("attention", "torch sdpa flash", "fwd+bwd", 4.0, **attention),
        _row("attention", "fasttx triton", "fwd+bwd", 3.0, correct=False, **attention),  # wrong: no figure
        _row("attention", "fasttx cuda", "fwd+bwd", 3.0, **attention),
        _row("attention", "fasttx cuda", "fwd+bwd", 3.3, **dropout),  # 10% slower: meets 15%
        _row("mha", "torch.nn", "fwd+bwd", 13.0, **mha),
        _row("mha", "fasttx triton", "fwd+bwd", 10.0, **mha),
    ]
    profile = {"config": {"d_model": 1024, "layers": 16, "seq": 2048, "batch": 8, "dtype": "bfloat16", "backend": "auto"},
               "variants": {"torch": {"tokens_per_s": 100.0, "peak_memory_mb": 1000.0},
                            "fasttx": {"tokens_per_s": 130.0, "peak_memory_mb": 900.0}}}
    found = {(t["check"], t["backend"]): t for t in gpu_targets.evaluate(rows, profile)}
    triton = {check: t for (check, backend), t in found.items() if backend in ("triton", "auto")}
    assert triton["layer_norm fwd, share of copy bandwidth"]["status"] == "pass"  # 0.93 / 0.9
    assert triton["layer_norm fwd+bwd vs torch eager"]["ratio"] == pytest.approx(2.0 / 1.5, abs=1e-3)
    assert triton["layer_norm bwd vs torch eager"]["status"] == "fail"
    assert triton["softmax fwd+bwd vs torch eager"]["status"] == "no data"
    assert triton["attention fwd vs torch sdpa flash (E=128, seq>=4096)"]["status"] == "pass"
    assert triton["attention fwd+bwd vs torch sdpa flash (E=128, seq>=4096)"]["status"] == "no data"
    assert triton["attention fwd+bwd with dropout vs without (E=128, seq>=4096)"]["status"] == "no data"
    cost = found["attention fwd+bwd with dropout vs without (E=128, seq>=4096)", "cuda"]
    assert cost["figure"] == pytest.approx(3.0 / 3.3, abs=1e-3) and cost["status"] == "pass"
    mha_check = next(c for c in triton if c.startswith("MHA"))
    assert triton[mha_check]["figure"] == pytest.approx(1.3) and triton[mha_check]["status"] == "pass"
    assert triton["GPT step tokens/s vs torch eager (1024, 16 layers, seq 2048)"]["status"] == "pass"
    assert triton["GPT step peak memory vs torch eager"]["ratio"] == pytest.approx(1000 / 900, abs=1e-3)


def test_status_page_from_a_gpu_report_names_the_device_per_kernel():
    counts = {"passed": 12, "failed": 0, "error": 0, "skipped": 0}
    report = {
        "dry_run": False, "date": "2026-12-01T00:00:00+00:00", "git": {"commit": "0" * 40, "dirty": False},
        "device": {"name": "NVIDIA H200", "gpu": True, "capability": "9.0", "sm_count": 132, "memory_gib": 139.8},
        "versions": {"python": "3.12.3", "torch": "2.11.0+cu130", "triton": "3.6.0"},
        "stages_selected": ["tests", "sanitize", "bench"],
        "stages": {
            "tests": {"status": "pass", "summary": "", "failures": [],
                      "by kernel": {"norms": {"triton": {"bfloat16": counts}, "cuda": {"bfloat16": counts}},
                                    "attention": {"triton": {"bfloat16": counts}}}},
            "sanitize": {"status": "fail", "summary": "", "tools": {
                "memcheck": {"status": "fail", "errors": 2, "summary": "2 errors",
                             "kernels with errors": ["attention_fwd_kernel"]},
                "racecheck": {"status": "refused", "errors": None, "summary": "", "kernels with errors": []}}},
            "bench": {"status": "pass", "summary": "", "targets": [
                {"check": "layer_norm fwd+bwd vs torch eager", "backend": "cuda", "figure": 1.8, "target": 1.5,
                 "ratio": 1.2, "status": "pass", "where": "hidden=4096", "unit": "x"}]},
        },
    }
    page = gpu_status.status_markdown(report)
    assert "No kernel of fasttx has run on a GPU yet" not in page
    assert "| norms | cuda | NVIDIA H200 | 12 passed, 0 failed (bfloat16) |" in page
    assert "memcheck pass, racecheck refused | layer_norm fwd+bwd vs torch eager: 1.8 (ratio 1.2, pass) |" in page
    assert "| attention | cuda | no | not run |" in page and "memcheck fail" in page


def test_gpu_coverage_names_each_kernel_backend_dtype_without_a_passing_test():
    passed = {"passed": 1}
    full = {k: {b: {d: passed for d in ("float32", "float16", "bfloat16")} for b in ("triton", "cuda")}
            for k in ("norms", "softmax", "attention")}
    assert gpu_check.coverage_gaps(full) == []
    del full["attention"]["triton"]["bfloat16"], full["attention"]["cuda"]["float32"]
    full["norms"]["cuda"]["float16"] = {"passed": 0, "failed": 3}
    assert gpu_check.coverage_gaps(full) == ["norms/cuda/float16", "attention/triton/bfloat16"]
