"""python -m fasttx info and bench, run as a user would."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import fasttx
from fasttx import cli
from fasttx.benchmarks import REGISTRY, common, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fasttx", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_info(tmp_path):
    result = _run("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["torch"] == fasttx.info()["torch"]


def test_bench_quick_writes_every_report(tmp_path):
    # The same run on any device: float32, the torch and triton backends (a GPU's defaults are bf16 and
    # the kernel backends), no torch.compile baseline (a compile per shape: minutes on a GPU's test run).
    result = _run("bench", "--op", "all", "--preset", "quick", "--dtype", "float32", "--backends", "torch,triton",
                  "--no-compile", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    out = tmp_path / "out"
    assert "best fasttx vs best PyTorch" in result.stdout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    combined = open(out / f"report_float32_{device}.md").read()
    for op, module in REGISTRY.items():
        assert f"bench {op} case 1: " in result.stderr  # progress, one line per case off a terminal
        data = json.load(open(out / f"{op}_float32_{device}.json"))
        meta, rows = data["meta"], data["rows"]
        assert {"command", "date", "device", "torch", "triton", "measured_peaks"} <= set(meta)
        assert meta["preset"] == "quick" and "--preset quick" in meta["command"]
        assert {r["pass"] for r in rows} == set(common.PASSES)
        baseline = {"attention": "torch sdpa", "mha": "torch.nn", "encoder_layer": "torch.nn",
                    "layer_norm_module": "torch.nn"}.get(op, "torch eager")
        assert {baseline, "fasttx torch", "fasttx triton"} <= {r["provider"] for r in rows}
        assert not any(common.is_compiled(r["provider"]) for r in rows)
        assert all(r["correct"] and r["ms"] > 0 and r["ms p20"] <= r["ms"] <= r["ms p80"] and r["rate"] > 0
                   and r["speed-up"] > 0 for r in rows)
        shape_keys = module.SHAPE.lower().split("x")  # "ROWSxHIDDEN" names the label's shape keys
        assert {tuple(r[k] for k in shape_keys) for r in rows} == set(module.PRESETS["quick"])
        with open(out / f"{op}_float32_{device}.csv") as f:
            assert len(list(csv.DictReader(f))) == len(rows)
        md = open(out / f"{op}_float32_{device}.md").read()
        best, table = md[md.index("Best fasttx vs best PyTorch"):].split("All rows:")
        unchecked = sum(r["max rel err"] is None for r in rows)  # attention's dropout case: run, not compared
        assert unchecked == sum(bool(r.get("dropout")) for r in rows) and (unchecked > 0) == (op == "attention")
        assert table.count("| ok |") == len(rows) - unchecked and table.count("| ran |") == unchecked
        assert "FAIL" not in md
        cases = {tuple(r[k] for k in report.label_keys(rows)) + (r["pass"],) for r in rows}
        assert len([line for line in best.splitlines() if line.startswith("| ")]) == 1 + len(cases)  # header
        assert f"## {op} (float32" in combined
        assert open(out / f"{op}_float32_{device}.png", "rb").read(8) == PNG_MAGIC


@pytest.mark.parametrize("args, message", [
    (["--shapes", "8by64"], "--shapes takes ROWSxCOLS"),
    (["--shapes", "8x0"], "of positive integers"),
    (["--op", "attention", "--shapes", "8x64"], "--op attention takes shapes of 3 numbers"),
    (["--op", "all", "--shapes", "8x64"], "--op attention takes shapes of 3 numbers"),
    (["--preset", "quick", "--shapes", "8x64"], "not allowed with argument"),
    (["--backends", "triton,cdua"], "--backends takes a comma-separated subset of torch,triton,cuda, got 'triton,cdua'"),
    (["--threshold", "-0.1"], "--threshold takes a fraction >= 0"),
    (["--op", "layer-norm"], "invalid choice: 'layer-norm'"),
    (["--compare", "missing.json"], "'missing.json' is not a JSON report written by fasttx bench"),
    (["--time-limit", "0"], "--time-limit takes seconds > 0"),
])
def test_bench_rejects_bad_arguments(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--no-progress", *args])
    assert message in str(exit_.value.code) + capsys.readouterr().err
    assert not os.listdir(tmp_path)  # rejected before anything ran or was written
