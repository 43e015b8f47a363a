"""A quiet start: library messages that are not the user's business, silenced one by one at their source.

Each entry drops one known message from the one library logger that emits it, and says why it is noise here;
every other message of those loggers (and every other warning) still reaches the terminal. Installed before
the heavy libraries are imported, since most of these fire at import time.
"""

from __future__ import annotations

import logging
from typing import Any

# (logger, text the message contains, why it is not the user's business)
KNOWN_NOISE: tuple[tuple[str, str, str], ...] = (
    # transformers imports torchao for its TorchAo quantizer; torchao registers two of its enums with torch's
    # pytree, which torch 2.13 deprecates. A matter between those two libraries, fired on every import.
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported", "torchao vs torch deprecation"),
    # torchao's wheel carries CUDA extension libraries (mxfp8, CUTLASS sm90a) that cannot load on this machine;
    # they serve torchao's own float8 kernels, which this project never uses.
    ("torchao", "/torchao/_C", "torchao's optional CUDA extensions"),
    # bitsandbytes' CPU backend tries to fetch a faster 4-bit kernel from the hub through the optional `kernels`
    # package and falls back to its own; the fallback is what runs (and the hub is not reachable offline anyway).
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "optional hub kernel"),
    # `use_adapter.py eval` hands lm-eval the run's loaded model (base + adapter) instead of a name, which is how it
    # scores the same weights with the adapter on and off; lm-eval warns about that way of calling it, twice.
    ("lm_eval.models.huggingface", "`pretrained` model kwarg is not of type `str`", "lm-eval given a loaded model"),
    ("lm_eval.models.huggingface", "Passed an already-initialized model through `pretrained`",
     "lm-eval given a loaded model"),
)


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message contains a given text."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install() -> None:
    """Attach the filters (once) to the loggers that emit the known noise."""
    for name, text, _why in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))


def quiet_tokenizer(tokenizer: Any) -> Any:
    """Turn off clean_up_tokenization_spaces where transformers ignores it anyway (BPE tokenizers, such as
    Llama 3's and SmolLM2's), so decoding does not warn that it is ignored; decoded text is unchanged."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer
