"""Files written whole, then renamed into place: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix, so writers that go by it still can) to write to; renamed to
    `path` when the block ends without an error, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def saved_into(folder: Path) -> Iterator[Path]:
    """A temporary folder inside `folder` for a library's save of several files (save_pretrained); when the block
    ends without an error each file is renamed into `folder`, and the temporary folder goes either way: a crash or
    a full disk never leaves a half-written file under its final name."""
    tmp = folder / f".saving-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            path.replace(folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: a reader never sees half a file."""
    with replaced(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON, written whole."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_report(stem: Path, record: dict[str, Any], markdown: str) -> None:
    """A benchmark's JSON record and markdown report side by side (stem + .json / .md), each written whole."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), record)
    write_text(stem.with_suffix(".md"), markdown)
