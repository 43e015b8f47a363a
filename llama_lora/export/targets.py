"""The export targets, each declared once: its name, what it is, the command that makes it, how `verify` builds it
when the user has not, where `verify` finds the user's own, and how `verify` opens it. `verify`, its --targets choices
and the docs table (`docs_table`) read TARGETS; the merged-GGUF targets follow the GGUF types `gguf --types` writes.

A new target is one `Target(...)` in TARGETS plus the code that builds and opens it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_lora.errors import UsageError
from llama_lora.export import candidates, gguf, merge
from llama_lora.export.gguf_types import GGUF_TYPES
from llama_lora.export.ollama_template import read_modelfile
from llama_lora.use.inference import TrainedRun

MERGED_DTYPE = "bfloat16"  # what `merge` writes by default, so the merged target checks what users get
# A merged GGUF is made from a float16 merge: its f16 weights are then rounded once, not bfloat16 then f16 again
GGUF_SOURCE_DTYPE = "float16"
CONTEXT = 2048  # llama.cpp context for the compared prompts (each at most verify_prompts.MAX_SCORED_TOKENS + answer)


@dataclass(frozen=True)
class Given:
    """The exports the user already made: the folder `merge` wrote, the folders `gguf` wrote."""

    merged: Path | None = None
    gguf: tuple[Path, ...] = ()

    def modelfiles(self) -> list[Path]:
        """The Modelfiles of the --gguf folders, those with an ADAPTER line (a run's export) first."""
        found = [folder / gguf.MODELFILE for folder in self.gguf if (folder / gguf.MODELFILE).is_file()]
        return sorted(found, key=lambda path: read_modelfile(path).adapter is None)


class Workshop:
    """Exports built on demand in a temporary folder, each at most once, with the project's own commands."""

    def __init__(self, run: TrainedRun, folder: Path, merged_types: list[str]):
        self.run, self.folder, self.merged_types = run, folder, merged_types
        self._merged: dict[str, Path] = {}

    def merged(self, dtype: str) -> Path:
        """`merge RUN OUT --dtype dtype`."""
        if dtype not in self._merged:
            merge.merge(self.run, self.folder / f"merged-{dtype}", dtype)
            self._merged[dtype] = self.folder / f"merged-{dtype}"
        return self._merged[dtype]

    @functools.cached_property
    def run_gguf(self) -> Path:
        """`gguf RUN --types f16`: the base model f16 GGUF, the LoRA GGUF and their Modelfile; returns the Modelfile."""
        base = Path(self.run.base) if Path(self.run.base).is_dir() else None
        return gguf.export(self.run.folder, self.folder / "gguf-run", ["f16"], base, None, None)[-1]

    @functools.cached_property
    def merged_gguf(self) -> dict[str, Path]:
        """`gguf MERGED --types ...` for every merged type checked, in one go: the k-quants share one f16 file."""
        written = gguf.export(self.merged(GGUF_SOURCE_DTYPE), self.folder / "gguf-merged", self.merged_types, None,
                              None, None)
        return dict(zip(self.merged_types, written))


@dataclass(frozen=True)
class Target:
    name: str
    summary: str  # what it is, for the docs table and reports
    command: str  # how a user makes it
    kind: str  # "logits": a model compared with the reference; "template": prompt token ids compared
    build: Callable[[Workshop], Path]  # made by verify when the user gave none
    find: Callable[[Given], Path | None]  # the user's own, among the folders given
    load: Callable[[Path], Any]  # opens what build/find returned (candidates.py)
    default: bool = True  # checked when --targets does not name the targets
    merged_type: str | None = field(default=None)  # the GGUF type a merged-GGUF target needs built
    needs_llama_cpp: bool = True  # runs in (or tokenizes with) llama.cpp


def _given_run_modelfile(given: Given) -> Path | None:
    """The Modelfile of a run's export (FROM base + ADAPTER LoRA) among the --gguf folders."""
    return next((path for path in given.modelfiles() if read_modelfile(path).adapter is not None), None)


def _open_gguf_pair(modelfile: Path) -> Any:
    """FROM + ADAPTER of a Modelfile in llama.cpp, as Ollama runs them."""
    parsed = read_modelfile(modelfile)
    return candidates.GgufCandidate(parsed.model, parsed.adapter, CONTEXT)


def _given_merged_gguf(type_name: str) -> Callable[[Given], Path | None]:
    """Finds a model GGUF of this type in a --gguf folder exported from a merged model (no ADAPTER in its Modelfile)."""
    def find(given: Given) -> Path | None:
        import gguf as gguf_package

        for modelfile in given.modelfiles():
            if read_modelfile(modelfile).adapter is not None:
                continue
            for path in sorted(modelfile.parent.glob("*.gguf")):
                fields = gguf_package.GGUFReader(path).fields
                if (fields["general.type"].contents() == "model"
                        and fields["general.file_type"].contents() == GGUF_TYPES[type_name].file_type):
                    return path
        return None
    return find


def merged_gguf_target(type_name: str, default: bool) -> Target:
    """The merged model as a `type_name` GGUF in llama.cpp."""
    return Target(
        f"gguf-{type_name}", f"the merged model as a {type_name} GGUF in llama.cpp ({GGUF_TYPES[type_name].summary})",
        f"use_adapter.py merge RUN MERGED --dtype {GGUF_SOURCE_DTYPE} && use_adapter.py gguf MERGED --types {type_name}",
        "logits",
        build=lambda workshop: workshop.merged_gguf[type_name], find=_given_merged_gguf(type_name),
        load=lambda path: candidates.GgufCandidate(path, None, CONTEXT), default=default, merged_type=type_name)


TARGETS = {target.name: target for target in (
    Target("merged", f"the adapter merged into its base, a transformers model folder ({MERGED_DTYPE} by default)",
           "use_adapter.py merge RUN MERGED", "logits", build=lambda workshop: workshop.merged(MERGED_DTYPE),
           find=lambda given: given.merged, load=candidates.MergedModel, needs_llama_cpp=False),
    Target("gguf-lora", "the base model as an f16 GGUF with the LoRA GGUF applied, in llama.cpp (Ollama's FROM + "
           "ADAPTER)", "use_adapter.py gguf RUN", "logits", build=lambda workshop: workshop.run_gguf,
           find=_given_run_modelfile, load=_open_gguf_pair),
    *(merged_gguf_target(name, default=name in ("f16", "q8_0", "q4_k_m")) for name in GGUF_TYPES),
    Target("ollama-template", "the Modelfile's TEMPLATE and SYSTEM, rendered for each prompt as Ollama renders them and "
           "tokenized by the GGUF, against the training prompt token by token", "use_adapter.py gguf RUN", "template",
           build=lambda workshop: workshop.run_gguf, find=lambda given: next(iter(given.modelfiles()), None),
           load=candidates.TemplateCandidate),
)}


def chosen(names: str | None, given: Given) -> list[Target]:
    """The targets `--targets a,b` names, in declaration order; without it, every default target and every other
    target whose export the user gave."""
    if names:
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in TARGETS]
        if unknown or not wanted:
            raise UsageError(f"--targets {names!r}: expected a comma-separated list of " + ", ".join(TARGETS))
        return [t for t in TARGETS.values() if t.name in wanted]
    return [t for t in TARGETS.values() if t.default or t.find(given) is not None]


def docs_table() -> str:
    """The markdown table of targets that docs/using-adapters.md shows."""
    rows = ["| target | what is checked | made by | checked by default |", "|---|---|---|---|"]
    rows += [f"| `{t.name}` | {t.summary} | `{t.command}` | {'yes' if t.default else 'when given, or with --targets'} |"
             for t in TARGETS.values()]
    return "\n".join(rows)
