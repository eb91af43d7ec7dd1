"""``make gpu-check``: one command that turns a lent GPU into committed, checked figures.

    python3 -m fasttx.cli.gpu_check [--out DIR] [--budget SECONDS] [--only STAGE,...] [--dry-run]

Stages, in order (``--only`` picks some; the names below):
  build     install fasttx editable into this python3 (pip --no-index --no-deps --no-build-isolation,
            nothing downloaded) and build fasttx._C for the visible GPU only (TORCH_CUDA_ARCH_LIST from
            its compute capability, "9.0a" on Hopper; MAX_JOBS = all cores), or reuse a build that
            loads; prints the build time. Added to --only on a GPU machine where fasttx is not
            installed from this tree: every other stage imports it
  ceilings  device-to-device copy GB/s (read + write) and an 8192^3 bf16 GEMM TFLOP/s, random data
  tests     the test suite on CUDA tensors (every kernel backend and dtype; pytest-xdist and a
            per-test timeout when installed), but CPU_ONLY_TESTS; pass/fail counts per kernel, backend
            and dtype
  hazards   tests/test_gpu_hazards.py alone (grid limits, re-specialisation, autotune key, shared
            memory, CUDA-graph dropout, past-2^31 indexing), one test at a time
  autotune  every Triton autotune config of every kernel forced once, checked against float64
            (fasttx.cli.gpu_autotune), in parallel shards
  sanitize  compute-sanitizer memcheck, racecheck and synccheck (in parallel) over
            fasttx.cli.gpu_sanitize, every CUDA kernel once per layout branch
  bench     headline shapes of `python -m fasttx bench` (norms, softmax, attention, the MHA module
            target, in this order) and `python -m fasttx profile` of the GPT training-step target,
            vs the targets; each op under a time limit, its share of the time left (see HEADLINE)
tests, hazards, autotune and sanitize check correctness and run at the same time; ceilings and bench
time things and run alone. A stage that would start with less than its minimum time left in
--budget (default 480 s of wall time) is skipped and the summary says which; running stages get the
time left as their timeout, less what the stages after them need.

Without a GPU (or with --dry-run) the same plumbing runs on the CPU: build, ceilings and sanitize
report "skipped: no GPU", tests run --tests (default the whole suite), autotune runs in the Triton
interpreter and bench on the torch backend, both on tiny shapes. Outputs in --out (at most 8 files, flat): summary.md, gpu_check.json
(versions, device, timings, every figure), bench.md, bench.json, bench.png, tests.log, stages.log.
The short summary table is printed last. ``python -m fasttx.cli.gpu_status`` renders
docs/gpu-status.md from gpu_check.json.
"""

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("build", "ceilings", "tests", "hazards", "autotune", "sanitize", "bench")
PARALLEL = ("tests", "hazards", "autotune", "sanitize")  # correctness only: may share the GPU
MIN_SECONDS = {"build": 30, "ceilings": 10, "tests": 60, "hazards": 30, "autotune": 30, "sanitize": 30, "bench": 60}
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
LOG_TAIL_BYTES = 1_000_000  # per stage log in stages.log
OUTPUT_FILES = ("summary.md", "gpu_check.json", "bench.md", "bench.json", "bench.png", "tests.log", "stages.log")
HAZARD_TESTS = "tests/test_gpu_hazards.py"
# What the tests stage leaves to CI: the files whose tests do the same on any machine, never touching
# the GPU: the CUDA kernels run on the CPU by the emulators (compiled again by every xdist worker, a
# quarter of the suite's tests and most of its CPU time), the compiled-code reports, gpu-check's own
# CPU dry run and the packaging.
CPU_ONLY_TESTS = ("tests/test_cuda_*_emulated.py", "tests/test_kernel_report.py", "tests/test_gpu_check.py",
                  "tests/test_packaging.py")
# The tests stage's order when it runs the whole suite (--tests tests): first what only a GPU run can check
# and has never been, the sm_90a attention kernels, then every op's tests, then the modules, so that a
# stage cut by its time loses the rest (pytest collects each file once; xdist hands tests out in
# collection order, and keeps the order of arguments that do not overlap: the rest of tests/ follows entry
# by entry, since tests/ itself would be collected in tree order).
FIRST_TESTS = ("tests/test_cuda_attention_sm90.py", "tests/ops", "tests/nn")
# A stage process past its time gets SIGINT, and this long to end, before SIGKILL: pytest ends its session as
# on Ctrl-C and still writes the JUnit report of the tests that ran.
INTERRUPT_GRACE_S = 10

