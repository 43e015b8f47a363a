"""Pre-emption on the Unsloth backend: SIGTERM mid-run checkpoints the step in flight, exits 75, and --resume
finishes the run with the same losses and adapter as a run that was never stopped. Three Unsloth runs of at most
6 steps of batch 2 (the uninterrupted one, the signalled one, its resumption)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, dialogue, read_metrics, two_layer_model, wait_for_logged_steps, write_jsonl
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SCRIPT = "lora_unsloth_finetuning.py"
STEPS = 6
# the embedded model cut to two layers: what is tested here is what a run does, not what it learns
FLAGS = ["--model", two_layer_model(), "--max-steps", str(STEPS), "--save-steps", "4", "--samples", "0",
         "--batch-size", "2", "--grad-accum", "1", "--learning-rate", "1e-3", "--r", "8", "--dtype", "float32",
         "--eval-fraction", "0"]
EXIT_INTERRUPTED = 75


def train(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "--dataset", str(data), "--output-dir", str(out), *FLAGS, *extra]


def losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in read_metrics(folder)["loss_history"]]


def test_unsloth_sigterm_checkpoints_the_step_in_flight_and_resume_equals_the_uninterrupted_run(tmp_path,
                                                                                                smollm2_path):
    data = write_jsonl(tmp_path / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"1. Double it.\n2. {2 * a}.")
                                                 for a in range(40)])
    straight = tmp_path / "straight"
    done = subprocess.run(train(data, straight), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "terminated"
    staging = out.with_name(f".{out.name}.partial")
    # checkpoints every 4 steps: the signal arrives before the first, so only the graceful stop saves this step
    with (tmp_path / "terminated.log").open("w+") as log:
        process = subprocess.Popen(train(data, out), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for_logged_steps(process, staging)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=600) == EXIT_INTERRUPTED
        log.seek(0)
        output = log.read()
    assert "SIGTERM received: finishing the current step" in output
    assert "Run the same command with --resume to continue" in output
    record = read_metrics(staging)
    step = record["interrupted_at_step"]
    assert record["status"] == "interrupted" and 1 <= step < 4, output[-3000:]
    checkpoint = staging / "checkpoints" / f"checkpoint-{step}"
    assert record["last_checkpoint"] == str(checkpoint)
    assert [p.name for p in (staging / "checkpoints").glob("checkpoint-*")] == [checkpoint.name]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert [json.loads(line)["step"] for line in (staging / "train_log.jsonl").read_text().splitlines()] == list(
        range(1, step + 1))
    assert not out.exists()

    resumed = subprocess.run(train(data, out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_metrics(out)
    assert metrics["backend"] == "unsloth" and metrics["resumed_from_step"] == step
    assert [entry["step"] for entry in metrics["loss_history"]] == list(range(1, STEPS + 1))  # none twice, none lost
    # CPU float32 with a fixed seed is deterministic: the resumed run retraces the uninterrupted one
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
