"""Helpers the tests share: the repository path, loading a script as a module, reading a run folder's record,
waiting on a running training process, and writing tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


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


def make_run(folder: Path, base_path: str, seed: int, r: int = 8, dataset: str | None = None, **lora: object) -> Path:
    """A run folder as a training script leaves it (adapter, tokenizer, config.yaml, metrics.json), with a random
    (untrained) adapter on `base_path`; `dataset` replaces the recorded default (the bundled data)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_lora.options.config import Machine, TrainConfig, resolve, save_yaml

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, **lora)
    get_peft_model(base, config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
    cfg = resolve(TrainConfig(model="smollm2", r=r, dtype="float32", **({"dataset": dataset} if dataset else {})),
                  "peft", Machine(cuda=False))
    save_yaml(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "backend": "peft", "model": {
        "name": "smollm2", "path": base_path}, "load_in_4bit": False, "dtype": "float32"}))
    return folder
