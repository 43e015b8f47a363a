"""One run per output folder: a second run into a folder whose lock another process holds stops at once with exit 2,
naming that process, and writes nothing; the OS releases the lock when the holder dies, even by SIGKILL.
(tests/e2e/test_end_phase.py starts a second training run while a first one is training into the same folder.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, dialogue, load_script, write_jsonl

from llama_lora.errors import UsageError
from llama_lora.run import run_lock

peft_script = load_script("lora_peft_finetuning.py")

HOLDER = """
import sys, time
from pathlib import Path
from llama_lora.run import run_lock
with run_lock.held(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run, as a training run into it would."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_into_a_locked_folder_exits_2_naming_the_running_process_and_writes_nothing(tmp_path, holder):
    data = write_jsonl(tmp_path / "data.jsonl", [dialogue(f"What is {a} + {a}?", f"{2 * a}.") for a in range(8)])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(peft_script.main, ["--dataset", str(data), "--output-dir", str(tmp_path / "run"),
                                                   "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'run'}: another run is writing to it (process {holder.pid} on " in result.output
    assert "-c " in result.output  # the holder's command line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging folder, no run folder


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path, holder):
    with pytest.raises(UsageError, match="another run is writing to it"):
        with run_lock.held(tmp_path / "run"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run_lock.lock_path(tmp_path / "run").exists()  # the file stays behind a SIGKILL; its lock does not
    with run_lock.held(tmp_path / "run"):
        pass


def test_the_lock_file_is_removed_when_the_run_ends_and_taken_again_by_the_next(tmp_path: Path):
    for _ in range(2):
        with run_lock.held(tmp_path / "run"):
            assert run_lock.lock_path(tmp_path / "run").exists()
        assert list(tmp_path.iterdir()) == []


def test_folders_with_different_names_side_by_side_do_not_block_each_other(tmp_path):
    with run_lock.held(tmp_path / "peft"), run_lock.held(tmp_path / "unsloth"):
        pass


def test_a_refused_run_leaves_no_folder_it_made_for_its_lock(tmp_path):
    with pytest.raises(UsageError), run_lock.held(tmp_path / "new" / "deeper" / "run"):
        raise UsageError("refused")
    assert list(tmp_path.iterdir()) == []
    with run_lock.held(tmp_path / "new" / "run"):
        (tmp_path / "new" / "run").mkdir()  # the run's folder: what the lock's folder now holds
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["run"]
