"""python -m fasttx train: learns, resumes to the same losses, gives the same losses under a
2-process torchrun (gloo) as in one process, and --compare finds the torch.nn and fasttx curves
in agreement."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fasttx.cli import train

# A tiny GPT on the first 200 kB of the standard library's source; the fasttx variant (default).
TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--seq", "32", "--batch-size", "8",
        "--max-bytes", "200000", "--lr", "3e-3", "--warmup", "2", "--eval-batches", "1", "--quiet"]


def _run(*args, launcher=("-m", "fasttx")):
    result = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def _log(folder):
    log = json.load(open(os.path.join(folder, "train_log.json")))
    return log, [log["losses"][str(s)] for s in sorted(map(int, log["losses"]))]


def test_train_cli_learns_and_checkpoints(tmp_path):
    _run("train", *TINY, "--steps", "12", "--eval-every", "6", "--out", str(tmp_path))
    log, losses = _log(tmp_path)
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5  # from ln(256) = 5.5 nats, bytes of Python are quickly learnt
    assert set(log["val_losses"]) == {"6", "12"} and log["tokens_per_s"] > 0
    assert {"LayerNorm", "MultiheadAttention", "TransformerEncoderLayer"} <= set(log["swapped"])
    assert os.path.exists(tmp_path / "step_000012.pt")


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    # Dropout, activation checkpointing and accumulation: RNG and data must all follow the step.
    extra = ["--steps", "6", "--dropout", "0.1", "--activation-checkpointing", "--grad-accum", "2"]
    whole = train.run(train.parse_args([*TINY, *extra, "--save-every", "3", "--out", str(tmp_path / "a")]))
    resumed = train.run(train.parse_args([*TINY, *extra, "--resume", str(tmp_path / "a" / "step_000003.pt"),
                                          "--out", str(tmp_path / "b")]))
    assert resumed["losses"] == whole["losses"]  # exactly: steps 1-3 from the checkpoint, 4-6 recomputed
    assert resumed["val_losses"] == whole["val_losses"]
    with pytest.raises(ValueError, match="differs from this run's"):
        train.run(train.parse_args([*TINY, *extra, "--d-model", "16", "--resume",
                                    str(tmp_path / "a" / "step_000003.pt"), "--out", str(tmp_path / "c")]))


def test_torchrun_gloo_matches_single_process(tmp_path):
    # On CPU and in fp32 on any machine: a GPU machine's defaults (cuda:LOCAL_RANK, bfloat16) would need a GPU per
    # process and make another test.
    args = [*TINY, "--steps", "4", "--eval-every", "2", "--grad-accum", "2", "--device", "cpu", "--dtype", "float32"]
    _run("--standalone", "--nproc-per-node", "2", "-m", "fasttx", "train", *args, "--out", str(tmp_path / "ddp"),
         launcher=("-m", "torch.distributed.run"))
    log, ddp_losses = _log(tmp_path / "ddp")
    assert log["world_size"] == 2
    single = train.run(train.parse_args([*args, "--out", str(tmp_path / "one")]))
    torch.testing.assert_close(ddp_losses, list(single["losses"].values()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close([log["val_losses"][str(s)] for s in (2, 4)], list(single["val_losses"].values()),
                               rtol=1e-5, atol=1e-6)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK is 1, but there are only 1 CUDA device\(s\).*--device cpu"):
        train.Context(None)
    with pytest.raises(RuntimeError, match="LOCAL_RANK is 1"):
        train.Context("cuda")


def test_compare_writes_reports_and_curves_agree(tmp_path):
    verdict = train.run(train.parse_args([*TINY, "--steps", "8", "--eval-every", "4", "--compare",
                                          "--backend", "torch", "--out", str(tmp_path)]))
    assert verdict["agree"]
    summary = json.load(open(tmp_path / "compare.json"))
    assert set(summary["variants"]) == {"torch", "fasttx"} and summary["agreement"]["agree"]
    assert summary["variants"]["torch"]["swapped"] == {} and summary["variants"]["fasttx"]["swapped"]
    assert all(v["tokens_per_s"] > 0 for v in summary["variants"].values())
    assert "Curves agree" in open(tmp_path / "compare.md").read()
    assert open(tmp_path / "loss_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_agreement_rejects_a_shifted_curve():
    noisy = [3.0 - 0.01 * i + 0.05 * math.sin(7.3 * i) for i in range(100)]
    assert train.agreement(noisy, [x + 0.01 * math.cos(3.1 * i) for i, x in enumerate(noisy)])["agree"]
    assert not train.agreement(noisy, [x + 0.2 for x in noisy])["agree"]


def test_batch_must_split_over_processes_and_micro_batches(tmp_path):
    with pytest.raises(ValueError, match="--batch-size .* must be a multiple"):
        train.run(train.parse_args([*TINY, "--steps", "1", "--grad-accum", "3", "--out", str(tmp_path)]))


def test_plot_is_skipped_with_a_notice_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    records = {v: {"losses": {1: 2.0, 2: 1.5}, "val_losses": {}} for v in train.VARIANTS}
    assert not train.plot_curves(records, str(tmp_path / "curves.png"))
    assert "matplotlib is not installed" in capsys.readouterr().err and not os.listdir(tmp_path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # float16 adds the GradScaler
def test_autocast_runs(dtype, tmp_path):
    record = train.run(train.parse_args([*TINY, "--steps", "3", "--dtype", dtype, "--out", str(tmp_path)]))
    assert all(math.isfinite(x) for x in record["losses"].values())
    scaler = torch.load(tmp_path / "step_000003.pt")["scaler"]
    assert bool(scaler) == (dtype == "float16")  # a GradScaler's state, saved for resume, only for fp16
