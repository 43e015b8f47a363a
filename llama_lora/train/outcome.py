"""How a run that did not complete ends: what its record says, what the user reads, and the exit status.

    interrupted  a signal (preemption.py): status "interrupted", the step, and the checkpoint that holds everything
                 trained; exit 75, and the message says what to run next
    failed       an error once the run folder is open: status "failed", the reason and the newest intact
                 checkpoint; exit 1. What the failed attempt half-wrote (a checkpoint without its seal) is removed
                 first, so on a full disk the record still fits; a filesystem fault is one line, no traceback.

Before the run folder is open nothing needs recording: errors there are the pipeline's exit status 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch

from llama_lora import distributed
from llama_lora.errors import UsageError, describe_os_error
from llama_lora.model.preflight import oom_advice
from llama_lora.options.config import TrainConfig
from llama_lora.run import checkpoints, files, measure, run_folder, run_record
from llama_lora.train.preemption import AFTER_TRAINING, EXIT_INTERRUPTED, Interrupted
from llama_lora.train.trainer import NonFiniteLoss

EXIT_TRAINING_FAILED = 1
FULL_DISK_BYTES = 1 << 20  # less free space than this where the run writes: its failure is (also) a full disk


def interrupted(staging: Path, stop: Interrupted) -> int:
    """Record where a signalled run stopped and which checkpoint holds its work, and say how to continue."""
    if distributed.is_main():
        checkpoint = str(stop.checkpoint) if stop.checkpoint else None
        _record(staging, {"status": "interrupted", "interrupted_at_step": stop.step, "reason": str(stop),
                          "last_checkpoint": checkpoint})
        if stop.during == AFTER_TRAINING:
            held, then = (f"training is complete in {checkpoint}", "with --resume to finish the run (evaluation, "
                          "samples, save) without training")
        elif checkpoint:
            held, then = f"checkpoint {checkpoint}", "with --resume to continue"
        else:
            held, then = "nothing was trained yet", "again to start the run (there is no checkpoint to --resume from)"
        print(f"\nInterrupted: {stop}; {held}\nRun the same command {then} (exit status {EXIT_INTERRUPTED}).",
              file=sys.stderr)
    return EXIT_INTERRUPTED


def failed(cfg: TrainConfig, staging: Path, err: BaseException) -> int:
    """Mark the staging folder failed, and tell the user why and how to go on.

    Under a launch, the first process to fail records it (it may not be the main one, which can be blocked in a
    collective); the launcher then ends the others, so no process waits forever.
    """
    where = f"[process {distributed.rank()} of {distributed.world_size()}] " if distributed.world_size() > 1 else ""
    message, expected = _failure_message(cfg, staging, err)
    _drop_half_written(staging)
    intact, _ = checkpoints.newest_intact(staging / files.CHECKPOINTS)
    not_recorded = None
    if distributed.world_size() == 1 or run_folder.claim_failure(staging):
        not_recorded = _record(staging, {"status": "failed", "reason": where + message,
                                         "last_checkpoint": str(intact) if intact else None})
    resume = (f"The newest intact checkpoint is {intact}; after fixing the cause, --resume continues from it."
              if intact else "No intact checkpoint was saved (see --save-steps).")
    record = (f"Run record: {staging / files.METRICS}" if not_recorded is None else
              f"The failure could not be recorded in {staging / files.METRICS}: {not_recorded}")
    # on a line of its own: a progress bar may have left the cursor at the end of its line
    print(f"\nerror: {where}{message}\n{resume}\n{record}", file=sys.stderr)
    if not expected:  # an error of this program or a library: the traceback is for its bug report
        traceback.print_exception(err, file=sys.stderr)
    return EXIT_TRAINING_FAILED


def _failure_message(cfg: TrainConfig, staging: Path, err: BaseException) -> tuple[str, bool]:
    """What went wrong, in the user's terms, and whether it is a known kind of fault (no traceback then)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return oom_advice(cfg, *measure.gpu_peak_and_total_gib()), True
    if isinstance(err, NonFiniteLoss):
        return (f"Training stopped: {err}. Lower --learning-rate (now {cfg.learning_rate:g}) or check the data for "
                "broken rows."), True
    if isinstance(err, OSError):
        return f"Training failed: {describe_os_error(err, staging)}", True
    if _disk_full(staging):  # torch and safetensors report a full disk as their own errors: say it as for an OSError
        return f"Training failed: {describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), staging)}", True
    return f"Training failed: {type(err).__name__}: {err}", False


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def _drop_half_written(staging: Path) -> None:
    """Remove the checkpoints newer than the newest sealed one: the attempt failed while writing them."""
    folder = staging / files.CHECKPOINTS
    complete = checkpoints.sealed(folder)
    newest = checkpoints.step_of(complete[-1]) if complete else -1
    for checkpoint in checkpoints.listed(folder):
        if checkpoints.step_of(checkpoint) > newest:
            shutil.rmtree(checkpoint, ignore_errors=True)


def _record(staging: Path, update: dict) -> str | None:
    """Write the staging folder's record with `update` on top of what it says; why it could not, or None."""
    try:
        running = run_record.read(staging)
    except UsageError:  # a half-written or foreign metrics.json: this record replaces it
        running = None
    record = running.model_copy(update=update) if running else run_record.new(**update)
    record.model_fields_set.update(update)
    try:
        run_record.write(staging, record)
        return None
    except OSError:
        pass
    # a full disk has no room for the new file beside the old one: overwrite the old one in place, its own space
    # freed first (a crash in between leaves an unreadable record, never one that says "running")
    try:
        with (staging / files.METRICS).open("r+") as f:
            f.truncate(0)
            f.write(json.dumps(record.dump(), indent=2) + "\n")
        return None
    except OSError as err:
        return describe_os_error(err)