# The headline benchmark, in run order: `python -m fasttx bench` shapes per op (GPU, then the CPU dry
# run), then the GPT step of `python -m fasttx profile`, each with its share of the stage's time. The
# first H200 run (2026-12-04) had 175 s for the stage and spent them on attention and MHA (their
# timing itself, estimated from bench.json's times, ~20 s and ~4 s: the rest went to torch.compile,
# a compile per shape, cold Triton autotuning and startup) and ran out in the GPT step: the norms and
# softmax never ran. Hence: the memory-bound ops first (a few seconds of timing each), then
# attention, whose cases at seq 4096 come first (any of them gives the attention targets their data:
# the seq 8192 ones are what a short time cuts), the MHA module target, and the GPT step, the
# costliest, last; no torch.compile baseline (no target is against it; `python -m fasttx bench`
# times it). Each op runs under --time-limit: its share of the time left, so that what an op leaves
# unused goes to those after it, and a slow op is cut (what was cut is reported) instead of starving
# the others. The stage's result keeps each op's seconds: the next run's shares can come from them.
# The norms: since 2026-12-06 also 4096x16384 (128 MB, the bytes of 16384x4096), the backward's two
# passes over 2048-column blocks, and 65536x256 (32 MB), short rows four to a forward program
# (benchmarks/notes/layer_norm.md, changes 2 and 4); on sm_90 4096x16384 also times "fasttx cuda (no
# clusters)" beside "fasttx cuda": the CUDA forward's and backward's rows split over a cluster of two
# blocks against the chunk walk (layer_norm.md, CUDA C++, the forward and the backward's long rows).
# Softmax: the wide shapes the targets need, and between them the cases that check the 2026-12-04
# kernel changes (benchmarks/notes/softmax.md): causal at 4096 columns (16384x4096: 4 heads) and
# short rows, which share programs (65536x256, also causal); 8 cases where there were 4 (32-128 MB
# each, memory-bound: short timings), hence a share of 3 instead of 2, the stage's time unchanged;
# since 2026-12-06 also 4096x32768 (256 MB), the loop path, whose column blocks are now pipelined,
# and 4096x65536 (512 MB), where the loop path's persistent grid should keep the second pass in L2
# (softmax.md, change 1; 68 MB of rows were in flight before, over the 50 MB L2). On sm_90 those two
# also time "fasttx cuda (no clusters)" beside "fasttx cuda": the CUDA kernels' rows split over a thread
# block cluster (softmax.md, CUDA C++, last section) against the chunk walk, in the same run.
# The CPU dry run's 64x16 is the same mix: short rows, causal. Attention's cases hold, beside "fasttx
# triton", "fasttx triton (deterministic=False)": the opt-in 5-product backward (atomic dQ), measured
# at the same shapes against the default (benchmarks/attention.py; one provider more of ~8), and on
# sm_90 "fasttx triton (pointers)": the kernels without TMA descriptors, forward and backward, against
# the default's TMA path (benchmarks/notes/attention.md, item 3's prediction; one more provider), and
# "fasttx triton (P V in step)": the forward's previous schedule against the default's deferred P V
# (item 1, step two's prediction; one more provider); on sm_90 also "fasttx cuda (sm_90a)" and, since
# 2026-12-06, "fasttx cuda (sm_90a, deterministic=False)": the CUDA sm_90a backward with atomic dQ
# against its deterministic pair (one more provider), and in the cases without causality, mask or dropout
# "fasttx cuda (sm_90a, 128-key blocks)": the sm_90a forward's previous 128-key tile against
# FlashAttention-3's 176-key one, now the default there (attention.md, "128 x 176"), and in the cases
# without mask or dropout "fasttx cuda (sm_90a, dQ without turns)": the dQ kernel without its consumers'
# turns against with them (attention.md, "dQ kernel's turns"). Each shape has four cases (benchmarks/attention.py,
# VARIANTS): no mask, causal, a key-padding mask (what the masked kernels cost against the unmasked:
# benchmarks/notes/attention.md's predictions for the Triton specialization and the sm_90a masked
# kernels) and dropout 0.1; the seq 4096 ones first.
HEADLINE = {
    "layer_norm": ("16384x4096,8192x8192,4096x16384,65536x256", "4x64", 1.5),
    "rms_norm": ("16384x4096,8192x8192,4096x16384,65536x256", "4x64", 1.5),
    "softmax": ("16384x4096,65536x256,4096x16384,4096x32768,4096x65536", "4x64,64x16", 3),
    "attention": ("4096x16x128,8192x16x128", "16x1x16", 4),
    "mha": ("2048x1024x16", "16x32x4", 2),
}
GPT = {"gpu": ["--d-model", "1024", "--layers", "16", "--heads", "16", "--seq", "2048", "--batch", "8",
               "--steps", "10", "--warmup", "3", "--profile-steps", "1"],
       "cpu": ["--d-model", "32", "--layers", "1", "--heads", "2", "--seq", "16", "--batch", "2",
               "--steps", "1", "--warmup", "1", "--profile-steps", "1"]}
GPT_SHARE = 4
BENCH_MARGIN_S = 10  # of the stage's time, what reading, judging and plotting the results take
# An op still running this long past its time limit is taken for hung (a kernel that never ends: the
# sm_90a attention kernels have not run on a GPU yet) and its process ended, the ops after it run in a
# new one: --time-limit is checked between cases, and one case of the largest shape takes seconds.
BENCH_HANG_GRACE_S = 30


