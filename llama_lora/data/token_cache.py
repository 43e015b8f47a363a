"""Tokenized data as Arrow tables, written once and memory-mapped by every later run and every process of a launch.

Rendering, tokenizing and masking a million conversations takes minutes and, held as Python lists, tens of GB.
Here each split streams into a `datasets` Arrow file (input ids, labels, where each row came from) a few thousand
rows at a time, so memory stays flat, and later runs open the file memory-mapped: the pages are shared by every
process on the machine and read only when touched.

An entry is keyed by everything that changes its content: the bytes of the source files (or a hub dataset's
fingerprint), the tokenizer and its chat template, the data options (format, role map, loss-on, over-length
policy, max length, split, eval fraction and seed) and the source of the modules that render and mask. A changed
file is a new key, never a stale hit. An entry is built in a hidden folder and renamed into place only when whole,
so a killed build is never used. `--data-cache off` builds into a temporary folder removed at exit;
`python -m llama_lora.data.token_cache clear` empties the cache.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from llama_lora.errors import DataError
from llama_lora.model import assets

CACHE_VERSION = 1  # bump when an entry's layout changes
DATA_MODULES = ("sources.py", "formats/__init__.py", "formats/fields.py", "formats/conversation.py",
                "formats/instruction.py", "formats/markup.py", "formats/function_calling.py", "formats/message_tree.py",
                "chat_template.py", "render.py", "prepare.py", "token_cache.py")  # what reads, renders and masks a row
SCHEMA = pa.schema([
    ("where", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("length", pa.int32()),  # tokens before truncation
    ("trained_tokens", pa.int32()),  # tokens with a label, after truncation
    ("tools", pa.bool_()),  # the conversation defines or calls tools
])
META = "meta.json"


class TokenTable(Sequence):
    """A split's tokenized rows, memory-mapped from an Arrow file: rows come out as dicts, totals from columns."""

    def __init__(self, path: Path) -> None:
        from datasets import Dataset

        self.path = path
        self.dataset = Dataset.from_file(str(path))  # memory-mapped: nothing is read until a row is touched

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.dataset[index % len(self) if index < 0 else index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.dataset.iter(batch_size=1000):
            yield from (dict(zip(batch, values)) for values in zip(*batch.values()))

    def total(self, column: str) -> int:
        """Sum of a numeric column, or of list lengths for input_ids."""
        values = self.dataset.data.column(column)
        if column == "input_ids":
            values = pc.list_value_length(values)
        return int(pc.sum(values).as_py() or 0)

    def kept_lengths(self) -> list[int]:
        """Tokens of each kept row (after truncation), read from the Arrow column without building the rows."""
        return pc.list_value_length(self.dataset.data.column("input_ids")).to_pylist()

    def truncated_rows(self) -> int:
        """Rows kept but cut to the max length."""
        kept = pc.list_value_length(self.dataset.data.column("input_ids"))
        return int(pc.sum(pc.greater(self.dataset.data.column("length"), kept)).as_py() or 0)

    def first(self, column: str) -> dict[str, Any] | None:
        """The first row whose boolean `column` is true (the first tool-calling row), or None."""
        index = pc.index(self.dataset.data.column(column), True).as_py()
        return self[index] if index >= 0 else None


class TableWriter:
    """Rows streamed into an Arrow file in the format `datasets` memory-maps."""

    def __init__(self, path: Path) -> None:
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, SCHEMA)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._writer.write_batch(pa.RecordBatch.from_pylist([_record(row) for row in rows], schema=SCHEMA))

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {"where": row["where"], "input_ids": row["input_ids"], "labels": row["labels"], "length": row["length"],
            "trained_tokens": sum(label != -100 for label in row["labels"]), "tools": bool(row.get("tools"))}


