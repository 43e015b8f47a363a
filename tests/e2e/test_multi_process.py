"""Both entry scripts run unchanged under `accelerate launch` with the shipped DDP config: on CPU, two
processes talk over gloo. Two processes with --grad-accum 1 must train exactly what one process with
--grad-accum 2 trains, write the run folder once, and a failure on one process must end the launch and be
recorded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from helpers import REPO, dialogue, read_metrics, two_layer_model, wait_for_logged_steps, write_jsonl
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

STEPS = 2
# the embedded model cut to two layers: what is tested here is what a run does, not what it learns
FLAGS = ["--model", two_layer_model(), "--max-steps", str(STEPS), "--batch-size", "2", "--r", "8", "--dtype", "float32",
         "--learning-rate", "1e-3", "--eval-fraction", "0", "--max-seq-length", "128", "--save-steps", "0"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
          "--num_processes", "2", "--main_process_port", "29531"]
# Why the tolerance can be this tight: both runs see the same 4 micro-batches per step (accelerate gives rank r
# the r-th batch of each pair from one seeded order), the loss is normalized by the supervised tokens of all of
# them in both (average_tokens_across_devices), and summing two fp32 gradients does not depend on the order.
# Measured: bitwise equal. 1e-5 leaves room for a reduction that adds in another order (more processes, NCCL).
RELATIVE_TOLERANCE = 1e-5


def run(command: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    # one thread per process: two processes share the two cores instead of fighting over four threads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, smollm2_path) -> Path:
    root = tmp_path_factory.mktemp("multi")
    return write_jsonl(root / "data.jsonl", [dialogue(f"What is {a} times 3?", f"1. {a} + {a} = {2 * a}.\n"
                                                      f"2. {2 * a} + {a} = {3 * a}.") for a in range(2, 26)])


@pytest.fixture(scope="module")
def launched(data) -> tuple[Path, subprocess.CompletedProcess]:
    out = data.parent / "two-processes"
    result = run([*LAUNCH, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
                  *FLAGS, "--grad-accum", "1", "--data-cache", str(data.parent / "cache")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def single(data) -> Path:
    out = data.parent / "one-process"
    result = run([sys.executable, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
                  *FLAGS, "--grad-accum", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_only_the_main_process_writes_the_run_folder_once(launched):
    out, result = launched
    assert {p.name for p in out.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", "config.yaml", "metrics.json", "train_log.jsonl", "loss_curve.png", "audit.json",
        ".llama-lora.json"}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging or temp left
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert result.stdout.count("Saved adapter and run record") == 1
    assert result.stdout.count("Data audit:") == 1


def test_the_data_is_tokenized_once_and_memory_mapped_by_the_other_process(launched):
    out, result = launched
    entry = json.loads((out / "metrics.json").read_text())["data"]["cache"]["path"]
    assert result.stdout.count("tokenized data built into") == 1
    assert f"[process 0 of 2] tokenized data built into {entry}" in result.stdout
    assert f"[process 1 of 2] tokenized data memory-mapped from {entry}" in result.stdout


def test_metrics_hold_global_tokens_and_each_process_memory(launched, single):
    two = read_metrics(launched[0])
    one = read_metrics(single)
    assert two["processes"] == {"count": 2, "fsdp": False} and one["processes"]["count"] == 1
    # the token counter is gathered from both processes: the same tokens as one process with twice the batches
    assert two["tokens"]["non_padding_seen"] == one["tokens"]["non_padding_seen"] > 0
    assert [p["after_training"]["cpu_peak_rss_gib"] > 0.2 for p in two["memory"]["per_process"]] == [True, True]
    assert "per_process" not in one["memory"]


def test_two_processes_train_what_one_process_with_double_accumulation_trains(launched, single):
    two = [json.loads(line) for line in (launched[0] / "train_log.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    for a, b in zip(two, one, strict=True):
        assert a["epoch"] == b["epoch"] and a["tokens_seen"] == b["tokens_seen"]
        assert a["loss"] == pytest.approx(b["loss"], rel=RELATIVE_TOLERANCE)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=RELATIVE_TOLERANCE)
    ours, theirs = (load_file(folder / "adapter_model.safetensors") for folder in (launched[0], single))
    assert ours.keys() == theirs.keys()
    trained = [name for name in ours if "lora_B" in name]
    assert trained and all(theirs[name].abs().max() > 0 for name in trained)  # B starts at zero: it moved
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=RELATIVE_TOLERANCE, atol=1e-7)


def test_unsloth_under_a_ddp_launch_trains_what_one_unsloth_process_with_double_accumulation_trains(data):
    # The README says the Unsloth backend runs the same DDP launch: the same check as the PEFT launch above, on
    # Unsloth's own loader and CPU loss, against Unsloth alone (its figures differ from PEFT's by up to 0.1%).
    launched, single = data.parent / "unsloth-two-processes", data.parent / "unsloth-one-process"
    two = run([*LAUNCH, "lora_unsloth_finetuning.py", "--dataset", str(data), "--output-dir", str(launched),
               *FLAGS, "--grad-accum", "1"], timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = run([sys.executable, "lora_unsloth_finetuning.py", "--dataset", str(data), "--output-dir", str(single),
               *FLAGS, "--grad-accum", "2"])
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert read_metrics(launched)["processes"] == {"count": 2, "fsdp": False}
    assert two.stdout.count("Saved adapter and run record") == 1
    logged = [[json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
              for folder in (launched, single)]
    for a, b in zip(*logged, strict=True):
        assert a["tokens_seen"] == b["tokens_seen"]
        assert a["loss"] == pytest.approx(b["loss"], rel=RELATIVE_TOLERANCE)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=RELATIVE_TOLERANCE)
    ours, theirs = (load_file(folder / "adapter_model.safetensors") for folder in (launched, single))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=RELATIVE_TOLERANCE, atol=1e-7)


def _rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    """The launched training process with this RANK, once it exists."""
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "lora_peft_finetuning.py" in " ".join(child.cmdline()):
                return child
        except psutil.Error:  # a helper process that ended meanwhile
            continue
    return None


def test_sigterm_to_one_process_stops_every_process_after_the_same_step_with_one_checkpoint(data, tmp_path):
    # Pre-emption may reach one node's process first: the other must stop after the same step, or the checkpoint
    # would mix two steps' states (and the launch would hang in the next all-reduce).
    out = tmp_path / "terminated"
    staging = out.with_name(f".{out.name}.partial")
    args = [*LAUNCH, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
            *FLAGS, "--grad-accum", "1", "--max-steps", "8"]  # the later --max-steps wins
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "launch.log").open("w+") as log:
        launcher = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for_logged_steps(launcher, staging)
        second = _rank_process(psutil.Process(launcher.pid), 1)
        assert second is not None
        second.send_signal(signal.SIGTERM)  # only process 1 is told
        # both stop within a step (about 2 s); a process that did not agree would hang in the next all-reduce
        launcher.wait(timeout=180)
        log.seek(0)
        output = log.read()
    assert "SIGTERM received: finishing the current step" in output
    record = read_metrics(staging)
    step = record["interrupted_at_step"]
    assert record["status"] == "interrupted" and 1 <= step < 8, output[-3000:]
    # the main process, which writes the record, was not signalled itself: it stopped because process 1 was
    assert record["reason"] == f"stopped on a signal to another process of the launch after step {step}"
    assert [json.loads(line)["step"] for line in (staging / "train_log.jsonl").read_text().splitlines()] == list(
        range(1, step + 1))
    # one checkpoint, of that step, complete: every process saved the same step
    checkpoint = staging / "checkpoints" / f"checkpoint-{step}"
    assert [p.name for p in (staging / "checkpoints").glob("checkpoint-*")] == [checkpoint.name]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert not out.exists()


def test_a_failure_on_one_process_ends_the_launch_and_is_recorded_once(data, tmp_path):
    # A GPU error on one card cannot be produced here: process 1 raises in its first training step instead.
    wrapper = tmp_path / "fail_on_rank_1.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "if os.environ['RANK'] == '1':\n"
        "    import trl\n"
        "    def broken(self, *args, **kwargs):\n"
        "        raise RuntimeError('injected failure on process 1')\n"
        "    trl.SFTTrainer.training_step = broken\n"
        "runpy.run_path('lora_peft_finetuning.py', run_name='__main__')\n"
    )
    out = tmp_path / "failed"
    result = run([*LAUNCH, str(wrapper), "--dataset", str(data), "--output-dir", str(out), *FLAGS,
                  "--grad-accum", "1"], timeout=300)  # a hang would end here as TimeoutExpired
    assert result.returncode != 0
    assert "[process 1 of 2] Training failed: RuntimeError: injected failure on process 1" in result.stderr
    staging = out.with_name(f".{out.name}.partial")
    record = read_metrics(staging)
    assert record["status"] == "failed" and record["reason"].startswith("[process 1 of 2] Training failed")
    assert (staging / ".failure-recorded").exists() and not out.exists()
