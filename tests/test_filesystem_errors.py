"""A filesystem fault before training (a full disk at any write of the start, a read-only file system, a file where a
folder is expected) is one clear line naming the path and exit 2, with no traceback; it leaves no staging folder,
no lock and no "running" record behind, and the previous run in the folder survives. Run in-process through the
training script's real command line, on small tmpfs mounts (skipped where they cannot be mounted).
tests/e2e/test_full_disk.py fills the disk during training and while the finished run is saved."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import dialogue, fill_disk, load_script, write_jsonl

from llama_lora.errors import describe_os_error
from llama_lora.run import files, owned

peft_script = load_script("lora_peft_finetuning.py")


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"{2 * a}.") for a in range(12)])


def train(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(peft_script.main, ["--dataset", str(data), "--output-dir", str(out), "--max-steps", "1",
                                                 "--samples", "0", *extra])


def previous_run(out: Path) -> dict[str, bytes]:
    """A completed run folder (its files in miniature) that the new run is asked to --overwrite."""
    out.mkdir()
    owned.stamp(out, owned.RUN)
    (out / files.METRICS).write_text('{"status": "completed"}')
    (out / files.ADAPTER_WEIGHTS).write_bytes(b"the previous adapter")
    return contents(out)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def one_clear_line(output: str, *expected: str) -> None:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and all(text in lines[0] for text in expected), output[-3000:]
    assert "Traceback" not in output


# a full disk at each write of the start: the lock file, the stamp, config.yaml, audit.json, the "running" record
@pytest.mark.parametrize("free_pages", [0, 1, 2, 3, 4])
def test_a_full_disk_at_the_start_is_one_line_exit_2_and_the_previous_run_survives(data, tmpfs, free_pages):
    disk = tmpfs("1m")
    out = disk / "run"
    before = previous_run(out)
    fill_disk(disk, leave_pages=free_pages)
    result = train(data, out, "--overwrite")
    assert result.exit_code == 2
    one_clear_line(result.output, "No space left on device (the disk is full: free some space or choose another "
                                  "folder)")
    assert contents(out) == before
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "run"]  # no staging folder, no lock file


def test_a_read_only_file_system_is_one_line_exit_2_and_the_previous_run_survives(data, tmpfs):
    disk = tmpfs("1m")
    out = disk / "run"
    before = previous_run(out)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    result = train(data, out, "--overwrite")
    assert result.exit_code == 2
    one_clear_line(result.output, f"{disk}/.run.lock: Read-only file system (a read-only file system: choose "
                                  "another folder)")
    assert contents(out) == before


def test_a_file_where_the_output_folder_should_go_is_one_line_exit_2(data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = train(data, tmp_path / "notes.txt" / "run")
    assert result.exit_code == 2
    one_clear_line(result.output, "notes.txt: Not a directory (a file stands where a folder is expected")
    result = train(data, tmp_path / "notes.txt")
    assert result.exit_code == 2
    one_clear_line(result.output, "notes.txt: exists and is not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_fault_without_a_path_or_advice_is_still_one_line():
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/srv/runs")) == (
        "/srv/runs: Permission denied (no permission to write there: choose another folder or fix its "
        "permissions)")


def test_a_full_disk_while_the_tokenized_data_cache_is_built_is_one_line_exit_2(data, tmp_path, tmpfs):
    cache = tmpfs("1m", name="cache")
    fill_disk(cache, leave_pages=2)
    result = train(data, tmp_path / "run", "--data-cache", str(cache))
    assert result.exit_code == 2
    one_clear_line(result.output, f"error: {cache}", "No space left on device (the disk is full")
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
