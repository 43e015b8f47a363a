"""Tokenized data as Arrow tables, written once and memory-mapped by every later run and every process of a launch.

Rendering, tokenizing and masking a million conversations takes minutes and, held as Python lists, tens of GB.
Here each split streams into a `datasets` Arrow file (input ids, labels, where each row came from) a few thousand
rows at a time, so memory stays flat, and later runs open the file memory-mapped: the pages are shared by every
process on the machine and read only when touched.

An entry is keyed by everything that changes its content: the bytes of the source files (or a hub dataset's
fingerprint), the tokenizer and its chat template, the data options (format, role map, loss-on, over-length
policy, max length, split, eval fraction and seed) and the source of the modules that render and mask. A changed
file is a new key, never a stale hit. An entry is built in a hidden folder and renamed into place only when whole,
so a killed build is never used. `--data-cache off` builds into a temporary folder removed at exit.

An entry is verified every time it is used: meta.json records each table file's size and xxh3-128 hash (fast enough
to read gigabytes in about a second; benchmarks/data_throughput.py --cache measures it) and a hash of its own
content, so a truncated, damaged or edited entry is rebuilt with one line saying why, and the data hash a run records
is the hash of the rows it trains on. Every entry, finished or half-built, carries a marker file from its first
moment: `python -m llama_lora.data.token_cache clear` removes the folders that carry it and nothing else.
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
import xxhash

from llama_lora.errors import DataError
from llama_lora.model import assets
from llama_lora.options.config import CONFIG_FIELDS

CACHE_VERSION = 2  # bump when an entry's layout changes (2: verified files, the marker)
# every option recorded as changing the data's hash, besides the sources (known by their content, so a moved file
# still hits), and the two that change rows otherwise: truncation and the seeded eval split
TOKEN_OPTIONS = tuple(sorted(
    {name for name, field in CONFIG_FIELDS.items() if field.metadata["recorded"] == "data.hash"}
    - {"dataset", "eval_dataset"} | {"max_seq_length", "seed"}
))
SCHEMA = pa.schema([
    ("where", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("length", pa.int32()),  # tokens before truncation
    ("trained_tokens", pa.int32()),  # tokens with a label, after truncation
    ("tools", pa.bool_()),  # the conversation defines or calls tools
])
META = "meta.json"
MARKER = ".llama-lora-data-cache"  # written first into every entry: `clear` removes only folders holding it
MARKER_TEXT = "A tokenized-data cache entry of llama-lora; python -m llama_lora.data.token_cache clear removes it.\n"
TABLES = ("train.arrow", "eval.arrow")
HASH = "xxh3_128"


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


def blocks(path: Path) -> Iterator[memoryview]:
    """A file's bytes, block after block through one reused buffer (memory stays flat at any size)."""
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while read := handle.readinto(buffer):
            yield view[:read]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes: what a source file is known by in a cache key."""
    digest = hashlib.sha256()
    for block in blocks(path):
        digest.update(block)
    return digest.hexdigest()


def source_fingerprint(dataset: str) -> Any:
    """What a source's content is known by (each local file's bytes, or a hub dataset's own fingerprints), with the
    split a `SOURCE:SPLIT` picks."""
    from llama_lora.data.sources import local_source, split_spec

    name, split = split_spec(dataset)
    path = local_source(name)
    if path is not None and path.is_file():
        return {"split": split, "content": file_digest(path)}
    if path is not None:
        return {"split": split,
                "content": {str(f.relative_to(path)): file_digest(f) for f in sorted(path.rglob("*")) if f.is_file()}}
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # datasets raises many types (offline, gated, not found, bad config)
        raise DataError(f"{name}: cannot load with datasets.load_dataset: {type(err).__name__}: {err}") from err
    parts = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    return {"split": split, "content": {part_name: part._fingerprint for part_name, part in parts.items()}}


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
    code = Path(__file__).parent  # every module of the data stage: any of them may change how a row reads or renders
    key = {
        "version": CACHE_VERSION,
        "code": {str(module.relative_to(code)): file_digest(module) for module in sorted(code.rglob("*.py"))},
        "dataset": source_fingerprint(cfg.dataset),
        "eval_dataset": source_fingerprint(cfg.eval_dataset) if cfg.eval_dataset else None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": {name: getattr(cfg, name) for name in TOKEN_OPTIONS},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def complete(entry: Path) -> bool:
    """True for an entry whose build finished (the metadata is written last, inside the renamed folder)."""
    return (entry / META).is_file()


def staging_entry(root: Path, key: str) -> Path:
    """A private folder to build an entry in, marked as the cache's from the start; renamed into place by `publish`."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=root))
    (staging / MARKER).write_text(MARKER_TEXT)
    return staging


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


