"""A checkpoint counts only once its seal (complete.json, written last and atomically) lists every file with its size
and hash; --resume passes over a newer checkpoint whose files no longer match (saying why) for the newest intact
one, and so does the failure message; pruning never leaves a run without a complete checkpoint. On checkpoint
folders written here with real files; tests/e2e/test_end_phase.py resumes from real training checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llama_lora.errors import UsageError
from llama_lora.run import checkpoints, files, run_folder


def checkpoint(root: Path, step: int, sealed: bool = True) -> Path:
    """A checkpoint folder as the trainer writes one (state, adapter, optimizer), sealed unless told."""
    folder = root / files.CHECKPOINTS / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    save_file({"lora_A": torch.full((4, 8), float(step))}, folder / "adapter_model.safetensors")
    torch.save({"state": {0: torch.zeros(8)}}, folder / "optimizer.pt")
    if sealed:
        checkpoints.seal(folder)
    return folder


def test_a_checkpoint_with_its_trainer_state_but_no_seal_is_not_complete(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 4, sealed=False)  # killed after trainer_state.json, before the seal
    assert [c.name for c in checkpoints.sealed(tmp_path / files.CHECKPOINTS)] == ["checkpoint-2"]
    latest, passed_over = run_folder.resume_checkpoint(tmp_path, "latest")
    assert latest.name == "checkpoint-2" and passed_over == [
        "checkpoint-4: it has no complete.json: the run stopped while writing it"]


def test_the_seal_lists_every_file_with_its_size_and_hash_and_is_written_last(tmp_path):
    folder = checkpoint(tmp_path, 2)
    seal = json.loads((folder / files.CHECKPOINT_SEAL).read_text())
    assert seal["step"] == 2
    assert sorted(seal["files"]) == ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert seal["files"]["optimizer.pt"]["size"] == (folder / "optimizer.pt").stat().st_size
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # written whole, no temporary left
    assert checkpoints.problem(folder) is None


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "adapter_model.safetensors").write_bytes((f / "adapter_model.safetensors").read_bytes()[:-9]),
     "adapter_model.safetensors has .* bytes, .* when it was written"),
    (lambda f: (f / "trainer_state.json").write_text((f / "trainer_state.json").read_text().replace("6", "7")),
     "trainer_state.json changed since it was written"),
    (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda f: (f / files.CHECKPOINT_SEAL).write_text("{not json"), "its complete.json cannot be read"),
])
def test_resume_passes_over_a_damaged_newest_checkpoint_for_the_newest_intact_one(tmp_path, damage, why):
    checkpoint(tmp_path, 4)
    damage(checkpoint(tmp_path, 6))
    latest, passed_over = run_folder.resume_checkpoint(tmp_path, "latest")
    assert latest.name == "checkpoint-4"
    assert len(passed_over) == 1 and passed_over[0].startswith("checkpoint-6: ")
    assert re.search(why, passed_over[0])
    with pytest.raises(UsageError, match=f"--resume .*checkpoint-6: not a complete checkpoint \\({why}"):
        run_folder.resume_checkpoint(tmp_path, str(tmp_path / files.CHECKPOINTS / "checkpoint-6"))


def test_resume_with_no_intact_checkpoint_says_why_each_was_passed_over(tmp_path):
    (checkpoint(tmp_path, 2) / "optimizer.pt").unlink()
    with pytest.raises(UsageError, match=r"no intact checkpoint .*\(checkpoint-2: optimizer.pt is missing\)"):
        run_folder.resume_checkpoint(tmp_path, "latest")


def test_pruning_keeps_the_newest_sealed_ones_and_the_best_and_drops_unsealed_leftovers(tmp_path):
    for step in (1, 2, 3, 5):
        checkpoint(tmp_path, step)
    checkpoint(tmp_path, 4, sealed=False)  # a crash's half-written checkpoint, older than the newest seal
    checkpoints.prune(tmp_path / files.CHECKPOINTS, keep=2, also_keep=str(tmp_path / files.CHECKPOINTS / "checkpoint-1"))
    assert [c.name for c in checkpoints.listed(tmp_path / files.CHECKPOINTS)] == [
        "checkpoint-1", "checkpoint-3", "checkpoint-5"]


def test_pruning_never_removes_the_last_complete_checkpoint_for_one_not_yet_sealed(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 3, sealed=False)  # being written (or killed while written)
    checkpoints.prune(tmp_path / files.CHECKPOINTS, keep=1)
    assert [c.name for c in checkpoints.listed(tmp_path / files.CHECKPOINTS)] == ["checkpoint-2", "checkpoint-3"]


def test_a_failed_run_names_the_newest_intact_checkpoint_not_a_damaged_newer_one(tmp_path, capsys):
    from llama_lora.options.config import Machine, TrainConfig, resolve
    from llama_lora.run import run_record
    from llama_lora.train.outcome import EXIT_TRAINING_FAILED, failed

    staging = tmp_path / ".run.partial"
    good = checkpoint(staging, 4)
    (checkpoint(staging, 6) / "adapter_model.safetensors").write_bytes(b"garbage")
    cfg = resolve(TrainConfig(model="smollm2", dtype="float32"), "peft", Machine(cuda=False))
    assert failed(cfg, staging, RuntimeError("disk gone")) == EXIT_TRAINING_FAILED
    assert f"The newest intact checkpoint is {good};" in capsys.readouterr().err
    assert run_record.read(staging).last_checkpoint == str(good)