def cache_dir(setting: str) -> Path | None:
    """The cache folder for --data-cache: auto is $LLAMA_LORA_DATA_CACHE, else <cache root>/data; off is None."""
    if setting == "off":
        return None
    if setting == "auto":
        return Path(os.environ.get("LLAMA_LORA_DATA_CACHE") or assets.cache_root() / "data")
    return Path(setting).expanduser()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(dataset: str) -> Any:
    """What a source's content is known by: each local file's bytes, or a hub dataset's own fingerprints."""
    from llama_lora.data.sources import local_source

    path = local_source(dataset)
    if path is not None and path.is_file():
        return file_digest(path)
    if path is not None:
        return {str(f.relative_to(path)): file_digest(f) for f in sorted(path.rglob("*")) if f.is_file()}
    import datasets

    try:
        loaded = datasets.load_dataset(dataset)
    except Exception as err:  # datasets raises many types (offline, gated, not found, bad config)
        raise DataError(f"{dataset}: cannot load with datasets.load_dataset: {type(err).__name__}: {err}") from err
    parts = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    return {split: part._fingerprint for split, part in parts.items()}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides token ids: the tokenizer's full definition, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest = hashlib.sha256((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())))
                            .encode())
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token,
                              tokenizer.eos_token, tokenizer.add_bos_token if hasattr(tokenizer, "add_bos_token")
                              else None], default=str).encode())
    return digest.hexdigest()


def cache_key(cfg: Any, tokenizer: Any) -> str:
    """The key of the entry a run's data maps to (every input that changes a token or a label)."""
    code = Path(__file__).parent
    key = {
        "version": CACHE_VERSION,
        "code": {name: file_digest(code / name) for name in DATA_MODULES},
        "dataset": source_fingerprint(cfg.dataset),
        "eval_dataset": source_fingerprint(cfg.eval_dataset) if cfg.eval_dataset else None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": {name: getattr(cfg, name) for name in ("format", "role_map", "loss_on", "overlength",
                                                          "max_seq_length", "dataset_split", "eval_fraction", "seed")},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def complete(entry: Path) -> bool:
    """True for an entry whose build finished (the metadata is written last, inside the renamed folder)."""
    return (entry / META).is_file()


def staging_entry(root: Path, key: str) -> Path:
    """A private folder to build an entry in; renamed into place by `publish`."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=root))


def publish(staging: Path, entry: Path) -> None:
    """Rename a whole entry into place; if another process published it first, keep theirs."""
    if entry.exists() and not complete(entry):  # a folder without metadata was never a finished entry
        shutil.rmtree(entry)
    try:
        staging.rename(entry)
    except OSError:
        if not complete(entry):
            raise
        shutil.rmtree(staging, ignore_errors=True)


def temporary_entry() -> Path:
    """A folder for a run without the cache, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="llama-lora-data-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def write_meta(entry: Path, meta: dict[str, Any]) -> None:
    (entry / META).write_text(json.dumps(meta))


def read_meta(entry: Path) -> dict[str, Any]:
    return json.loads((entry / META).read_text())


def clear(root: Path) -> int:
    """Remove every entry (and any half-built one) under the cache folder; returns how many went."""
    if not root.is_dir():
        return 0
    entries = [p for p in root.iterdir() if p.is_dir()]
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    return len(entries)


def main(argv: list[str]) -> int:
    """python -m llama_lora.data.token_cache [list|clear] [FOLDER]: show or empty the tokenized-data cache."""
    command = argv[0] if argv else "list"
    root = Path(argv[1]) if len(argv) > 1 else cache_dir("auto")
    if command == "clear":
        print(f"Removed {clear(root)} entries from {root}")
        return 0
    if command == "list":
        entries = sorted(p for p in root.iterdir() if p.is_dir() and complete(p)) if root.is_dir() else []
        for entry in entries:
            size = sum(f.stat().st_size for f in entry.iterdir())
            print(f"{entry}  {size / 1e6:,.1f} MB  {read_meta(entry)['sources']['train']}")
        print(f"{len(entries)} entries in {root}")
        return 0
    print("usage: python -m llama_lora.data.token_cache [list|clear] [FOLDER]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