def content_hash(path: Path) -> str:
    """xxh3-128 of a table file's bytes: checks an entry against what its build wrote, at memory speed."""
    digest = xxhash.xxh3_128()
    for block in blocks(path):
        digest.update(block)
    return digest.hexdigest()


def _meta_hash(meta: dict[str, Any]) -> str:
    """The hash of meta.json's content (everything but this hash itself), in a canonical JSON form."""
    return xxhash.xxh3_128_hexdigest(json.dumps({k: v for k, v in meta.items() if k != HASH}, sort_keys=True).encode())


def write_meta(entry: Path, meta: dict[str, Any]) -> None:
    """meta.json, written last: the run's data record plus each table file's size and hash, and its own hash."""
    tables = {name: {"bytes": (entry / name).stat().st_size, HASH: content_hash(entry / name)}
              for name in TABLES if (entry / name).is_file()}
    record = {**meta, "files": tables}
    (entry / META).write_text(json.dumps({**record, HASH: _meta_hash(record)}))


def read_meta(entry: Path) -> dict[str, Any]:
    return json.loads((entry / META).read_text())


def problem(entry: Path) -> str | None:
    """Why a finished entry cannot be trusted (a damaged, truncated or edited file), or None when every file is
    exactly as the build wrote it."""
    try:
        meta = read_meta(entry)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{META} cannot be read ({type(err).__name__}: {err})"
    if not isinstance(meta, dict) or meta.get(HASH) != _meta_hash(meta) or not isinstance(meta.get("files"), dict):
        return f"{META} is not the one its build wrote (its own hash does not match)"
    for split, record in (meta.get("splits") or {}).items():
        if record is not None and f"{split}.arrow" not in meta["files"]:
            return f"{META} lists no {split}.arrow"
    for name, expected in meta["files"].items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes where its build wrote {expected['bytes']:,}"
        if content_hash(path) != expected[HASH]:
            return f"{name} holds other bytes than its build wrote (same size, different {HASH} hash)"
    return None


def usable(entry: Path) -> bool:
    """True for a finished entry whose files are exactly as built. A damaged one is removed, with one line saying
    why, so the caller builds it again."""
    if not complete(entry):
        return False
    found = problem(entry)
    if found is None:
        return True
    print(f"Tokenized-data cache: {entry}: {found}; rebuilding it.", file=sys.stderr, flush=True)
    shutil.rmtree(entry, ignore_errors=True)
    return False


def is_entry(folder: Path) -> bool:
    """True for a folder the cache made: it holds the marker. Entries made before the marker existed are known by
    their exact shape: a 24-hex-digit name (or its hidden build folder) holding only meta.json and tables."""
    if (folder / MARKER).is_file():
        return True
    name = folder.name.removeprefix(".").split(".building-")[0]
    names = {item.name for item in folder.iterdir()} if folder.is_dir() else set()
    return (len(name) == 24 and all(c in "0123456789abcdef" for c in name)
            and names <= {META, *TABLES} and all((folder / n).is_file() for n in names))


def clear(root: Path) -> tuple[int, list[Path]]:
    """Remove the cache's entries (finished or half-built) under `root`: (how many went, the other folders left)."""
    if not root.is_dir():
        return 0, []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    entries = [p for p in folders if is_entry(p)]
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    return len(entries), [p for p in folders if p not in entries]


def describe(entry: Path) -> str:
    """One line of `list` about an entry: its size and source (its files are verified when a run uses it)."""
    size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
    try:
        source = read_meta(entry)["sources"]["train"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        source = f"damaged ({META}: {type(err).__name__}), rebuilt when a run uses it"
    return f"{entry}  {size / 1e6:,.1f} MB  {source}"


def main(argv: list[str]) -> int:
    """python -m llama_lora.data.token_cache [list|clear] [FOLDER]: show or empty the tokenized-data cache."""
    command = argv[0] if argv else "list"
    root = Path(argv[1]) if len(argv) > 1 else cache_dir("auto")
    if command == "clear":
        removed, others = clear(root)
        print(f"Removed {removed} entries from {root}")
        if others:
            print(f"Left {len(others)} other folders alone (not cache entries): {', '.join(p.name for p in others)}")
        return 0
    if command == "list":
        entries = sorted(p for p in root.iterdir() if p.is_dir() and is_entry(p) and complete(p)) \
            if root.is_dir() else []
        for entry in entries:
            print(describe(entry))
        print(f"{len(entries)} entries in {root}")
        return 0
    print("usage: python -m llama_lora.data.token_cache [list|clear] [FOLDER]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