# Process groups of the stage processes still running: ended with the driver (see _stop_children).
_RUNNING = set()


def _stop_children(signum, _frame):
    """A driver stopped from outside (timeout, Ctrl-C) ends its stages' process groups first: they run
    in sessions of their own, which a signal to the driver's group would not reach."""
    for pgid in list(_RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


class Context:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.gpu = _gpu_visible() and not args.dry_run
        self.work = tempfile.mkdtemp(prefix="gpu-check-")
        self.logs = {}  # stage -> log path
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not self.gpu:
            self.env["TRITON_INTERPRET"] = "1"
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # --dry-run on a GPU machine stays off it

    def left(self):
        return self.deadline - time.monotonic()

    def log(self, name):
        return self.logs.setdefault(name, os.path.join(self.work, f"{name}.log"))

    def start_process(self, cmd, log_name, env=None):
        """Start ``cmd`` in the repository root, in its own process group, output to a log."""
        log = open(self.log(log_name), "a")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                start_new_session=True)
        _RUNNING.add(proc.pid)
        proc.log_file = log
        return proc

    def stop(self, proc, why, grace=INTERRUPT_GRACE_S):
        """End ``proc``'s process group: SIGINT, then SIGKILL if it has not ended ``grace`` s later (0:
        SIGKILL at once); say why in its log."""
        if grace > 0:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log_file.write(f"\n[gpu-check: {why}, stopped]\n")

    def release(self, proc, rc):
        """Forget ``proc`` once it has ended, closing its log; returns ``rc``."""
        _RUNNING.discard(proc.pid)
        proc.log_file.close()
        return rc

    def finish(self, proc, timeout):
        """Wait for ``proc`` up to ``timeout`` s; on time out stop it. Its exit code, or None when it
        timed out."""
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            self.stop(proc, f"timed out after {timeout:.0f} s")
            rc = None
        return self.release(proc, rc)

    def run(self, cmd, log_name, timeout, env=None):
        return self.finish(self.start_process(cmd, log_name, env), timeout)


def _gpu_visible():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _result(status, summary, **extra):
    return {"status": status, "summary": summary, **extra}


def _skipped(reason):
    return _result("skipped", f"skipped: {reason}")


def _tail(path, limit=4000):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        f.seek(max(0, os.path.getsize(path) - limit))
        return f.read()


# ---- stages ------------------------------------------------------------------------------------

def _arch():
    """The visible GPU's TORCH_CUDA_ARCH_LIST, as the first-use build picks it (9.0a on sm_90)."""
    import torch

    from .. import _build

    return _build.arch_list_for([torch.cuda.get_device_capability()])


def _probe_install(ctx):
    """(fasttx importable from this tree with its kernels and benchmarks, _C loaded, text)."""
    code = ("import fasttx, fasttx.triton_kernels, fasttx.benchmarks; from fasttx import _extension;"
            "ok, why = _extension.load(allow_jit_build=False); print(fasttx.__file__); print(ok, why)")
    proc = subprocess.run([ctx.python, "-c", code], cwd="/", capture_output=True, text=True, env=ctx.env)
    lines = proc.stdout.strip().splitlines()
    ours = proc.returncode == 0 and bool(lines) and lines[0].startswith(os.path.join(ROOT, "fasttx"))
    return ours, ours and lines[-1].startswith("True"), (proc.stdout + proc.stderr).strip()[-2000:]


def stage_build(ctx):
    if not ctx.gpu:
        return _skipped("no GPU")
    installed, loaded, text = _probe_install(ctx)
    arch = _arch()
    if installed and loaded and not ctx.args.rebuild:
        ctx.env["TORCH_CUDA_ARCH_LIST"] = arch  # as built by an earlier gpu-check on this machine
        return _result("pass", f"reused the installed build (fasttx._C loads; --rebuild to build for {arch})",
                       figures={"build_s": 0.0, "arch": arch, "reused": True})
    jobs = str(os.cpu_count() or 1)
    env = {"FASTTX_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": jobs}
    begin = time.monotonic()
    rc = ctx.run([ctx.python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                  "--no-cache-dir", "-e", "."], "build", ctx.left() - 60, env)
    seconds = time.monotonic() - begin
    print(f"gpu-check: build for sm_{arch.replace('.', '')} with MAX_JOBS={jobs}: {seconds:.0f} s (exit {rc})",
          flush=True)
    installed, loaded, text = _probe_install(ctx)
    figures = {"build_s": round(seconds, 1), "arch": arch, "reused": False, "jobs": int(jobs)}
    if rc == 0 and installed and loaded:
        ctx.env["TORCH_CUDA_ARCH_LIST"] = arch  # what the tests expect the extension to hold
        return _result("pass", f"built for sm_{arch.replace('.', '')} in {seconds:.0f} s ({jobs} jobs)", figures=figures)
    return _result("fail", f"build failed after {seconds:.0f} s (exit {rc}): {text[-300:]}", figures=figures)


CEILINGS_CODE = """
import json, sys
from fasttx.benchmarks import common
print(json.dumps(common.measured_peaks("cuda")))
"""


def stage_ceilings(ctx):
    if not ctx.gpu:
        return _skipped("no GPU")
    path = ctx.log("ceilings")
    rc = ctx.run([ctx.python, "-c", CEILINGS_CODE], "ceilings", min(120, ctx.left()))
    match = re.findall(r"^\{.*\}$", _tail(path), re.M)
    if rc != 0 or not match:
        return _result("fail", f"exit {rc}: {_tail(path, 300)}")
    peaks = json.loads(match[-1])
    return _result("pass", f"copy {peaks['GB/s']:.0f} GB/s (read + write), bf16 GEMM {peaks['TFLOP/s']:.0f} TFLOP/s",
                   figures=peaks)


def _pytest_command(ctx, name, targets, workers):
    # --durations: the slowest tests' times in the log, for choosing --test-timeout from the next run.
    cmd = [ctx.python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--durations=25",
           f"--junitxml={os.path.join(ctx.work, name + '.xml')}", *targets]
    if importlib.util.find_spec("pytest_timeout"):
        # The thread method: a kernel that never ends (an mbarrier wait of the sm_90a kernels, say, none of
        # which has run yet) blocks its test inside a CUDA call, where the default signal method's handler
        # never runs; the thread method dumps the stacks and ends the worker, which xdist reports as a
        # failed test and replaces, and the suite goes on.
        cmd += ["--timeout", str(ctx.args.test_timeout), "--timeout-method", "thread"]
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", str(workers)] if workers > 1 else ["-p", "no:xdist"]
    return cmd


# test file -> kernel, for the per-kernel counts
KERNEL_OF_FILE = {"test_layer_norm": "norms", "test_softmax": "softmax", "test_attention": "attention",
                  "test_gpu_hazards": "hazards"}


def parse_junit(path):
    """{"counts": {passed, failed, error, skipped}, "by kernel": {kernel: {backend: {dtype: counts}}},
    "failures": [test ids]} from a JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    by_kernel, failures = {}, []
    if not os.path.exists(path):
        return {"counts": counts, "by kernel": by_kernel, "failures": failures}
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.get("name") is None:  # the test a SIGINT interrupted: pytest writes it with no name or result
            continue
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        counts[outcome] += 1
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if outcome in ("failed", "error"):
            failures.append(test_id)
        kernel = KERNEL_OF_FILE.get(case.get("classname", "").split(".")[-1])
        params = re.split(r"[-\[\]]", case.get("name", ""))
        backend = next((p for p in params if p in ("triton", "cuda", "torch")), None)
        if kernel and backend:
            dtype = next((p.replace("torch.", "") for p in params if p.startswith("torch.")), "any dtype")
            cell = by_kernel.setdefault(kernel, {}).setdefault(backend, {}).setdefault(
                dtype, {"passed": 0, "failed": 0, "error": 0, "skipped": 0})
            cell[outcome] += 1
    return {"counts": counts, "by kernel": by_kernel, "failures": failures}


def _tests_result(parsed, rc):
    c = parsed["counts"]
    text = f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped"
    if rc is None:
        return _result("fail", f"timed out: {text} before it stopped", **parsed)
    ok = rc == 0 and c["failed"] + c["error"] == 0 and c["passed"] > 0
    return _result("pass" if ok else "fail", text + ("" if rc in (0, 1) else f" (pytest exit {rc})"), **parsed)


# (kernel, backend, dtype) that a GPU run of the whole suite must pass tests in: every kernel on both
# kernel backends in every dtype, bf16 attention included; CUDA attention has no fp32 kernel.
GPU_COVERAGE = [(kernel, backend, dtype) for kernel in ("norms", "softmax", "attention") for backend in ("triton", "cuda")
                for dtype in ("float32", "float16", "bfloat16")
                if not (kernel, backend, dtype) == ("attention", "cuda", "float32")]


def coverage_gaps(by_kernel):
    """The GPU_COVERAGE entries, as "kernel/backend/dtype", with no passing test in ``by_kernel``."""
    return [f"{k}/{b}/{d}" for k, b, d in GPU_COVERAGE if not by_kernel.get(k, {}).get(b, {}).get(d, {}).get("passed")]


def _suite_in_order(ignored):
    """tests/ as pytest arguments: FIRST_TESTS, then its other test files and folders of test files by
    name, but the ``ignored`` files."""
    def has_tests(path):
        name = os.path.basename(path)
        return (name.startswith("test_") and name.endswith(".py") if os.path.isfile(path)
                else bool(glob.glob(os.path.join(path, "**", "test_*.py"), recursive=True)))

    rest = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "*")) if has_tests(p))
    return list(FIRST_TESTS) + [p for p in rest if p not in FIRST_TESTS and p not in ignored]


def stage_tests(ctx, timeout):
    workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if ctx.gpu else 1
    ignored = [HAZARD_TESTS] + sorted(os.path.relpath(p, ROOT) for pattern in CPU_ONLY_TESTS
                                      for p in glob.glob(os.path.join(ROOT, pattern)))
    suite = _suite_in_order(ignored) if ctx.args.tests == "tests" else ctx.args.tests.split()
    targets = suite + [arg for path in ignored for arg in ("--ignore", path)]
    # One config per attention key (the autotune stage runs them all): timing every config of every
    # new key in every worker would take most of the budget and pick by noise on a shared GPU.
    rc = ctx.run(_pytest_command(ctx, "tests", targets, workers), "tests", timeout, {"FASTTX_TRITON_AUTOTUNE": "0"})
    parsed = parse_junit(os.path.join(ctx.work, "tests.xml"))
    result = _tests_result(parsed, rc)
    if ctx.gpu and ctx.args.tests == "tests":
        result["not covered"] = missing = coverage_gaps(parsed["by kernel"])
        if missing:
            result["status"] = "fail"
            result["summary"] += f"; no passing test for {', '.join(missing)}"
    return result


def stage_hazards(ctx, timeout):
    rc = ctx.run(_pytest_command(ctx, "hazards", [HAZARD_TESTS], 1), "hazards", timeout)
    parsed = parse_junit(os.path.join(ctx.work, "hazards.xml"))
    if not ctx.gpu:
        return _result("skipped", f"skipped: no GPU ({parsed['counts']['skipped']} GPU-only tests)", **parsed)
    return _tests_result(parsed, rc)


def stage_autotune(ctx, timeout):
    from . import gpu_autotune

    shards = min(8, os.cpu_count() or 1) if ctx.gpu else 1
    paths = [os.path.join(ctx.work, f"autotune_{i}.json") for i in range(shards)]
    procs = [ctx.start_process([ctx.python, "-m", "fasttx.cli.gpu_autotune", "--shard", f"{i}/{shards}",
                                "--out", path], "autotune", {"FASTTX_TRITON_AUTOTUNE": "1"})
             for i, path in enumerate(paths)]
    end = time.monotonic() + timeout
    codes = [ctx.finish(p, end - time.monotonic()) for p in procs]
    results = [json.load(open(p)) for p in paths if os.path.exists(p)]
    if not results:
        return _result("fail", f"no shard finished a case (exits {codes}): {_tail(ctx.log('autotune'), 300)}")
    summary = gpu_autotune.summarize(results)
    c = summary["counts"]
    text = (f"{c['pass']}/{sum(c.values())} configs of {len(summary['kernels'])} autotuned kernels pass"
            + (f", {c['fail']} fail" if c["fail"] else "") + (f", {c['not covered']} not covered" if c["not covered"] else "")
            + (f"; shard exits {codes} (None: timed out)" if any(code != 0 for code in codes) else ""))
    status = summary.pop("status")
    status = status if all(code == 0 for code in codes) else "fail"
    return _result(status, text, **summary)


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and home and os.path.exists(os.path.join(home, "bin", "compute-sanitizer")):
            found = os.path.join(home, "bin", "compute-sanitizer")
    return found


def parse_sanitizer(text, rc):
    """(status, errors, summary) of one compute-sanitizer run's output."""
    if "Device not supported" in text or "error 999" in text.lower():
        return "refused", None, "the tool refused the device (Device not supported): not checked"
    totals = [int(n) for n in re.findall(r"(?:ERROR|RACECHECK|SYNCCHECK) SUMMARY: (\d+)", text)]
    errors = sum(totals) if totals else None
    failed_cases = re.findall(r"^(?:FAIL|ERROR) .*$", text, re.M)
    if rc is None:
        done = len(re.findall(r"^(?:ok|FAIL|ERROR) ", text, re.M))
        return "fail", errors, f"timed out after {done} cases, {len(failed_cases)} failed, {errors or 0} errors so far"
    if errors is None:
        return "fail", None, f"no sanitizer summary (exit {rc})"
    if errors or failed_cases or rc != 0:
        return "fail", errors, f"{errors} errors, {len(failed_cases)} failed cases (exit {rc})"
    return "pass", 0, "0 errors"


