"""Exports opened the way their users run them, each giving `verify` what it compares: logits at every position and a
greedy continuation (a model), or the token ids of a rendered prompt (an Ollama Modelfile's template).

- a merged model folder runs in transformers, in the dtype it was saved in (float32 for float16 on a CPU, which
  computes float16 poorly);
- a model GGUF, with or without a LoRA GGUF, runs in llama.cpp, in the precision of its weights;
- a Modelfile's TEMPLATE renders as Ollama renders it, and the GGUF it names tokenizes the text as llama.cpp does.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama_lora.data.formats import Message
from llama_lora.export import gguf_runtime, ollama_template
from llama_lora.export.gguf_types import by_file_type
from llama_lora.options import remote_code
from llama_lora.use.inference import device

DTYPE_PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


@torch.no_grad()
def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    """Float32 logits at every position of `ids` from a transformers model."""
    return model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu().numpy()


@torch.no_grad()
def hf_greedy(model: Any, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
    """The greedy continuation of `ids` from a transformers model, ending with a stop token (kept) or at the limit."""
    out = model.generate(input_ids=torch.tensor([ids], device=model.device), attention_mask=None,
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=stops[0],
                         temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


class MergedModel:
    """A merged model folder in transformers."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM

        saved = json.loads((folder / "config.json").read_text()).get("dtype") or "float32"
        dtype = "float32" if saved == "float16" and not torch.cuda.is_available() else saved
        self.precision = DTYPE_PRECISION.get(saved, saved)
        with remote_code.explained(str(folder)):  # a model's own code never runs here: transformers' architectures only
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), trust_remote_code=False,
                                                              device_map={"": device()}, use_safetensors=True).eval()

    def logits(self, ids: list[int]) -> np.ndarray:
        return hf_logits(self.model, ids)

    def greedy(self, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
        return hf_greedy(self.model, ids, max_new_tokens, stops)


class GgufCandidate:
    """A model GGUF (and a LoRA GGUF) in llama.cpp; its precision is the model file's type."""

    def __init__(self, model: Path, lora: Path | None, context: int, lora_scale: float = 1.0):
        import gguf

        file_type = gguf.GGUFReader(model).fields["general.file_type"].contents()
        declared = by_file_type(file_type)
        self.precision = declared.name if declared else gguf.LlamaFileType(file_type).name.lower()
        self.runtime = gguf_runtime.GgufModel(model, lora, lora_scale, context)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.runtime.logits(ids)

    def greedy(self, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
        return self.runtime.greedy(ids, max_new_tokens, stops)

    def close(self) -> None:
        self.runtime.close()


class TemplateCandidate:
    """An Ollama Modelfile: its TEMPLATE and SYSTEM render a conversation, its FROM GGUF's tokenizer reads the text."""

    precision = "exact"

    def __init__(self, modelfile: Path):
        self.modelfile = ollama_template.read_modelfile(modelfile)
        self.vocabulary = gguf_runtime.GgufModel(self.modelfile.model, vocab_only=True)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return self.vocabulary.tokenize(ollama_template.render(self.modelfile, messages))

    def close(self) -> None:
        self.vocabulary.close()


@contextlib.contextmanager
def opened(candidate: Any) -> Iterator[Any]:
    """The candidate for the block, its memory released after it."""
    try:
        yield candidate
    finally:
        if hasattr(candidate, "close"):
            candidate.close()
