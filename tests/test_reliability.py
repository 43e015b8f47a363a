"""A run survives what real runs meet: a SIGKILL mid-way (resume gives the same result), a NaN loss, an
existing run folder, early stopping, and a planted hub token that must never reach a file or a log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, read_metrics

pytestmark = pytest.mark.slow

FLAGS = ["--max-steps", "6", "--save-steps", "2", "--samples", "0", "--batch-size", "2", "--grad-accum", "1",
         "--learning-rate", "1e-3", "--r", "8", "--dtype", "float32"]
PLANTED_TOKEN = "hf_plantedTokenThatMustNeverLeak0123456789"


def command(dataset: Path, out: Path, *extra: str, script: str = "lora_peft_finetuning.py") -> list[str]:
    return [sys.executable, script, "--dataset", str(dataset), "--output-dir", str(out), *FLAGS, *extra]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_TOKEN": PLANTED_TOKEN})


def losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in read_metrics(folder)["loss_history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, smollm2_path) -> tuple[Path, subprocess.CompletedProcess]:
    from conftest import dialogue, write_jsonl

    root = tmp_path_factory.mktemp("reliable")
    data = write_jsonl(root / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"1. Double it.\n2. {2 * a}.")
                                             for a in range(40)])
    result = run(command(data, root / "straight"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "straight", result


@pytest.mark.parametrize("script", ["lora_peft_finetuning.py", "lora_unsloth_finetuning.py"])
def test_sigkilled_run_resumes_to_the_same_loss_and_adapter(uninterrupted, script):
    straight, _ = uninterrupted
    data = straight.parent / "data.jsonl"
    if script != "lora_peft_finetuning.py":  # the fixture's uninterrupted run is PEFT's
        straight = straight.parent / f"straight-{script[:-3]}"
        assert run(command(data, straight, script=script)).returncode == 0
    out = straight.parent / f"killed-{script[:-3]}"
    staging = out.with_name(f".{out.name}.partial")
    process = subprocess.Popen(command(data, out, script=script), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (staging / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # nothing that looks finished
    assert read_metrics(staging)["status"] == "running"

    refused = run(command(data, out, script=script))  # a plain re-run must not discard the checkpoints
    assert refused.returncode == 2 and "--resume continues it" in refused.stderr

    resumed = run(command(data, out, "--resume", script=script))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not staging.exists()
    metrics = read_metrics(out)
    assert metrics["status"] == "completed" and metrics["resumed_from_step"] == 4 and metrics["steps"] == 6
    # CPU float32 with a fixed seed is deterministic: the resumed run retraces the uninterrupted one.
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_completed_run_is_not_overwritten_without_the_flag(uninterrupted):
    straight, _ = uninterrupted
    before = (straight / "adapter_model.safetensors").read_bytes()
    refused = run(command(straight.parent / "data.jsonl", straight))
    assert refused.returncode == 2 and "already holds a completed run; --overwrite replaces it" in refused.stderr
    assert (straight / "adapter_model.safetensors").read_bytes() == before


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(uninterrupted):
    straight, _ = uninterrupted
    out = straight.parent / "nan"
    # Adam moves every weight by about the learning rate: 1e20 overflows the activations within a few steps.
    result = run(command(straight.parent / "data.jsonl", out, "--learning-rate", "1e20"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Training stopped: the " in result.stderr and "Lower --learning-rate" in result.stderr
    staging = out.with_name(".nan.partial")
    record = read_metrics(staging)
    assert record["status"] == "failed"
    assert "became nan" in record["reason"] or "became inf" in record["reason"]
    assert not out.exists()
    # the checkpoint kept predates the bad step: everything it logged is finite
    state = json.loads((Path(record["last_checkpoint"]) / "trainer_state.json").read_text())
    logged = [entry[key] for entry in state["log_history"] for key in ("loss", "grad_norm") if key in entry]
    assert logged and torch.isfinite(torch.tensor(logged)).all()


def test_the_hub_token_never_reaches_a_file_or_a_log(uninterrupted):
    straight, result = uninterrupted
    assert PLANTED_TOKEN not in result.stdout + result.stderr
    for path in straight.rglob("*"):
        if path.is_file():
            assert PLANTED_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("script", ["lora_peft_finetuning.py", "lora_unsloth_finetuning.py"])
def test_early_stopping_keeps_the_best_adapter(uninterrupted, script):
    straight, _ = uninterrupted
    out = straight.parent / f"early-{script[:-3]}"
    # A learning rate this high makes eval loss rise soon, so patience 1 stops the run.
    result = run(command(straight.parent / "data.jsonl", out, "--learning-rate", "2e-2", "--max-steps", "12",
                         "--early-stopping-patience", "1", "--eval-fraction", "0.2", script=script))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    early = metrics["early_stopping"]
    best = min(early["evaluations"], key=lambda e: e["eval_loss"])
    assert early["best_step"] == best["step"] and early["best_eval_loss"] == pytest.approx(best["eval_loss"])
    # the adapter saved is the best one: evaluating it again gives the best eval loss
    assert metrics["eval_loss"]["after"] == pytest.approx(best["eval_loss"], rel=1e-4)
    # deterministic on CPU: eval loss falls at step 2, rises at step 4, and patience 1 ends the run there
    assert early["stopped_early"] and early["best_step"] < metrics["steps"] < 12
    assert [e["step"] for e in early["evaluations"]] == list(range(2, metrics["steps"] + 1, 2))
