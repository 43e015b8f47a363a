"""A run survives what real runs meet: a SIGKILL mid-way (resume gives the same result), a SIGTERM (pre-emption:
checkpoint, stop, resume) in every phase of a run (before training, in a step, in an evaluation, in the last step,
in the samples) and a kill while the finished run is saved, each resumed to exactly the uninterrupted run; a
second run into the same folder, a NaN loss (also under --overwrite: the old run stays), an existing run folder,
pruned checkpoints and --resume from a named one or with changed options, early stopping, and a planted hub token
that must never reach a file or a log.

The learning rate is constant, so a step trained twice or once too often would show in the adapter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, phase_marking, read_metrics, two_layer_model, wait_for_file, wait_for_logged_steps
from helpers.trackers import scalars, wandb_records
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

# the embedded model cut to two layers: what is tested here is what a run does, not what it learns
FLAGS = ["--model", two_layer_model(), "--max-steps", "6", "--save-steps", "2", "--samples", "0", "--batch-size", "2",
         "--grad-accum", "1", "--learning-rate", "1e-3", "--lr-scheduler", "constant", "--r", "8", "--dtype", "float32"]
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
    from helpers import dialogue, write_jsonl

    root = tmp_path_factory.mktemp("reliable")
    data = write_jsonl(root / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"1. Double it.\n2. {2 * a}.")
                                             for a in range(40)])
    # --report-to changes nothing that is computed (the other runs here compare with this one without it)
    result = run(command(data, root / "straight", "--report-to", "tensorboard,wandb"))
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
    while not (staging / "checkpoints" / "checkpoint-4" / "complete.json").exists():  # sealed: complete
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


def test_sigterm_checkpoints_the_step_in_flight_and_resume_neither_repeats_nor_loses_a_step(uninterrupted):
    straight, _ = uninterrupted
    data = straight.parent / "data.jsonl"
    out = straight.parent / "terminated"
    staging = out.with_name(f".{out.name}.partial")
    # checkpoints every 4 steps: the signal arrives between two of them, so only the graceful stop saves this step
    args = command(data, out, "--save-steps", "4")
    with (straight.parent / "terminated.log").open("w+") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        wait_for_logged_steps(process, staging)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=600) == 75  # EXIT_INTERRUPTED, documented in the README
        log.seek(0)
        assert "Run the same command with --resume to continue" in log.read()
    record = json.loads((staging / "metrics.json").read_text())
    step = record["interrupted_at_step"]
    assert record["status"] == "interrupted" and 1 <= step < 4
    assert record["last_checkpoint"] == str(staging / "checkpoints" / f"checkpoint-{step}")
    assert (staging / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").exists()
    logged = [json.loads(line)["step"] for line in (staging / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 1))

    resumed = run([*args, "--resume", "--report-to", "tensorboard"])  # a tracker added on resume is no change
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == step and metrics["steps"] == 6
    assert [entry["step"] for entry in metrics["loss_history"]] == [1, 2, 3, 4, 5, 6]  # none twice, none lost
    assert [s for s, _ in scalars(out, "train/loss")] == list(range(step + 1, 7))  # the resumed steps only
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_second_signal_stops_at_once():
    # the graceful handler as training installs it, then SIGTERM and a Ctrl-C: the second one takes its default
    # action (a second SIGTERM goes the same way through the same handler)
    second = signal.SIGINT
    script = ("import os, signal, time\n"
              "from llama_lora.train.preemption import GracefulStop\n"
              "stop = GracefulStop()\n"
              "stop.install()\n"
              "stop.on_train_begin(None, None, None)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(0.5)\n"
              "assert stop.received == 'SIGTERM'\n"
              f"os.kill(os.getpid(), {int(second)})\n"
              "time.sleep(30)\n"
              "print('still running')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == -second and "still running" not in result.stdout, result.stderr[-2000:]
    assert "SIGTERM received: finishing the current step" in result.stderr


def test_tensorboard_holds_the_train_logs_figures_step_for_step_and_the_resolved_config(uninterrupted):
    straight, _ = uninterrupted
    logged = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    for tag, key in (("train/loss", "loss"), ("train/grad_norm", "grad_norm"), ("train/learning_rate", "learning_rate")):
        steps, values = zip(*scalars(straight, tag))
        assert list(steps) == [entry["step"] for entry in logged]
        assert list(values) == pytest.approx([entry[key] for entry in logged], rel=1e-6, abs=1e-12)  # float32 there
    evals = dict(scalars(straight, "eval/loss"))
    metrics = json.loads((straight / "metrics.json").read_text())
    assert evals[0] == pytest.approx(metrics["eval_loss"]["before"], rel=1e-6)
    assert evals[6] == pytest.approx(metrics["eval_loss"]["after"], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    config = events.Tensors("config.yaml/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to: tensorboard" in config and "max_steps: 6" in config


def test_wandb_logs_offline_inside_the_run_folder_the_train_logs_figures_step_for_step(uninterrupted):
    straight, result = uninterrupted
    (run_file,) = straight.glob("wandb/offline-run-*/run-*.wandb")  # one offline run, inside the run folder
    records = wandb_records(run_file)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
               for record in records if record.WhichOneof("record_type") == "history"]
    steps = {entry["train/global_step"]: entry for entry in history if "train/loss" in entry}
    logged = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert sorted(steps) == [entry["step"] for entry in logged]
    for entry in logged:
        assert steps[entry["step"]]["train/loss"] == pytest.approx(entry["loss"], rel=1e-6)
        assert steps[entry["step"]]["train/grad_norm"] == pytest.approx(entry["grad_norm"], rel=1e-6)
    config = {item.key: json.loads(item.value_json) for record in records
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["llama_lora"]["max_steps"] == 6 and config["llama_lora"]["report_to"] == "tensorboard,wandb"
    assert records[-1].WhichOneof("record_type") == "exit"  # the W&B run was finished, not cut off
    # and finished before the run completed: its file was last written before metrics.json, the staging folder's
    # last file (otherwise W&B writes into the run folder while the process exits, after it looked complete)
    assert run_file.stat().st_mtime_ns <= (straight / "metrics.json").stat().st_mtime_ns
    assert not straight.with_name(f".{straight.name}.partial").exists()  # nothing written after the rename
    assert f"tracking    wandb sync {straight}/wandb/offline-run-*" in result.stdout


def test_a_completed_run_is_not_overwritten_without_the_flag(uninterrupted):
    straight, _ = uninterrupted
    before = (straight / "adapter_model.safetensors").read_bytes()
    refused = run(command(straight.parent / "data.jsonl", straight))
    assert refused.returncode == 2 and "already holds a completed run; --overwrite replaces it" in refused.stderr
    assert (straight / "adapter_model.safetensors").read_bytes() == before


def test_a_failed_overwrite_keeps_the_old_run_and_its_last_good_checkpoint(uninterrupted):
    straight, _ = uninterrupted
    out = straight.parent / "nan"
    shutil.copytree(straight, out)  # a completed run that --overwrite is asked to replace
    old = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    # Adam moves every weight by about the learning rate: 1e20 overflows the activations from the second step on,
    # so the first step's checkpoint is the last good one.
    result = run(command(straight.parent / "data.jsonl", out, "--learning-rate", "1e20", "--save-steps", "1",
                         "--overwrite"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Training stopped: the " in result.stderr and "Lower --learning-rate" in result.stderr
    staging = out.with_name(".nan.partial")
    record = read_metrics(staging)
    assert record["status"] == "failed"
    assert "became nan" in record["reason"] or "became inf" in record["reason"]
    # the old run is replaced only by a completed one: every file as it was
    assert {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()} == old
    # the checkpoint kept predates the bad step: everything it logged is finite
    state = json.loads((Path(record["last_checkpoint"]) / "trainer_state.json").read_text())
    logged = [entry[key] for entry in state["log_history"] for key in ("loss", "grad_norm") if key in entry]
    assert logged and torch.isfinite(torch.tensor(logged)).all()


def test_old_checkpoints_are_pruned_and_resume_refuses_changes_or_takes_the_checkpoint_named(uninterrupted):
    straight, _ = uninterrupted
    data = straight.parent / "data.jsonl"
    out = straight.parent / "pruned"
    staging = out.with_name(f".{out.name}.partial")
    # a checkpoint every step, the latest 2 kept (both options are bookkeeping: the losses stay the straight run's)
    args = command(data, out, "--save-steps", "1", "--keep-checkpoints", "2")
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_logged_steps(process, staging, steps=3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 75
    step = read_metrics(staging)["interrupted_at_step"]
    assert 3 <= step < 6
    checkpoints = staging / "checkpoints"
    kept = sorted(p.name for p in checkpoints.glob("checkpoint-*"))  # (TRL writes its model card beside them)
    assert kept == [f"checkpoint-{step - 1}", f"checkpoint-{step}"]

    before = {p.relative_to(staging): p.read_bytes() for p in staging.rglob("*") if p.is_file()}
    refused = run([*args, "--resume", "--learning-rate", "5e-4"])
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "--resume with other options than the interrupted run: learning_rate: 0.001 -> 0.0005" in refused.stderr
    assert {p.relative_to(staging): p.read_bytes() for p in staging.rglob("*") if p.is_file()} == before

    earlier = checkpoints / f"checkpoint-{step - 1}"  # not the latest: that step is trained again, once
    resumed = run([*args, "--resume", str(earlier)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_metrics(out)
    assert metrics["resumed_from_step"] == step - 1 and metrics["steps"] == 6
    assert [entry["step"] for entry in metrics["loss_history"]] == [1, 2, 3, 4, 5, 6]
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5)


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
                         "--early-stopping-patience", "1", "--eval-fraction", "0.2", "--lr-scheduler", "linear",
                         script=script))
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


def same_as(straight: Path, out: Path) -> None:
    """The resumed run equals the uninterrupted one: steps, per-step losses, eval losses, and the adapter bit for bit."""
    a, b = read_metrics(straight), read_metrics(out)
    assert b["status"] == "completed" and b["steps"] == a["steps"] == 6
    assert losses(out) == losses(straight)
    assert b["eval_loss"]["after"] == pytest.approx(a["eval_loss"]["after"], rel=1e-6)
    ours, theirs = load_file(out / "adapter_model.safetensors"), load_file(straight / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def stop_and_signal(process: subprocess.Popen, signum: int) -> None:
    """Freeze the process where it is, send it the signal, and let it go on (it handles the signal there)."""
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)


def test_sigterm_in_the_last_step_then_resume_trains_nothing_and_equals_the_uninterrupted_run(uninterrupted,
                                                                                            tmp_path):
    straight, _ = uninterrupted
    out = straight.parent / "last-step"
    staging = out.with_name(f".{out.name}.partial")
    args = command(straight.parent / "data.jsonl", out)
    marked = phase_marking(tmp_path / "marks")
    process = subprocess.Popen([*marked, *args[1:]], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_file(process, tmp_path / "marks" / "step-5")  # the sixth and last step begins
    stop_and_signal(process, signal.SIGTERM)
    assert process.wait(timeout=600) == 75
    record = read_metrics(staging)
    assert record["status"] == "interrupted" and record["interrupted_at_step"] == 6
    assert record["last_checkpoint"] == str(staging / "checkpoints" / "checkpoint-6")
    shutil.copytree(staging, staging.with_name(".end-phase.partial"))  # for the next test: the same state

    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Training had finished at step 6: evaluating, sampling and saving without training" in resumed.stdout
    metrics = read_metrics(out)
    assert metrics["resumed_from_step"] == 6 and metrics["tokens"]["per_second"] is None  # nothing trained
    same_as(straight, out)


def test_sigterm_in_the_samples_and_a_kill_while_saving_each_resume_to_the_uninterrupted_run(uninterrupted, tmp_path):
    straight, _ = uninterrupted
    out = straight.parent / "end-phase"  # resumes the state the last test's run was interrupted in
    staging = out.with_name(f".{out.name}.partial")
    if not staging.exists():
        pytest.skip("needs the interrupted run of test_sigterm_in_the_last_step_...")
    args = [*command(straight.parent / "data.jsonl", out)[1:], "--resume", "--samples", "1",
            "--sample-max-tokens", "48"]
    marked = phase_marking(tmp_path / "marks")
    with (tmp_path / "samples.log").open("w+") as log:
        process = subprocess.Popen([*marked, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_file(process, tmp_path / "marks" / "samples-0")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=600) == 75
        log.seek(0)
        said = log.read()
    assert "SIGTERM received while answering the sample prompts: stopping that now; training is complete and " \
           "checkpointed, and --resume finishes the run without training" in said
    assert "Run the same command with --resume to finish the run (evaluation, samples, save) without training" in said
    record = read_metrics(staging)
    assert record["reason"] == "stopped on SIGTERM after training, while answering the sample prompts"
    assert record["last_checkpoint"] == str(staging / "checkpoints" / "checkpoint-6")
    assert not (staging / "samples.md").exists() and not out.exists()

    process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_file(process, staging / "adapter_model.safetensors")  # the finished run is being saved
    stop_and_signal(process, signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run completed before it could be killed"

    resumed = run([sys.executable, *args])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "samples.md").exists()
    same_as(straight, out)


def test_sigterm_in_an_evaluation_checkpoints_its_step_without_another_and_a_second_run_is_refused(uninterrupted,
                                                                                                  tmp_path):
    straight, _ = uninterrupted
    out = tmp_path / "evaluating"
    staging = out.with_name(f".{out.name}.partial")
    # a longer evaluation, at step 2, and no checkpoint due there: only the signal makes one
    args = [*command(straight.parent / "data.jsonl", out)[1:], "--eval-fraction", "0.5", "--save-steps", "4"]
    marked = phase_marking(tmp_path / "marks")
    with (tmp_path / "eval.log").open("w+") as log:
        first = subprocess.Popen([*marked, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_file(first, tmp_path / "marks" / "evaluate-1")  # the evaluation at step 2 begins
        first.send_signal(signal.SIGSTOP)
        second = run([sys.executable, *args])  # a second run into the same folder meanwhile
        assert second.returncode == 2
        assert f"{out}: another run is writing to it (process {first.pid} on " in second.stderr
        stop_and_signal(first, signal.SIGTERM)
        assert first.wait(timeout=600) == 75
        log.seek(0)
        said = log.read()
    assert "SIGTERM received during the evaluation at step 2: finishing it, then saving a checkpoint of step 2 " \
           "and stopping, without training another step" in said
    record = read_metrics(staging)
    assert record["status"] == "interrupted" and record["interrupted_at_step"] == 2
    assert [json.loads(line)["step"] for line in (staging / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((staging / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())[
        "log_history"][-1]["eval_loss"] > 0  # the evaluation finished and is in the checkpoint
    assert (staging / "checkpoints" / "checkpoint-2" / "complete.json").exists()


def test_sigterm_before_training_stops_at_the_first_evaluation_and_the_same_command_starts_again(uninterrupted,
                                                                                                  tmp_path):
    straight, _ = uninterrupted
    out = tmp_path / "early"
    staging = out.with_name(f".{out.name}.partial")
    args = [*command(straight.parent / "data.jsonl", out)[1:], "--eval-fraction", "0.5"]
    marked = phase_marking(tmp_path / "marks")
    with (tmp_path / "early.log").open("w+") as log:
        process = subprocess.Popen([*marked, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_file(process, tmp_path / "marks" / "evaluate-0")  # the evaluation before training begins
        stop_and_signal(process, signal.SIGTERM)
        assert process.wait(timeout=600) == 75
        log.seek(0)
        said = log.read()
    assert "SIGTERM received while evaluating the model before training: stopping before training starts" in said
    assert "Run the same command again to start the run (there is no checkpoint to --resume from)" in said
    record = read_metrics(staging)
    assert record["status"] == "interrupted" and record["interrupted_at_step"] == 0
    assert record["reason"] == "stopped on SIGTERM before training (evaluating the model before training)"
    assert record["last_checkpoint"] is None and not (staging / "train_log.jsonl").exists()
    from llama_lora.options.config import RunOptions
    from llama_lora.run import run_folder

    run_folder.check_destination(out, RunOptions())  # the same command may start it again
