"""The model GGUF types `gguf --types` writes, each declared once: its name, llama.cpp's file type, who writes it and
what it is for. The `gguf` command's choices and help, `verify`'s merged-GGUF targets and the docs table read this.

f16 and q8_0 are written directly by gguf_writer; the k-quants come from llama.cpp's own quantizer run on the f16
file (gguf_quantize.py). A new type is one line here, plus its tolerance in tolerances.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from llama_lora.export import gguf_writer

FileType = gguf.LlamaFileType


@dataclass(frozen=True)
class GgufType:
    name: str  # as --types takes it
    file_type: FileType  # general.file_type in the file; llama.cpp's quantizer target
    summary: str

    @property
    def by_llama_cpp(self) -> bool:
        """True when llama.cpp's quantizer makes it from the f16 file (gguf_writer writes only its own types)."""
        return self.name not in gguf_writer.QUANT_TYPES

    @property
    def label(self) -> str:
        """How llama.cpp names the type in file names: Q4_K_M."""
        return self.name.upper()


GGUF_TYPES = {t.name: t for t in (
    GgufType("f16", FileType.MOSTLY_F16, "16-bit floats: the weights to f16 rounding; the base an ADAPTER wants"),
    GgufType("q8_0", FileType.MOSTLY_Q8_0, "8-bit blocks of 32 values"),
    GgufType("q6_k", FileType.MOSTLY_Q6_K, "6-bit k-quant"),
    GgufType("q5_k_m", FileType.MOSTLY_Q5_K_M, "5-bit k-quant, a few tensors at 6 bits"),
    GgufType("q5_k_s", FileType.MOSTLY_Q5_K_S, "5-bit k-quant"),
    GgufType("q4_k_m", FileType.MOSTLY_Q4_K_M, "4-bit k-quant, a few tensors at 6 bits: the type most models on "
             "Ollama come in"),
    GgufType("q4_k_s", FileType.MOSTLY_Q4_K_S, "4-bit k-quant"),
)}


def by_file_type(file_type: int) -> GgufType | None:
    """The declared type a GGUF's general.file_type names, if any."""
    return next((t for t in GGUF_TYPES.values() if t.file_type == file_type), None)


def docs_table() -> str:
    """The markdown table of types that docs/using-adapters.md shows."""
    rows = ["| `--types` | file name ends | written by | what it is |", "|---|---|---|---|"]
    rows += [f"| `{t.name}` | `-{t.label}.gguf` | {'llama.cpp quantizer' if t.by_llama_cpp else 'gguf_writer'} | "
             f"{t.summary} |" for t in GGUF_TYPES.values()]
    return "\n".join(rows)
