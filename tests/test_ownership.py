"""Nothing the user owns is ever deleted: `--overwrite` (training) and `use_adapter.py merge --overwrite` replace only
a folder this tool made of their own kind (it carries a stamp) or an empty one; a folder of the user's files, the
filesystem root, the home folder and the working directory are refused with exit 2, naming the path, and every
file in them survives. Each command is run in-process through its real command line; the refusals come before any
model loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import dialogue, load_script, make_run, write_jsonl

from llama_lora.errors import UsageError
from llama_lora.options.config import RunOptions
from llama_lora.run import files, owned, run_folder

peft_script = load_script("lora_peft_finetuning.py")
use_adapter = load_script("use_adapter.py")


def user_folder(path: Path) -> dict[Path, bytes]:
    """A folder of the user's own files (their training data among them); returns its contents, to compare with."""
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (path / "thesis.tex").write_text("\\chapter{One}\n")
    write_jsonl(path / "train.jsonl", [dialogue(f"What is {a} + {a}?", f"{2 * a}.") for a in range(8)])
    return contents(path)


def contents(path: Path) -> dict[Path, bytes]:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def train(*args: str):
    """The PEFT training script's command line, in this process (a refusal exits before anything loads)."""
    return CliRunner().invoke(peft_script.main, [str(a) for a in args])


def test_overwrite_refuses_a_folder_of_user_files_holding_the_training_data_and_deletes_nothing(tmp_path):
    mine = tmp_path / "mine"
    before = user_folder(mine)
    result = train("--dataset", mine / "train.jsonl", "--output-dir", mine, "--max-steps", "1", "--overwrite")
    assert result.exit_code == 2, result.output
    assert f"{mine} is not empty and was not made by this tool" in result.output
    assert "nothing was deleted" in result.output
    assert contents(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder either


def test_without_overwrite_a_folder_of_user_files_is_refused_without_offering_to_replace_it(tmp_path):
    mine = tmp_path / "mine"
    before = user_folder(mine)
    with pytest.raises(UsageError, match="was not made by this tool") as refused:
        run_folder.check_destination(mine, RunOptions())
    assert "already holds" not in str(refused.value)
    assert contents(mine) == before


@pytest.mark.parametrize("where", ["root", "home", "working directory", "parent of the working directory"])
def test_the_root_home_and_working_directory_are_refused_outright(tmp_path, monkeypatch, where):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    folder = {"root": Path("/"), "home": Path("~"), "working directory": Path("."),
              "parent of the working directory": Path("..")}[where]
    for options in (RunOptions(), RunOptions(overwrite=True), RunOptions(resume="latest")):
        with pytest.raises(UsageError, match=f"--output-dir {folder}: that is "):
            run_folder.check_destination(folder, options)


def test_training_into_the_working_directory_exits_2_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    before = user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = train("--dataset", "train.jsonl", "--output-dir", ".", "--max-steps", "1", "--overwrite")
    assert result.exit_code == 2 and "--output-dir .: that is the working directory" in result.output
    assert contents(tmp_path) == before


def test_a_staging_folder_not_made_by_this_tool_is_never_emptied(tmp_path):
    staging = run_folder.staging_dir(tmp_path / "run")
    before = user_folder(staging)  # a user's own folder that happens to have the staging folder's name
    for options in (RunOptions(), RunOptions(overwrite=True)):
        with pytest.raises(UsageError, match=f"{staging} is not empty and was not made by this tool"):
            run_folder.check_destination(tmp_path / "run", options)
    with pytest.raises(UsageError, match="was not made by this tool"):
        run_folder.reset_staging(staging)
    assert contents(staging) == before


def test_overwrite_replaces_a_run_folder_this_tool_made(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    owned.stamp(out, owned.RUN)
    (out / files.METRICS).write_text('{"status": "completed"}')
    run_folder.check_destination(out, RunOptions(overwrite=True))
    staging = run_folder.staging_dir(out)
    run_folder.reset_staging(staging)
    (staging / "new").write_text("new run")
    run_folder.finish(out, staging)
    assert sorted(p.name for p in out.iterdir()) == [files.OWNER_STAMP, "new"]  # stamped when it was made
    assert owned.kind_of(out) == owned.RUN


def test_a_folder_is_replaced_only_by_a_command_making_its_own_kind(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    owned.stamp(merged, owned.MERGED)
    (merged / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(UsageError, match=f"{merged} holds a merged model, not a run folder"):
        run_folder.check_destination(merged, RunOptions(overwrite=True))
    with pytest.raises(UsageError, match="holds a merged model, not a run folder"):
        run_folder.replace_folder(merged, tmp_path, owned.RUN)  # checked again where it would be removed
    assert (merged / "model.safetensors").read_bytes() == b"weights"


def test_a_stamp_of_another_tool_or_a_broken_stamp_does_not_make_a_folder_ours(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / files.OWNER_STAMP).write_text('{"made_by": "someone-else", "kind": "run folder"}')
    assert owned.kind_of(folder) is None
    (folder / files.OWNER_STAMP).write_text("{half a")
    assert owned.kind_of(folder) is None
    with pytest.raises(UsageError, match="was not made by this tool"):
        owned.check_replaceable(folder, owned.RUN, "--overwrite")


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_path) -> Path:
    return make_run(tmp_path_factory.mktemp("owned") / "run", smollm2_path, seed=3)


def merge(*args: object):
    return CliRunner().invoke(use_adapter.cli, ["merge", *(str(a) for a in args)])


def test_merge_overwrite_refuses_a_folder_of_user_files_and_a_run_folder(run, tmp_path):
    mine = tmp_path / "mine"
    before = user_folder(mine)
    result = merge(run, mine, "--overwrite", "--dtype", "float32")
    assert result.exit_code == 2 and f"{mine} is not empty and was not made by this tool" in result.output
    assert contents(mine) == before
    other_run = contents(run)
    result = merge(run, run, "--overwrite", "--dtype", "float32")
    assert result.exit_code == 2 and f"{run} holds a run folder, not a merged model" in result.output
    assert contents(run) == other_run
    assert not list(tmp_path.glob(".*")) and not list(run.parent.glob(".*"))  # no staging left behind


def test_merge_into_the_working_directory_is_refused(run, tmp_path, monkeypatch):
    before = user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = merge(run, ".", "--overwrite")
    assert result.exit_code == 2 and "OUT .: that is the working directory" in result.output
    assert contents(tmp_path) == before


def test_merge_overwrite_replaces_the_merged_model_it_made(run, tmp_path):
    out = tmp_path / "merged"
    assert merge(run, out, "--dtype", "float32").exit_code == 0
    assert owned.kind_of(out) == owned.MERGED
    (out / "stale.txt").write_text("from the first merge")
    result = merge(run, out, "--dtype", "float32", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert os.listdir(out).count(files.OWNER_STAMP) == 1
