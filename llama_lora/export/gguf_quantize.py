"""k-quant GGUF files (q4_k_m and the other common ones) made by llama.cpp's own quantizer, `llama_model_quantize`,
from an f16 GGUF: the same code `llama-quantize` runs, never a quantizer of ours.

k-quants pack 256 values per block, so a weight whose rows are not a multiple of 256 wide cannot take one;
llama.cpp then stores it in a fallback type (q5_0, q8_0, ...) and logs why. The fallbacks are read from that log
and returned, so the command can say how much of the file really is the k-quant asked for.
"""

from __future__ import annotations

import ctypes
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llama_lora.errors import UsageError
from llama_lora.export.gguf_runtime import captured_log, llama_cpp_module

PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")
FALLBACK = re.compile(r"(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\)"
                      r"\s+-> falling back to\s+(\w+)")


@dataclass(frozen=True)
class Fallback:
    """One weight llama.cpp could not store in the k-quant it wanted."""

    tensor: str
    columns: int  # its row width
    block: int  # the k-quant's block size, which the row width is not a multiple of
    wanted: str
    used: str


@dataclass(frozen=True)
class Quantized:
    path: Path
    fallbacks: list[Fallback] = field(default_factory=list)

    def fallback_summary(self) -> str:
        """`180 weights (rows of 576 not a multiple of 256): q5_0 x166, q8_0 x14`, or '' when none fell back."""
        if not self.fallbacks:
            return ""
        widths = sorted({f.columns for f in self.fallbacks})
        blocks = sorted({f.block for f in self.fallbacks})
        used = Counter(f.used for f in self.fallbacks)
        return (f"{len(self.fallbacks)} weights (rows of {', '.join(map(str, widths))} not a multiple of "
                f"{', '.join(map(str, blocks))}): " + ", ".join(f"{t} x{n}" for t, n in used.most_common()))


def quantize(source: Path, out: Path, file_type: int, progress: bool = False) -> Quantized:
    """Quantize the f16 GGUF `source` into `out` as llama.cpp file type `file_type` (gguf.LlamaFileType),
    writing under a temporary name first; returns the weights that fell back to another type."""
    from tqdm import tqdm

    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    log: list[str] = []
    bar = tqdm(desc=out.name, unit="tensor", disable=not progress)

    def on_text(text: str) -> None:
        log.append(text)
        if found := PROGRESS.search(text):
            bar.total = int(found.group(2))
            bar.update(int(found.group(1)) - bar.n)

    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with captured_log(on_text):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise UsageError(f"llama.cpp could not quantize {source}: {''.join(log)[-1500:]}")
        tmp.replace(out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    text = "".join(log)
    fallbacks = [Fallback(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4), m.group(5))
                 for m in FALLBACK.finditer(text)]
    return Quantized(out, fallbacks)