def stage_sanitize(ctx, timeout):
    if not ctx.gpu:
        return _skipped("no GPU")
    tool = _sanitizer()
    if tool is None:
        return _skipped("compute-sanitizer not found")
    end = time.monotonic() + timeout
    driver = [ctx.python, "-m", "fasttx.cli.gpu_sanitize"]
    env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # memcheck sees each tensor's own bounds

    def command(name, filtered=True):
        return [tool, "--tool", name, "--error-exitcode", "99", "--print-limit", "20",
                *(["--kernel-name", "kns=fasttx"] if filtered else []), *driver]

    procs = {name: ctx.start_process(command(name), f"sanitize_{name}", env) for name in SANITIZER_TOOLS}
    tools = {}
    for name, proc in procs.items():
        rc = ctx.finish(proc, end - time.monotonic())
        text = _tail(ctx.log(f"sanitize_{name}"), 200_000)
        if rc not in (None, 0) and "kernel-name" in text and "SUMMARY" not in text:  # an option this version lacks
            rc = ctx.run(command(name, filtered=False), f"sanitize_{name}", end - time.monotonic(), env)
            text = _tail(ctx.log(f"sanitize_{name}"), 200_000)
        status, errors, summary = parse_sanitizer(text, rc)
        kernels = sorted(set(re.findall(r"fasttx::(?:\w+::)*(\w+_kernel)", text))) if errors else []
        tools[name] = {"status": status, "errors": errors, "summary": summary, "kernels with errors": kernels}
    statuses = {t["status"] for t in tools.values()}
    status = "fail" if "fail" in statuses else "pass" if statuses == {"pass"} else "refused"
    return _result(status, "; ".join(f"{n} {t['summary']}" for n, t in tools.items()), tools=tools)


def bench_plan(gpu, bench_dir="bench", profile_dir="profile"):
    """[(name, argv of `python -m fasttx`, share of the stage's time)], in run order (see HEADLINE)."""
    plan = [(op, ["bench", "--op", op, "--shapes", shapes[0 if gpu else 1], "--out", bench_dir, "--no-progress",
                  "--no-compile"] + ([] if gpu else ["--dtype", "float32", "--backends", "torch"]), shapes[2])
            for op, shapes in HEADLINE.items()]
    profile = ["profile", "--model", "gpt", *GPT["gpu" if gpu else "cpu"], "--out", profile_dir]
    return plan + [("gpt step", profile + ([] if gpu else ["--dtype", "float32"]), GPT_SHARE)]


def bench_worker(plan, seconds):
    """The bench stage's process: the commands of ``plan`` (bench_plan) in order within ``seconds``,
    each bench under --time-limit its share of the time left; prints what each took."""
    end = time.monotonic() + seconds  # from the process's start: imports included
    from fasttx.cli import main

    for i, (name, argv, share) in enumerate(plan):
        cap = max(1.0, (end - time.monotonic()) * share / sum(later for _, _, later in plan[i:]))
        argv = argv + (["--time-limit", f"{cap:.0f}"] if argv[0] == "bench" else [])
        print("$ python -m fasttx " + " ".join(argv), flush=True)
        print(f"gpu-check bench: {name} starts, its {cap:.0f} s", flush=True)  # for watch_bench
        begin = time.monotonic()
        try:
            main(argv)
        except SystemExit as e:  # the bench exits non-zero on a wrong result: report it and go on
            print(f"exit: {e.code}", flush=True)
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}", flush=True)
        print(f"gpu-check bench: {name} took {time.monotonic() - begin:.1f} s of its {cap:.0f} s", flush=True)


def watch_bench(ctx, cmd, end, grace=BENCH_HANG_GRACE_S, poll=0.5):
    """Run ``cmd`` (bench_worker's process, or one printing its lines) logging to ctx.log("bench") until
    ``end`` (time.monotonic()), ending its process group if an op runs ``grace`` s past its time limit.
    (exit code or None when stopped, the name of the op it stopped in or None). Watched from here, not
    from a thread of the worker: a thread there needs the GIL, which a hung call may hold."""
    path = ctx.log("bench")
    seen = os.path.getsize(path) if os.path.exists(path) else 0  # earlier processes' lines are not this one's
    proc = ctx.start_process(cmd, "bench")
    started = {}  # op -> (when its start line was seen, its seconds)
    while True:
        try:
            return ctx.release(proc, proc.wait(timeout=poll)), None
        except subprocess.TimeoutExpired:
            pass
        with open(path, "rb") as log:
            log.seek(seen)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        seen += len(complete)
        text = complete.decode(errors="replace")
        now = time.monotonic()
        for name, seconds in re.findall(r"^gpu-check bench: (.+) starts, its ([\d.]+) s$", text, re.M):
            started[name] = (now, float(seconds))
        for name in re.findall(r"^gpu-check bench: (.+) took [\d.]+ s of its [\d.]+ s$", text, re.M):
            started.pop(name, None)
        hung = next((name for name, (since, seconds) in started.items() if now - since > seconds + grace), None)
        if hung is not None or now > end:
            # SIGKILL at once: a hung op does not answer SIGINT, and an op cut short writes no results
            ctx.stop(proc, f"{hung} ran {grace:.0f} s past its {started[hung][1]:.0f} s" if hung is not None
                     else "the stage's time ran out", grace=0)
            return ctx.release(proc, None), hung


