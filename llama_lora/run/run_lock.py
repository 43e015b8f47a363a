"""One run at a time per output folder: an exclusive OS lock (flock) on a small file beside the folder
(`.<name>.lock`), held from the start of a run to its end.

The OS releases the lock when the holding process ends in any way, a SIGKILL or a power loss included, so a killed
run never leaves a stale lock behind (at most the empty file, which the next run locks again). A second run into
the same folder stops at once, naming the process that holds it. The file says who holds it; the lock itself is
what counts.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_lora.errors import UsageError
from llama_lora.run import files


def lock_path(output_dir: Path) -> Path:
    """The lock file of runs into `output_dir`: beside it, so it outlives the renames of the folder itself."""
    return output_dir.with_name(f".{output_dir.name}{files.LOCK_SUFFIX}")


@contextmanager
def held(output_dir: Path) -> Iterator[None]:
    """Hold the lock of `output_dir` for the block; a UsageError naming the holder when another process has it."""
    path = lock_path(output_dir)
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a file where one of the folders should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), err.filename) from None
    try:
        fd = _acquire(path, output_dir)
        try:
            yield
        finally:
            # removed while still held: a run starting now either finds no file (and makes its own) or fails to
            # lock this one; one that locks it after the close sees it is no longer at the path and tries again
            path.unlink(missing_ok=True)
            os.close(fd)
    finally:
        _remove_if_empty(made)  # a refused run leaves no folder behind; a completed one's holds its run


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this run made for its lock that stayed empty, innermost first."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(path: Path, output_dir: Path) -> int:
    """An open descriptor of the lock file at `path`, exclusively locked, with this process described in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise UsageError(f"{output_dir}: another run is writing to it ({holder}); wait for it to end, or choose "
                             "another --output-dir") from None
        if _still_at(fd, path):
            break
        os.close(fd)  # the holder before us removed it on its way out: lock the file now at the path
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime(
            "%Y-%m-%d %H:%M:%S"), "command": " ".join([os.path.basename(sys.executable), *sys.argv])}).encode())
    except OSError:  # a full disk: the run cannot start, and leaves no lock file behind
        path.unlink(missing_ok=True)
        os.close(fd)
        raise
    return fd


def _still_at(fd: int, path: Path) -> bool:
    """True when the open file is still the one at `path` (not removed or replaced since it was opened)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _describe(fd: int) -> str:
    """Who holds the lock, as its file says: process id, host, start time, command line."""
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
        return (f"process {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"
