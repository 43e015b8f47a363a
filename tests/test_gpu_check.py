"""The GPU check rehearsed on CPU (`--cpu`: every step, tiny sizes, the same record), and the wheel folder it
travels with: cut wheels stay installable (RECORD matches), damage and unmet requirements are caught."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, load_script

from llama_lora.run import files

gpu_wheels = load_script("benchmarks/gpu_wheels.py")
gpu_check = load_script("benchmarks/gpu_check.py")

# A stand-in for a training process that writes checkpoint-1 as the trainer does: its state first, the seal a
# moment later, then goes on training.
CHECKPOINTING = f"""
import pathlib, sys, time
checkpoint = pathlib.Path(sys.argv[1]) / "checkpoints" / "checkpoint-1"
checkpoint.mkdir(parents=True)
(checkpoint / "trainer_state.json").write_text("{{}}")
time.sleep(1.5)
(checkpoint / "{files.CHECKPOINT_SEAL}").write_text("{{}}")
time.sleep(600)
"""


def make_wheel(folder: Path, name: str, files: dict[str, bytes], requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel with METADATA, the files given and a RECORD of their hashes."""
    info = f"{name}-1.0.dist-info"
    files = {**files, f"{info}/METADATA": ("Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
                                          + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()}
    record = "".join(f"{path},{gpu_wheels.record_hash(data)},{len(data)}\n" for path, data in files.items())
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel


def test_a_cut_wheel_keeps_a_record_that_matches_its_files(tmp_path):
    libraries = ["cpu", "cuda130", "cuda124", "cuda131", "rocm64", "xpu2025"]
    wheel = make_wheel(tmp_path, "bitsandbytes", {f"bitsandbytes/libbitsandbytes_{name}.so": name.encode() * 500
                                                  for name in libraries})
    saved = gpu_wheels.cut(wheel, dict(gpu_wheels.CUTS)["bitsandbytes-"])
    assert saved > 0 and gpu_wheels.verify(wheel) == []
    kept = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    assert kept == ["bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so"]


def test_a_file_that_does_not_match_its_record_is_named(tmp_path):
    wheel = make_wheel(tmp_path, "trl", {"trl/__init__.py": b"x = 1\n"})
    with zipfile.ZipFile(wheel) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members["trl/__init__.py"] = b"x = 2\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in members.items():
            archive.writestr(path, data)
    assert gpu_wheels.verify(wheel) == [f"{wheel.name}: trl/__init__.py does not match its RECORD hash"]


def test_requirements_are_met_by_carried_wheels_or_the_image_and_others_are_named(tmp_path):
    make_wheel(tmp_path, "lazy-importer", {"lazy_importer.py": b""})
    wheel = make_wheel(tmp_path, "importlib_metadata", {"m.py": b""},
                       requires=("lazy-importer>=0.1", "zipp>=3.20", "torch>=99", "nowhere-pkg",
                                 "colorama; sys_platform == 'win32'"))
    missing, assumed = gpu_wheels.unmet([wheel, tmp_path / "lazy-importer-1.0-py3-none-any.whl"])
    assert missing == ["importlib_metadata needs nowhere-pkg: neither carried nor on the image",
                       "importlib_metadata needs torch>=99: 2.11.0 is on the image"]
    assert assumed == ["importlib_metadata needs zipp>=3.20: on the image, version not read"]


def test_the_interrupted_run_is_killed_only_once_its_checkpoint_is_sealed(tmp_path):
    staging = tmp_path / ".run.partial"
    runner = gpu_check.Runner(tmp_path / "work", gpu_check.CPU)
    killed = runner.run_killed("killed", [sys.executable, "-c", CHECKPOINTING, str(staging)], staging, 1)
    assert killed.code == -9
    assert (staging / "checkpoints" / "checkpoint-1" / files.CHECKPOINT_SEAL).exists()  # else --resume refuses it


@pytest.mark.slow
def test_the_check_rehearses_every_step_on_cpu_and_records_pass_or_fail(tmp_path, smollm2_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--work", str(tmp_path / "work"),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=3600,
                            check=False)
    records = list((tmp_path / "out").glob("gpu-check-cpu-*.json"))
    assert len(records) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(records[0].read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert set(steps) == {"train lora16-peft", "train lora16-unsloth", "resume lora16-peft", "compare lora16",
                          "merge lora16-peft", "gguf lora16-peft", "generate lora16-peft", "check lora16-unsloth",
                          "swap lora16", "plan lora16-peft"}
    failed = {name: s["reason"] for name, s in steps.items() if s["status"] == "fail"}
    assert result.returncode == 0 and record["passed"] and not failed, failed
    # the figures the GPU record is read for
    assert steps["train lora16-unsloth"]["figures"]["non_lora_tensors"] == []  # LoRA weights only
    assert steps["resume lora16-peft"]["figures"]["max_relative_loss_difference"] <= 1e-4
    assert steps["compare lora16"]["figures"]["fair"] is True
    assert steps["plan lora16-peft"]["status"] == "skipped" and steps["plan lora16-peft"]["figures"]["plan_total_gib"]
    page = records[0].with_suffix(".md").read_text()
    assert "**PASSED**: 9 of 10 steps passed" in page and "| resume lora16-peft | pass |" in page
