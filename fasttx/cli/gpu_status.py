"""Text made from a ``make gpu-check`` report (its gpu_check.json): the run's summary.md, the short table
it prints last, and docs/gpu-status.md, the committed page that says which kernel has run on which GPU.

    python -m fasttx.cli.gpu_status GPU_CHECK_JSON [--out docs/gpu-status.md]
"""

import argparse
import sys

KERNELS = ("norms", "softmax", "attention")
BACKENDS = ("triton", "cuda")
TARGET_OPS = {"norms": ("layer_norm", "rms_norm"), "softmax": ("softmax",), "attention": ("attention", "MHA")}


def _fmt(value, spec=".3g"):
    return "-" if value is None else format(value, spec)


def _stage(report, name):
    return report["stages"].get(name, {"status": "not run", "summary": "not selected"})


def _provenance(report):
    v, d = report["versions"], report["device"]
    where = f"{d['name']}" + (f" (sm {d['capability']}, {d['sm_count']} SMs, {d['memory_gib']} GiB)" if d.get("gpu") else "")
    git = report.get("git") or {}
    return (f"{where}; {report['date']}; commit {(git.get('commit') or '?')[:12]}{' (dirty)' if git.get('dirty') else ''}; "
            f"python {v.get('python')}, torch {v.get('torch')} (CUDA {v.get('cuda (torch build)')}), "
            f"triton {v.get('triton')}, nvcc {v.get('nvcc') or '-'}, driver {v.get('driver') or '-'}")


def _targets_table(report):
    targets = _stage(report, "bench").get("targets") or []
    lines = ["| target | backend | figure | target | ratio | status | worst case |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {t['check']} | {t['backend']} | {_fmt(t['figure'])} | {t['target']} {t['unit']} | {_fmt(t['ratio'])} | "
              f"{t['status']} | {t['where'] or '-'} |" for t in targets]
    return lines if targets else ["No headline figures: the bench stage did not run."]


def summary_markdown(report):
    """summary.md: every check with its status, figure, target and ratio."""
    dry = report["dry_run"]
    lines = [f"# fasttx gpu-check{' (CPU dry run: no GPU; nothing here is a GPU figure)' if dry else ''}", "",
             f"`{report['command']}` on {_provenance(report)}.", "",
             f"Wall time {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget; stages skipped: "
             f"{', '.join(report['stages_skipped']) or 'none'}.", "",
             "| stage | status | seconds | result |", "| --- | --- | --- | --- |"]
    for name in report["stages_selected"]:
        r = _stage(report, name)
        lines.append(f"| {name} | {r['status']} | {_fmt(r.get('seconds'), '.0f')} | {r['summary']} |")
    lines += ["", "## Targets (issue 13; ratio = figure / target, >= 1 meets it)", ""] + _targets_table(report)
    tests = _stage(report, "tests")
    if tests.get("by kernel"):
        lines += ["", "## Tests per kernel, backend and dtype (passed / failed / skipped)", "",
                  "| kernel | backend | dtype | passed | failed | skipped |", "| --- | --- | --- | --- | --- | --- |"]
        for kernel, per_backend in sorted(tests["by kernel"].items()):
            for backend, per_dtype in sorted(per_backend.items()):
                for dtype, c in sorted(per_dtype.items()):
                    lines.append(f"| {kernel} | {backend} | {dtype} | {c['passed']} | {c['failed'] + c['error']} | "
                                 f"{c['skipped']} |")
    for name in ("tests", "hazards"):
        failures = _stage(report, name).get("failures") or []
        if failures:
            lines += ["", f"## {name}: failures", ""] + [f"- `{f}`" for f in failures[:50]]
    autotune = _stage(report, "autotune")
    bad = {k: c for k, c in (autotune.get("configs") or {}).items() if c["status"] != "pass"}
    if autotune.get("configs"):
        lines += ["", "## Autotune configs", "", f"Kernels: {', '.join(autotune['kernels'])}; {autotune['summary']}."]
        lines += [f"- {k}: {c['status']} {'; '.join(c['failures'])}" for k, c in bad.items()]
    tools = _stage(report, "sanitize").get("tools") or {}
    if tools:
        lines += ["", "## compute-sanitizer", ""]
        lines += [f"- {name}: {t['status']}, {t['summary']}"
                  + (f" (in {', '.join(t['kernels with errors'])})" if t["kernels with errors"] else "")
                  for name, t in tools.items()]
    return "\n".join(lines) + "\n"


