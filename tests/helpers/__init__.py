"""Helpers the tests share: the repository path, loading a script as a module, reading a run folder's record,
waiting on a running training process, and writing tiny datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The machine's own GPU setting, read before the test session hides every GPU (hide_gpus_and_hub).
MACHINE_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")


def hide_gpus_and_hub() -> None:
    """Make this process, and every subprocess that inherits its environment, see no GPU and no model hub.

    The tests exercise the CPU path, the embedded model, whatever the machine: on a CUDA machine the entry scripts'
    default is the gated Llama 3.1 8B in 4-bit, which a contributor may not have access to and which would change
    what the tests assert. Must run before torch initialises CUDA (conftest does it at import)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["HF_HUB_OFFLINE"] = "1"


def gpu_environment() -> dict[str, str]:
    """The environment for a subprocess of a `gpu`-marked test: the session's, with the machine's GPUs visible."""
    env = dict(os.environ)
    if MACHINE_CUDA_VISIBLE_DEVICES is None:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = MACHINE_CUDA_VISIBLE_DEVICES
    return env


def machine_has_gpu() -> bool:
    """True when the machine has an NVIDIA GPU the `gpu` tests can use (asked of nvidia-smi, not of torch, which
    this process must not initialise on the GPU)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    return bool(smi) and MACHINE_CUDA_VISIBLE_DEVICES != "" and subprocess.run(
        [smi, "-L"], capture_output=True, check=False).returncode == 0


def load_script(relative: str):
    """Import a top-level script (an entry point or benchmark) as a module, the way its tests need it."""
    import importlib.util
    import sys

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def read_metrics(folder: Path) -> dict:
    """A run folder's metrics.json, read through the typed run record (current key names, validated)."""
    from llama_lora.run import run_record

    record = run_record.read(folder)
    assert record is not None, f"{folder} has no metrics.json"
    return record.dump()


def wait_for_logged_steps(process, staging: Path, steps: int = 1, timeout: float = 600) -> None:
    """Wait until a running training process has logged `steps` steps in its staging folder's train_log.jsonl
    (fails if the process ends first or the timeout passes)."""
    import time

    log = staging / "train_log.jsonl"
    deadline = time.time() + timeout
    while len(log.read_text().splitlines() if log.exists() else []) < steps:
        assert process.poll() is None, "the run ended before it logged enough steps to be signalled"
        assert time.time() < deadline
        time.sleep(0.2)


def another_value(value):
    """Another value of the same kind: what a run that set this option differently would record."""
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, (list, tuple)):
        return [*value, "other"]
    return f"{value}-other"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dialogue(question: str, answer: str) -> dict:
    return {"messages": [{"role": "student", "content": question}, {"role": "teacher", "content": answer}]}