def stage_bench(ctx, timeout):
    from . import gpu_targets

    bench_dir, profile_dir = os.path.join(ctx.work, "bench"), os.path.join(ctx.work, "profile")
    plan = bench_plan(ctx.gpu, bench_dir, profile_dir)
    end = time.monotonic() + timeout
    hung = []
    while True:  # the ops after a hung one run in a new process
        left = end - time.monotonic() - BENCH_MARGIN_S
        code = f"from fasttx.cli.gpu_check import bench_worker; bench_worker({plan!r}, {left!r})"
        rc, stuck = watch_bench(ctx, [ctx.python, "-c", code], end - BENCH_MARGIN_S / 2)
        if stuck is None:
            break
        hung.append(stuck)
        plan = plan[[name for name, _, _ in plan].index(stuck) + 1:]
        if not plan or end - time.monotonic() - BENCH_MARGIN_S < MIN_SECONDS["bench"] / 2:
            break
    rows, cut = [], {}
    for path in sorted(glob.glob(os.path.join(bench_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        rows += data["rows"]
        if data["meta"].get("cut"):
            cut[data["rows"][0]["op"]] = data["meta"]["cut"]
    profile = None
    if os.path.exists(os.path.join(profile_dir, "profile.json")):
        with open(os.path.join(profile_dir, "profile.json")) as f:
            profile = json.load(f)
    seconds = {name: {"took": float(took), "cap": float(cap)} for name, took, cap in re.findall(
        r"^gpu-check bench: (.+) took ([\d.]+) s of its ([\d.]+) s$", _tail(ctx.log("bench"), LOG_TAIL_BYTES), re.M)}
    targets = gpu_targets.evaluate(rows, profile)
    wrong = sorted({f"{r['op']} {r['provider']}" for r in rows if r["correct"] is False})
    reports = [p for op in HEADLINE for p in sorted(glob.glob(os.path.join(bench_dir, f"{op}_*.md")))]
    reports += [os.path.join(profile_dir, "profile.md")] if profile else []
    with open(os.path.join(ctx.work, "bench.md"), "w") as out:
        for path in reports:
            out.write(open(path).read() + "\n")
    with open(os.path.join(ctx.work, "bench.json"), "w") as f:
        json.dump({"rows": rows, "profile": profile, "targets": targets, "cut": cut, "seconds per op": seconds},
                  f, indent=1, default=str)
    gpu_targets.plot(rows, targets, os.path.join(ctx.work, "bench.png"))
    missing = [op for op in HEADLINE if not any(r["op"] == op for r in rows)] + ([] if profile else ["gpt step"])
    missing = [op for op in missing if op not in hung]
    met = sum(t["status"] == "pass" for t in targets)
    text = (f"{len(rows)} rows, {met}/{len(targets)} targets met" + (f"; wrong: {', '.join(wrong)}" if wrong else "")
            + (f"; hung, stopped: {', '.join(hung)}" if hung else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; cut by its time limit: {', '.join(f'{op} {len(cases)} of its cases' for op, cases in cut.items())}"
               if cut else "") + ("" if rc == 0 or (rc is None and stuck is not None) else f" (exit {rc})"))
    return _result("fail" if wrong or missing or hung or rc != 0 else "pass", text, targets=targets, cut=cut, hung=hung,
                   **{"seconds per op": seconds})


# ---- driver ------------------------------------------------------------------------------------

def _versions():
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda (torch build)": torch.version.cuda}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    for name, cmd in (("nvcc", ["nvcc", "--version"]),
                      ("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            release = re.search(r"release ([\d.]+)", out)  # nvcc: "... release 13.0, V13.0.88"
            versions[name] = release.group(1) if release else out.splitlines()[0] if out else None
        except (OSError, subprocess.TimeoutExpired):
            versions[name] = None
    return versions


def _device(ctx):
    import torch

    if not ctx.gpu:
        return {"name": f"cpu ({os.cpu_count()} cores)", "gpu": False}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "gpu": True, "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "cores": os.cpu_count()}


def _git():
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _run_stage(ctx, name, runner, *args):
    begin = time.monotonic()
    print(f"gpu-check: {name} ...", flush=True)
    try:
        result = runner(ctx, *args)
    except Exception as e:  # one broken stage must not take the others down
        result = _result("fail", f"{type(e).__name__}: {e}")
    result["seconds"] = round(time.monotonic() - begin, 1)
    print(f"gpu-check: {name}: {result['status']} ({result['seconds']:.0f} s) {result['summary']}", flush=True)
    return result


def run(args):
    ctx = Context(args)
    ctx.results = results = {}
    selected = [s for s in STAGES if s in args.only]
    if ctx.gpu and "build" not in selected and not all(_probe_install(ctx)[:2]):
        # Every other stage imports the installed fasttx: a fresh machine needs the build first.
        print("gpu-check: fasttx is not installed from this tree with a loadable fasttx._C: adding stage build",
              flush=True)
        selected.insert(0, "build")
        args.only = [*args.only, "build"]
    for name in ("build", "ceilings"):
        if name in selected:
            if name != "build" and results.get("build", {}).get("status") == "fail":
                results[name] = _skipped("the build failed")
            elif ctx.left() < MIN_SECONDS[name]:
                results[name] = _skipped(f"budget: {ctx.left():.0f} s left, needs {MIN_SECONDS[name]}")
            else:
                results[name] = _run_stage(ctx, name, globals()[f"stage_{name}"])
            _write_outputs(ctx, results, args)  # so that a run stopped from outside leaves its results
    build_failed = results.get("build", {}).get("status") == "fail"
    group = [s for s in PARALLEL if s in selected]
    reserve = args.bench_seconds if "bench" in selected else 0
    timeout = ctx.left() - reserve - 5 - INTERRUPT_GRACE_S
    if group:
        import concurrent.futures

        runnable = []
        for name in group:
            if build_failed:
                results[name] = _skipped("the build failed")
            elif timeout < MIN_SECONDS[name]:
                results[name] = _skipped(f"budget: {timeout:.0f} s left for it, needs {MIN_SECONDS[name]}")
            else:
                runnable.append(name)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(runnable))) as pool:
            futures = {name: pool.submit(_run_stage, ctx, name, globals()[f"stage_{name}"], timeout)
                       for name in runnable}
            for name, future in futures.items():
                results[name] = future.result()
        _write_outputs(ctx, results, args)
    if "bench" in selected:
        if build_failed:
            results["bench"] = _skipped("the build failed")
        elif ctx.left() - 5 < MIN_SECONDS["bench"]:
            results["bench"] = _skipped(f"budget: {ctx.left():.0f} s left, needs {MIN_SECONDS['bench']}")
        else:
            results["bench"] = _run_stage(ctx, "bench", stage_bench, ctx.left() - 5)
    return ctx, results


def _write_outputs(ctx, results, args):
    from . import gpu_status

    os.makedirs(args.out, exist_ok=True)
    if not hasattr(ctx, "about"):
        ctx.about = {"git": _git(), "device": _device(ctx), "versions": _versions()}
    skipped = [n for n in STAGES if n in args.only and results.get(n, {}).get("status") == "skipped"]
    report = {
        "schema": 1, "dry_run": not ctx.gpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python3 -m fasttx.cli.gpu_check"] + sys.argv[1:]), **ctx.about,
        "budget_s": args.budget,
        "wall_s": round(time.monotonic() - ctx.start, 1), "stages_selected": [s for s in STAGES if s in args.only],
        "stages_skipped": skipped, "stages": results,
    }
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(gpu_status.summary_markdown(report))
    for name in ("bench.md", "bench.json", "bench.png"):
        if os.path.exists(os.path.join(ctx.work, name)):
            shutil.copy(os.path.join(ctx.work, name), os.path.join(args.out, name))
    for out_name, stages in (("tests.log", ("tests", "hazards")),
                             ("stages.log", ("build", "ceilings", "autotune", *[f"sanitize_{t}" for t in SANITIZER_TOOLS],
                                             "bench"))):
        with open(os.path.join(args.out, out_name), "w") as out:
            for stage in stages:
                if stage in ctx.logs:
                    out.write(f"===== {stage} =====\n{_tail(ctx.logs[stage], LOG_TAIL_BYTES)}\n")
    return report


def _parse_only(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated subset of {','.join(STAGES)}, got {text!r}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m fasttx.cli.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-check-out", help="folder for the outputs (default gpu-check-out)")
    parser.add_argument("--budget", type=float, default=480, help="wall-time budget in seconds (default 480)")
    parser.add_argument("--only", type=_parse_only, default=list(STAGES),
                        help=f"comma-separated stages to run (default all: {','.join(STAGES)})")
    parser.add_argument("--tests", default="tests", help="pytest targets of the tests stage (default: tests)")
    parser.add_argument("--test-timeout", type=int, default=300, help="per-test timeout in seconds (default 300)")
    parser.add_argument("--bench-seconds", type=float, default=150,
                        help="of the budget, what the correctness stages leave to the bench (default 150)")
    parser.add_argument("--rebuild", action="store_true", help="build fasttx._C even when an installed one loads")
    parser.add_argument("--dry-run", action="store_true", help="the CPU plumbing run, even where a GPU is visible")
    args = parser.parse_args(argv)
    previous = {signum: signal.signal(signum, _stop_children) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        ctx, results = run(args)
        report = _write_outputs(ctx, results, args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    shutil.rmtree(ctx.work, ignore_errors=True)
    from . import gpu_status

    print(f"\nwrote {', '.join(n for n in OUTPUT_FILES if os.path.exists(os.path.join(args.out, n)))} in {args.out}\n")
    print(gpu_status.summary_table(report))
    return 1 if any(r["status"] == "fail" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
