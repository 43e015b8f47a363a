"""GGUF files run in llama.cpp itself (through llama-cpp-python): a model GGUF, optionally with a LoRA GGUF applied,
gives logits at every position, a greedy continuation, and its own tokenization of a prompt text.

llama-cpp-python is an optional dependency (`verify` and `gguf --types q4_k_m` need it); it is imported only here
and in gguf_quantize.py, and a missing install is a UsageError that says how to get it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llama_lora.errors import UsageError

LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"


def llama_cpp_module() -> Any:
    """The llama_cpp module, or a UsageError naming the package to install."""
    try:
        import llama_cpp
    except ImportError as err:
        raise UsageError(f"this needs llama.cpp's Python binding: pip install {LLAMA_CPP_PIN} (a CPU build; "
                         "docs/using-adapters.md says how to build it for a GPU)") from err
    return llama_cpp


class GgufModel:
    """One model GGUF (plus a LoRA GGUF at `lora_scale`) loaded in llama.cpp, computing in its stored precision."""

    def __init__(self, model: Path, lora: Path | None = None, lora_scale: float = 1.0, context: int = 2048,
                 vocab_only: bool = False):
        llama_cpp = llama_cpp_module()
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        log: list[str] = []
        try:
            with captured_log(log.append):  # llama.cpp's loading chatter; shown only when loading fails
                self.llm = llama_cpp.Llama(
                    str(model), lora_path=str(lora) if lora else None, lora_scale=lora_scale, n_ctx=context,
                    n_batch=context, n_ubatch=context, logits_all=True, verbose=False, n_threads=threads,
                    n_gpu_layers=-1,  # every layer on the GPU in a GPU build; a CPU build ignores it
                    vocab_only=vocab_only,  # the tokenizer alone: no weights read
                )
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"llama.cpp cannot load {model}" + (f" with {lora}" if lora else "")
                             + f": {err}\n{''.join(log)[-1500:]}") from err

    def logits(self, ids: list[int]) -> np.ndarray:
        """Float32 logits at every position of `ids`, computed from an empty cache."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
        """The greedy continuation of `ids`, stopping after a stop token (kept) or `max_new_tokens` tokens."""
        self.llm.reset()
        self.llm.eval(ids)
        new: list[int] = []
        while len(new) < max_new_tokens:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            new.append(token)
            if token in stops:
                break
            self.llm.eval([token])
        return new

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids for a prompt text, special tokens parsed and BOS added as the GGUF says."""
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def close(self) -> None:
        self.llm.close()


@contextlib.contextmanager
def captured_log(on_text: Callable[[str], None]) -> Iterator[None]:
    """Send llama.cpp's log lines to `on_text` instead of the terminal for the block (the quantizer logs one line
    per tensor), then give the log back to llama-cpp-python."""
    llama_cpp = llama_cpp_module()
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def receive(level: int, text: bytes, user_data: Any) -> None:
        on_text(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(receive, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
