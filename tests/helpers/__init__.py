"""Helpers the tests share: the repository path, loading a script as a module, reading a run folder's record,
waiting on a running training process, running the training CLI without training, and writing tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def recording_cli(seen: list):
    """The real training CLI of the PEFT backend, with a runner that appends (config, run options) to `seen` and
    exits 0 instead of training."""
    from llama_lora.backend import BACKENDS, Backend
    from llama_lora.train.cli import build_cli

    return build_cli(Backend(BACKENDS["peft"], load=lambda cfg, path, trust_remote_code: None),
                     train=lambda cfg, backend, options: seen.append((cfg, options)) or 0)


def capture_cli(*args: str) -> tuple[int, object, str]:
    """Run the real training CLI without training: (exit status, the TrainConfig it would train, or None,
    everything it printed)."""
    from click.testing import CliRunner

    seen: list = []
    result = CliRunner().invoke(recording_cli(seen), list(args))
    return result.exit_code, (seen[0][0] if seen else None), result.output


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dialogue(question: str, answer: str) -> dict:
    return {"messages": [{"role": "student", "content": question}, {"role": "teacher", "content": answer}]}
