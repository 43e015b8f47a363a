"""A disk that fills up during a real run: while a checkpoint is written, and while the finished run is saved. Each
time the run exits 1 with one clear line, its record says "failed" (never "running") with the newest intact
checkpoint and --resume advice, nothing half-written is left under a final name, and the previous run it was to
replace survives; after space is freed, --resume completes without training again. On small tmpfs mounts
(skipped where they cannot be mounted). About 1 minute on 2 cores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, dialogue, fill_disk, read_metrics, wait_for_file, write_jsonl

from llama_lora.run import files, owned

pytestmark = pytest.mark.slow

FLAGS = ["--max-steps", "2", "--samples", "0", "--batch-size", "2", "--grad-accum", "1", "--r", "8",
         "--dtype", "float32", "--overwrite"]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"1. Double it.\n2. {2 * a}.")
                                                 for a in range(16)])


def previous_run(out: Path) -> dict[str, bytes]:
    """A completed run folder (in miniature) that the new run is to replace with --overwrite."""
    out.mkdir()
    owned.stamp(out, owned.RUN)
    (out / files.METRICS).write_text('{"status": "completed"}')
    (out / files.ADAPTER_WEIGHTS).write_bytes(b"the previous adapter")
    return {p.name: p.read_bytes() for p in out.iterdir()}


DISK_FULL = "No space left on device (the disk is full: free some space or choose another folder)"


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out), *FLAGS,
            *extra]


def test_a_disk_full_while_a_checkpoint_is_written_fails_the_run_with_a_record(data, tmpfs):
    disk = tmpfs("20m")  # the run's small files fit, a checkpoint (adapter, optimizer, tokenizer: ~33 MB) does not
    out = disk / "run"
    before = previous_run(out)
    result = subprocess.run(command(data, out, "--save-steps", "1"), cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    staging = disk / ".run.partial"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # torch's checkpoint writer reports the full disk as its own error; the user reads the same line as for an OSError
    assert errors == [f"error: Training failed: {staging}: {DISK_FULL}"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "No intact checkpoint was saved" in result.stderr
    record = read_metrics(staging)
    assert record["status"] == "failed" and "is full" in record["reason"] and record["last_checkpoint"] is None
    assert list((staging / "checkpoints").glob("checkpoint-*")) == []  # the half-written one is gone
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_disk_full_while_the_finished_run_is_saved_fails_with_a_record_and_resume_completes(data, tmpfs):
    disk = tmpfs("64m")
    out = disk / "run"
    before = previous_run(out)
    staging = disk / ".run.partial"
    args = command(data, out, "--save-steps", "0")  # the last step's checkpoint only
    with (disk.parent / "run.log").open("w+") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_file(process, staging / files.ADAPTER_WEIGHTS)  # whole: it is renamed into place once written
        process.send_signal(signal.SIGSTOP)
        filler = fill_disk(disk)  # the tokenizer comes next
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=600) == 1
        log.seek(0)
        said = log.read()
    errors = [line for line in said.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: Training failed: {staging}: {DISK_FULL}"], said[-3000:]
    assert "Traceback" not in said
    assert f"The newest intact checkpoint is {staging}/checkpoints/checkpoint-2; after fixing the cause, --resume " \
           "continues from it." in said
    record = read_metrics(staging)
    assert record["status"] == "failed" and record["last_checkpoint"] == str(staging / "checkpoints" / "checkpoint-2")
    assert not (staging / "tokenizer.json").exists()  # nothing half-written under its final name
    assert not list(staging.glob(".saving-*"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    filler.unlink()
    resumed = subprocess.run([a for a in args if a != "--overwrite"] + ["--resume"], cwd=REPO, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Training had finished at step 2" in resumed.stdout
    assert read_metrics(out)["status"] == "completed" and (out / "tokenizer.json").exists()
    assert json.loads((out / files.METRICS).read_text())["steps"] == 2
