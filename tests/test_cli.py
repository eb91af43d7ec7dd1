"""python -m fasttx info and bench, run as a user would."""

import csv
import json
import os
import subprocess
import sys

import fasttx


def _run(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fasttx", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_info(tmp_path):
    result = _run("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch"] == fasttx.info()["torch"]


def test_bench_writes_checked_figures(tmp_path):
    for op in ("layer_norm", "rms_norm", "softmax"):
        result = _run("bench", "--op", op, "--shapes", "8x64,3x129", "--dtype", "float32",
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert result.returncode == 0, result.stderr + result.stdout
        assert "speed-up" in result.stdout
        (json_name,) = [f for f in os.listdir(tmp_path / "out") if f.startswith(op) and f.endswith(".json")]
        report = json.load(open(tmp_path / "out" / json_name))
        rows = report["rows"]
        assert "command" in report["meta"] and "torch" in report["meta"]
        assert {(r["rows"], r["cols"]) for r in rows} == {(8, 64), (3, 129)}
        assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
        assert {"torch eager", "fasttx torch", "fasttx triton"} <= {r["provider"] for r in rows}
        assert all(r["correct"] and r["ms"] > 0 and r["rate"] > 0 and r["unit"] == "GB/s" for r in rows)
        with open(tmp_path / "out" / json_name.replace(".json", ".csv")) as f:
            assert len(list(csv.DictReader(f))) == len(rows)


def test_bench_attention_reports_tflops(tmp_path):
    result = _run("bench", "--op", "attention", "--shapes", "40x2x16", "--dtype", "float16",
                  "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = json.load(open(tmp_path / "attention_float16_cpu.json"))["rows"]
    assert {r["causal"] for r in rows} == {False, True} and {r["unit"] for r in rows} == {"TFLOP/s"}
    assert {"torch sdpa", "fasttx torch", "fasttx triton"} <= {r["provider"] for r in rows}
    assert all(r["correct"] and r["rate"] > 0 for r in rows)
    result = _run("bench", "--op", "attention", "--shapes", "8x64", cwd=tmp_path)
    assert result.returncode != 0 and "takes shapes of 3 numbers" in result.stderr


def test_bench_rejects_bad_shapes(tmp_path):
    result = _run("bench", "--shapes", "8by64", cwd=tmp_path)
    assert result.returncode != 0 and "--shapes takes ROWSxCOLS" in result.stderr
