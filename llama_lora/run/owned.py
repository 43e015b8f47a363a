"""Folders this tool made, and so may replace: each carries a small stamp file, written first when the folder is
made, saying what it is (a run folder, a merged model).

`--overwrite` (training) and `use_adapter.py merge --overwrite` replace a folder only when it carries the stamp of
their own kind, or is empty; anything else (a folder of the user's files, the training data's folder, another
kind of output) is refused, naming the path, with nothing deleted. The filesystem root, the home folder, the
working directory and every folder holding it are refused outright, stamp or not.
"""

from __future__ import annotations

import json
from pathlib import Path

from llama_lora.atomic_files import write_json
from llama_lora.errors import UsageError
from llama_lora.run import files

TOOL = "llama-lora"
RUN = "run folder"  # what a training script writes
MERGED = "merged model"  # what `use_adapter.py merge` writes


def stamp(folder: Path, kind: str) -> None:
    """Mark `folder` (just made by this tool) as one of ours, of this kind."""
    write_json(folder / files.OWNER_STAMP, {"made_by": TOOL, "kind": kind})


def kind_of(folder: Path) -> str | None:
    """The kind a folder's stamp names; None when it has no readable stamp of this tool."""
    try:
        found = json.loads((folder / files.OWNER_STAMP).read_text())
    except (OSError, ValueError):
        return None
    return found.get("kind") if isinstance(found, dict) and found.get("made_by") == TOOL else None


def check_not_protected(folder: Path, flag: str) -> None:
    """Refuse `/`, the home folder, the working directory and any folder that holds it, whatever they contain."""
    resolved = folder.expanduser().resolve()
    here = Path.cwd().resolve()
    names = {Path(resolved.anchor): "the filesystem root", Path.home().resolve(): "your home folder",
             here: "the working directory"}
    what = names.get(resolved) or ("a folder holding the working directory" if resolved in here.parents else None)
    if what:
        raise UsageError(f"{flag} {folder}: that is {what}; this tool writes a folder of its own and may later "
                         "replace it whole, so give a new folder's path (e.g. runs/my-run)")


def check_replaceable(folder: Path, kind: str, flag: str) -> None:
    """Refuse unless `folder` is absent, empty, or stamped by this tool as `kind`: nothing else is ever replaced."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder; {flag} replaces only a {kind} made by this tool")
    if not any(folder.iterdir()):
        return
    found = kind_of(folder)
    if found == kind:
        return
    if found:
        raise UsageError(f"{folder} holds a {found}, not a {kind}: {flag} does not replace it (nothing was "
                         "deleted); choose another folder")
    raise UsageError(f"{folder} is not empty and was not made by this tool (it has no {files.OWNER_STAMP}): "
                     f"{flag} replaces only a {kind} this tool made, so nothing was deleted; choose another folder "
                     "or move its files away")
