"""The run folder's rules, on real config records and folders: --resume refuses any option that changes what is
trained, --resume PATH takes that checkpoint, and --overwrite never removes the old run before the new one is
complete. (test_reliability.py kills, resumes and overwrites real training runs.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers import another_value

from llama_lora.errors import UsageError
from llama_lora.options.config import Machine, RunOptions, TrainConfig, resolve, save_yaml, to_record
from llama_lora.run import checkpoints, files, owned, run_folder

CONFIG = resolve(TrainConfig(model="smollm2", dtype="float32"), "peft", Machine(cuda=False))


def interrupted(tmp_path: Path, steps: list[int]) -> Path:
    """A staging folder as a killed run leaves it: config.yaml and complete checkpoints (plus one half-written)."""
    staging = run_folder.staging_dir(tmp_path / "run")
    staging.mkdir()
    save_yaml(CONFIG, staging / "config.yaml")
    for step in steps:
        folder = staging / files.CHECKPOINTS / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        checkpoints.seal(folder)
    half = staging / files.CHECKPOINTS / "checkpoint-99"  # killed while writing: everything but the seal
    half.mkdir()
    (half / "trainer_state.json").write_text(json.dumps({"global_step": 99}))
    return staging


@pytest.mark.parametrize("option", list(to_record(CONFIG)))
def test_resume_refuses_every_option_that_changes_what_is_trained(tmp_path, option):
    staging = interrupted(tmp_path, [2])
    before = getattr(CONFIG, option)
    changed = dataclasses.replace(CONFIG, **{option: another_value(before)})
    if option in run_folder.RESUMABLE_CHANGES:  # how the run is kept or reported, not what it trains
        run_folder.check_same_config(staging, changed)
    else:
        with pytest.raises(UsageError, match=f"--resume with other options than the interrupted run: {option}: "):
            run_folder.check_same_config(staging, changed)


# Options that certainly change what is trained: whatever the declared list of resumable changes says, these must
# never be among them (the test above follows that list, this one does not).
TRAINING_OPTIONS = ["model", "dataset", "max_seq_length", "r", "lora_alpha", "target_modules", "learning_rate",
                    "batch_size", "grad_accum", "max_steps", "seed", "dtype", "load_in_4bit", "loss_on"]


@pytest.mark.parametrize("option", TRAINING_OPTIONS)
def test_resume_refuses_a_changed_training_option(tmp_path, option):
    changed = dataclasses.replace(CONFIG, **{option: another_value(getattr(CONFIG, option))})
    with pytest.raises(UsageError, match=f": {option}: "):
        run_folder.check_same_config(interrupted(tmp_path, [2]), changed)


def test_resume_accepts_the_same_options(tmp_path):
    run_folder.check_same_config(interrupted(tmp_path, [2]), CONFIG)


def test_resume_takes_the_latest_complete_checkpoint_or_the_one_named(tmp_path):
    staging = interrupted(tmp_path, [2, 10, 4])
    saved = staging / files.CHECKPOINTS
    latest, passed_over = run_folder.resume_checkpoint(staging, "latest")
    assert latest == saved / "checkpoint-10"  # 10 > 4 > 2, by number; 99 has no seal
    assert passed_over == ["checkpoint-99: it has no complete.json: the run stopped while writing it"]
    assert run_folder.resume_checkpoint(staging, str(saved / "checkpoint-2")) == (saved / "checkpoint-2", [])
    with pytest.raises(UsageError, match="not a complete checkpoint .it has no complete.json"):
        run_folder.resume_checkpoint(staging, str(saved / "checkpoint-99"))


def test_a_finished_run_is_kept_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    owned.stamp(out, owned.RUN)  # a run folder this tool made
    (out / "metrics.json").write_text('{"status": "completed", "old": true}')
    with pytest.raises(UsageError, match="already holds a completed run"):
        run_folder.check_destination(out, RunOptions())
    run_folder.check_destination(out, RunOptions(overwrite=True))  # allowed to start...
    assert json.loads((out / "metrics.json").read_text())["old"]  # ...and nothing removed by starting
    staging = run_folder.staging_dir(out)
    run_folder.reset_staging(staging)
    (staging / "metrics.json").write_text('{"status": "completed", "old": false}')
    (staging / files.CHECKPOINTS).mkdir()
    run_folder.finish(out, staging)  # only a completed run gets here
    assert json.loads((out / "metrics.json").read_text()) == {"status": "completed", "old": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging, no set-aside old folder
    assert not (out / files.CHECKPOINTS).exists()


def test_the_run_folder_page_names_every_file_a_completed_run_holds():
    from helpers import REPO

    page = (REPO / "docs" / "run-folder.md").read_text()
    assert [name for name in files.COMPLETED if f"`{name}`" not in page] == []
    assert f"`{files.CHECKPOINT_SEAL}`" in page and f"`.<name>{files.STAGING_SUFFIX}/`" in page
    assert f"`.<name>{files.LOCK_SUFFIX}`" in page
