"""Checkpoints that can be trusted: one counts as complete only once its seal is in place (`complete.json`, written
last and atomically, after every process wrote its part), listing each of its files with its size and SHA-256.

A run killed while writing a checkpoint leaves one without a seal, which is never resumed from; a checkpoint whose
files no longer match their seal (a damaged disk, a truncated copy, a hand edit) is passed over, saying why, for
the newest one that still matches. Old checkpoints are pruned only after a newer one is sealed, so a complete one
is always left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from llama_lora.atomic_files import write_json
from llama_lora.run import files

PREFIX = "checkpoint-"


def step_of(folder: Path) -> int | None:
    """The step a checkpoint folder's name gives, or None for a folder that is not a checkpoint."""
    number = folder.name.removeprefix(PREFIX)
    return int(number) if folder.name.startswith(PREFIX) and number.isdigit() else None


def listed(folder: Path) -> list[Path]:
    """Every checkpoint folder under `folder` (sealed or not), oldest first."""
    found = [f for f in folder.glob(f"{PREFIX}*") if f.is_dir() and step_of(f) is not None]
    return sorted(found, key=step_of)


def sealed(folder: Path) -> list[Path]:
    """The checkpoints under `folder` that carry a seal (whether their files still match it or not), oldest first."""
    return [f for f in listed(folder) if (f / files.CHECKPOINT_SEAL).is_file()]


def seal(checkpoint: Path) -> None:
    """Write the checkpoint's seal: its every file's size and SHA-256, as they are now (call once it is whole)."""
    write_json(checkpoint / files.CHECKPOINT_SEAL, {"step": step_of(checkpoint), "files": {
        str(path.relative_to(checkpoint)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(checkpoint.rglob("*")) if path.is_file() and path.name != files.CHECKPOINT_SEAL}})


def problem(checkpoint: Path) -> str | None:
    """Why the checkpoint cannot be resumed from, or None when every file it was sealed with is as written."""
    try:
        listing = json.loads((checkpoint / files.CHECKPOINT_SEAL).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {files.CHECKPOINT_SEAL}: the run stopped while writing it"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {files.CHECKPOINT_SEAL} cannot be read ({err})"
    for name, expected in listing.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} when it was written"
        if _sha256(path) != expected["sha256"]:
            return f"{name} changed since it was written"
    return None


def newest_intact(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest sealed checkpoint whose files match their seal, and a line for each newer one passed over."""
    passed_over = []
    for checkpoint in reversed(listed(folder)):
        why = problem(checkpoint)
        if why is None:
            return checkpoint, passed_over
        passed_over.append(f"{checkpoint.name}: {why}")
    return None, passed_over


def prune(folder: Path, keep: int, also_keep: str | None = None) -> None:
    """Keep the newest `keep` sealed checkpoints (and `also_keep`, the best one early stopping may return to);
    remove older ones, and unsealed leftovers older than the newest seal (a crash's half-written checkpoints)."""
    complete = sealed(folder)
    if not complete:
        return
    kept = {checkpoint.name for checkpoint in complete[-keep:]} | ({Path(also_keep).name} if also_keep else set())
    newest = step_of(complete[-1])
    for checkpoint in listed(folder):
        if checkpoint.name not in kept and step_of(checkpoint) < newest:
            shutil.rmtree(checkpoint)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