def summary_table(report):
    """The short plain-text table printed last."""
    rows = [("stage", "status", "s", "result")]
    for name in report["stages_selected"]:
        r = _stage(report, name)
        rows.append((name, r["status"], _fmt(r.get("seconds"), ".0f"), r["summary"][:110]))
    targets = _stage(report, "bench").get("targets") or []
    missing = [t for t in targets if t["status"] == "no data"]
    if missing:
        rows.append(("targets", "no data", "", f"{len(missing)} of {len(targets)}: no qualifying bench row"))
    for t in targets:
        if t["status"] == "no data":
            continue
        rows.append((f"target {t['backend']}", t["status"], "", f"{t['check']}: {_fmt(t['figure'])} vs {t['target']} "
                     f"{t['unit']} (ratio {_fmt(t['ratio'])})"[:110]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = f"fasttx gpu-check on {report['device']['name']}{' (CPU DRY RUN)' if report['dry_run'] else ''}, " \
           f"{report['wall_s']:.0f} s of {report['budget_s']:.0f} s"
    return "\n".join([head] + ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows])


def _tool_status(tool, kernel):
    """A sanitizer tool's verdict for one kernel family: its errors are attributed by kernel name."""
    named = tool["kernels with errors"]
    if tool["status"] != "fail" or not named:
        return tool["status"]
    key = {"norms": "norm", "softmax": "softmax", "attention": "attention"}[kernel]
    return "fail" if any(key in name for name in named) else "pass"


def _kernel_cells(report, kernel, backend):
    tests = ((_stage(report, "tests").get("by kernel") or {}).get(kernel) or {}).get(backend) or {}
    passed = sum(c["passed"] for c in tests.values())
    failed = sum(c["failed"] + c["error"] for c in tests.values())
    dtypes = ", ".join(sorted(d for d, c in tests.items() if c["passed"]))
    ran = not report["dry_run"] and passed > 0
    test_text = f"{passed} passed, {failed} failed" + (f" ({dtypes})" if dtypes else "") if tests else "not run"
    if backend == "cuda":
        tools = _stage(report, "sanitize").get("tools") or {}
        sanitizer = ", ".join(f"{n} {_tool_status(t, kernel)}" for n, t in tools.items()) \
            or _stage(report, "sanitize")["summary"]
    else:
        sanitizer = "n/a (CUDA C++ kernels only)"
    if backend == "triton" and kernel == "attention":
        autotune = _stage(report, "autotune")["summary"]
    else:
        autotune = "n/a (no autotuned kernel)"
    targets = [t for t in _stage(report, "bench").get("targets") or []
               if t["backend"] == backend and t["check"].startswith(TARGET_OPS[kernel])]
    figures = "; ".join(f"{t['check']}: {_fmt(t['figure'])} (ratio {_fmt(t['ratio'])}, {t['status']})"
                        for t in targets if t["status"] != "no data") or "none"
    return ran, test_text, autotune, sanitizer, figures


def status_markdown(report):
    """docs/gpu-status.md: per kernel and backend, where it ran, tests, sanitizer and headline figures."""
    dry = report["dry_run"]
    lines = ["# GPU status", "",
             "Generated by `python -m fasttx.cli.gpu_status` from the `gpu_check.json` of a `make gpu-check` run",
             "(see the README, \"GPU validation\"); do not edit by hand.", ""]
    if dry:
        lines += ["**No kernel of fasttx has run on a GPU yet.** This page was generated from a CPU dry run of",
                  "`make gpu-check` (no GPU: the Triton kernels ran in the interpreter on tiny shapes, the CUDA C++",
                  "kernels did not run, no figure below is a GPU figure; the tests column counts that CPU run).",
                  "The first GPU run is still owed.", ""]
    lines += [f"Run: {_provenance(report)}.", "",
              "| kernel | backend | ran on a GPU | tests | autotune configs | compute-sanitizer | headline vs targets |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for kernel in KERNELS:
        for backend in BACKENDS:
            ran, tests, autotune, sanitizer, figures = _kernel_cells(report, kernel, backend)
            device = report["device"]["name"] if ran else "no"
            lines.append(f"| {kernel} | {backend} | {device} | {tests} | {autotune} | {sanitizer} | {figures} |")
    gpt = [t for t in _stage(report, "bench").get("targets") or [] if t["check"].startswith("GPT")]
    lines += ["", "GPT training step: " + ("; ".join(f"{t['check']}: {_fmt(t['figure'])} (target {t['target']}, "
                                                      f"{t['status']})" for t in gpt) or "not run") + ".",
              "", "Stages: " + "; ".join(f"{n} {_stage(report, n)['status']}" for n in report["stages_selected"]) + "."]
    failures = [f for name in ("tests", "hazards") for f in _stage(report, name).get("failures") or []]
    if failures:
        lines += ["", f"Failed tests ({len(failures)}): " + ", ".join(f"`{f}`" for f in failures[:10])
                  + (", ..." if len(failures) > 10 else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import json

    parser = argparse.ArgumentParser(prog="python -m fasttx.cli.gpu_status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="gpu_check.json of a make gpu-check run")
    parser.add_argument("--out", default="docs/gpu-status.md", help="where to write (default docs/gpu-status.md)")
    args = parser.parse_args(argv)
    with open(args.report) as f:
        report = json.load(f)
    with open(args.out, "w") as f:
        f.write(status_markdown(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
