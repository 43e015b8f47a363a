"""The life of a run folder: a hidden staging folder while training (with checkpoints for --resume and a
metrics.json whose status says running or failed), renamed into place only when complete.

    llama-3.1-lora-finetuned/.peft.partial/   while running or after a crash: config.yaml, audit.json,
                                              metrics.json {"status": "running" | "failed"}, train_log.jsonl,
                                              checkpoints/checkpoint-<step>/
    llama-3.1-lora-finetuned/peft/            only ever a completed run
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from llama_lora.errors import UsageError
from llama_lora.options.config import CONFIG_FIELDS, RunOptions, TrainConfig, computes, to_record
from llama_lora.run import checkpoints, files, owned

# Options that may change between a crash and its resume: those declared not to change what is computed.
RESUMABLE_CHANGES = frozenset(name for name in CONFIG_FIELDS if not computes(name))


def staging_dir(output_dir: Path) -> Path:
    """Where a run into `output_dir` lives until it completes: a hidden folder beside it."""
    return output_dir.with_name(f".{output_dir.name}{files.STAGING_SUFFIX}")


def read_status(folder: Path) -> str | None:
    try:
        return json.loads((folder / files.METRICS).read_text()).get("status")
    except (OSError, ValueError):
        return None


def check_destination(output_dir: Path, options: RunOptions) -> None:
    """Refuse to silently overwrite a finished run or to throw away an interrupted one's checkpoints, and to ever
    replace a folder this tool did not make."""
    owned.check_not_protected(output_dir, "--output-dir")
    staging = staging_dir(output_dir)
    owned.check_replaceable(staging, owned.RUN, "--overwrite")  # a fresh start empties it
    if options.resume:
        return
    if options.overwrite or owned.kind_of(output_dir) != owned.RUN:
        owned.check_replaceable(output_dir, owned.RUN, "--overwrite")
    if not options.overwrite and output_dir.exists() and any(output_dir.iterdir()):
        raise UsageError(f"{output_dir} already holds a {read_status(output_dir) or 'non-empty'} run; --overwrite "
                         "replaces it (only once the new run completes), or choose another --output-dir")
    if options.overwrite:
        return
    saved = checkpoints.sealed(staging / files.CHECKPOINTS)
    if saved:
        raise UsageError(f"{staging} holds an interrupted run (latest checkpoint: {saved[-1].name}); --resume "
                         "continues it, --overwrite discards it")


def resume_checkpoint(staging: Path, resume: str) -> tuple[Path, list[str]]:
    """The checkpoint --resume names: the newest intact one (with a line for each newer one passed over, and why),
    or the folder given, which must be intact."""
    if resume != "latest":
        given = Path(resume)
        why = checkpoints.problem(given)
        if why:
            raise UsageError(f"--resume {resume}: not a complete checkpoint ({why})")
        return given, []
    found, passed_over = checkpoints.newest_intact(staging / files.CHECKPOINTS)
    if found is None:
        damaged = "; ".join(passed_over)
        raise UsageError(f"--resume: no intact checkpoint to resume from in {staging / files.CHECKPOINTS} "
                         + (f"({damaged})" if damaged else "(a run saves one every --save-steps steps)"))
    return found, passed_over


def check_same_config(staging: Path, cfg: TrainConfig) -> None:
    """A resumed run must train exactly what the interrupted one did."""
    saved = yaml.safe_load((staging / files.CONFIG).read_text())
    now = to_record(cfg)
    changed = [f"{name}: {saved.get(name)!r} -> {now[name]!r}" for name in now
               if name not in RESUMABLE_CHANGES and saved.get(name) != now[name]]
    if changed:
        raise UsageError("--resume with other options than the interrupted run: " + "; ".join(changed))


def reset_staging(staging: Path) -> None:
    """A new staging folder, stamped as this tool's (an earlier attempt's leftovers are discarded)."""
    owned.check_replaceable(staging, owned.RUN, "--overwrite")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        owned.stamp(staging, owned.RUN)
    except OSError:  # a full disk: leave nothing behind
        staging.rmdir()
        raise


def claim_failure(staging: Path) -> bool:
    """True for the first process of a launch to claim the failure record (an exclusive create), so a failure
    that hits every process at once (a NaN loss) is still recorded once."""
    try:
        os.close(os.open(staging / files.FAILURE_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def clear_failure_claim(staging: Path) -> None:
    """A resumed attempt may fail again and must be able to record it."""
    (staging / files.FAILURE_CLAIM).unlink(missing_ok=True)


def finish(output_dir: Path, staging: Path) -> None:
    """Drop the checkpoints and move the completed staging folder into place, replacing an older run."""
    shutil.rmtree(staging / files.CHECKPOINTS, ignore_errors=True)
    replace_folder(output_dir, staging, owned.RUN)


def replace_folder(dest: Path, staging: Path, kind: str) -> None:
    """Rename a finished staging folder to `dest`; an older `dest` (empty, or this tool's of the same kind: checked
    again here, where it is removed) is set aside first and removed only after."""
    if dest.exists():
        owned.check_replaceable(dest, kind, "--overwrite")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
