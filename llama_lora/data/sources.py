"""Read raw rows from wherever the data lives: local files, folders, saved datasets, or the Hugging Face hub.

Every row keeps a `where` ("data.jsonl:17", "data.csv:line 4", "org/name[train]: row 12") so that any later
error can name it. Reading knows nothing of formats; `formats.py` turns rows into conversations.
"""

from __future__ import annotations

import csv
import io
import json
import os
import weakref
from array import array
from collections.abc import Sequence
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_lora.errors import DataError
from llama_lora.options.config import REPO_ROOT

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Split names a folder, saved dataset or hub dataset may use for its held-out part, in order of preference. A hub
# split may carry a suffix (UltraChat's `test_sft` beside `train_sft`): the one whose suffix matches the training
# split's wins.
EVAL_SPLIT_NAMES = ("eval", "validation", "valid", "test")


@dataclass
class Tally:
    """What reading a split set aside: bad rows skipped (`--bad-rows skip`: the error naming each) and fields no
    reader used (field -> rows holding it), so the audit can show that nothing was dropped unseen."""

    skipped: list[str] = field(default_factory=list)
    unused: Counter = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.skipped += other.skipped
        self.unused.update(other.unused)


@dataclass(frozen=True)
class Rows:
    """Raw records of one split, each with where it came from."""

    records: Sequence[Any]  # a list, or a JSON-lines file's rows parsed on access
    wheres: Sequence[str]
    source: str  # a file, "org/name[split]", ...
    groups: Sequence[Any] | None = None  # records that must stay on one side of a held-out split (one message tree)
    tally: Tally | None = None  # what assembling these records from raw rows set aside


def resolve_path(dataset: str) -> Path:
    """The path as given, else relative to the repository (so the bundled data works from any directory)."""
    given = Path(dataset).expanduser()
    if given.exists() or given.is_absolute():
        return given
    bundled = REPO_ROOT / given
    return bundled if bundled.exists() else given


def read_splits(dataset: str) -> dict[str, Rows]:
    """Every split a source offers: {"train": Rows} for a file, more for folders and hub datasets (a `:SPLIT`
    suffix is the caller's to pick: see `split_spec`)."""
    dataset = split_spec(dataset)[0]
    path = local_source(dataset)
    if path is None:
        return _read_hub(dataset)
    return {"train": read_file(path)} if path.is_file() else _read_folder(path)


def split_spec(source: str) -> tuple[str, str | None]:
    """`SOURCE:SPLIT` as (source, split); a source without a split suffix (or a path that exists with the colon,
    or a Windows drive) as (source, None)."""
    name, colon, split = source.rpartition(":")
    if not colon or not name or not split or "/" in split or "\\" in split or len(name) == 1:
        return source, None
    if resolve_path(source).exists():
        return source, None
    return name, split


def local_source(dataset: str) -> Path | None:
    """The local file or folder `dataset` names, or None for a hub dataset name; a missing local path is an error.
    A `FOLDER:SPLIT` names the folder."""
    dataset = split_spec(dataset)[0]
    path = resolve_path(dataset)
    if path.is_file() or path.is_dir():
        return path
    if path.suffix in FILE_SUFFIXES or dataset.startswith((".", "/", "~")):
        raise DataError(f"{dataset}: no such file or folder")
    return None


def pick_split(splits: dict[str, Rows], name: str, dataset: str, option: str = "--dataset-split") -> Rows:
    """One split by name, or an error listing the splits there are."""
    if name not in splits:
        raise DataError(f"{dataset}: no split named '{name}' ({option}); it has: {', '.join(splits)}")
    return splits[name]


def eval_split(splits: dict[str, Rows], train_split: str, source: str = "") -> Rows | None:
    """The source's own held-out split, if it has one (never the training split itself): a split named eval,
    validation, valid or test, or one starting so (`test_sft`); where several do, the one with the training
    split's suffix (`train_sft` -> `test_sft`), else an error listing them."""
    found = [name for name in splits if name != train_split and name.startswith(EVAL_SPLIT_NAMES)]
    if not found:
        return None
    suffix = train_split[len("train"):] if train_split.startswith("train") else None
    ranked = sorted(found, key=lambda name: next(i for i, e in enumerate(EVAL_SPLIT_NAMES) if name.startswith(e)))
    exact = [name for name in ranked if name in EVAL_SPLIT_NAMES]
    same_suffix = [name for name in ranked if suffix and name.endswith(suffix) and name not in EVAL_SPLIT_NAMES]
    picks = same_suffix or exact or ranked
    if len(picks) > 1 and not exact and not same_suffix:
        raise DataError(f"{source or 'the dataset'}: several held-out splits ({', '.join(picks)}); pick one with "
                        f"--eval-dataset {source or 'SOURCE'}:SPLIT")
    return splits[picks[0]]


def read_file(path: Path) -> Rows:
    """Rows of one .jsonl, .json, .csv or .parquet file."""
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if path.suffix not in readers:
        raise DataError(f"{path}: unsupported file type '{path.suffix}', expected one of {', '.join(readers)}")
    records, wheres = readers[path.suffix](path)
    if not records:
        raise DataError(f"{path}: empty file, expected at least one row")
    return Rows(records, wheres, str(path))


def decode_utf8(path: Path, data: bytes, first_line: int = 1) -> str:
    """Bytes as UTF-8 text without a leading byte-order mark, or a DataError naming the line that is not UTF-8."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - data.rfind(b"\n", 0, err.start)  # 1-based, in bytes
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x} at column {column}); "
                        "save the file as UTF-8") from err


def _read_jsonl(path: Path) -> tuple[Sequence[Any], Sequence[str]]:
    """Every line checked now (UTF-8, JSON), but kept as a byte offset: rows are parsed again when used, so a
    million-row file costs a few bytes a row until its rows are formatted, a chunk at a time."""
    offsets, line_numbers = array("q"), array("q")
    with path.open("rb") as lines:  # bytes: a line that is not UTF-8 is named, not a traceback
        position = 0
        for line_no, raw in enumerate(lines, start=1):
            if raw.strip():
                _parse_line(path, raw, line_no)
                offsets.append(position)
                line_numbers.append(line_no)
            position += len(raw)
    offsets.append(position)
    return JsonLines(path, offsets, line_numbers), LineWheres(str(path), line_numbers)


def _parse_line(path: Path, raw: bytes, line_no: int) -> Any:
    line = decode_utf8(path, raw, line_no)  # drops a byte-order mark, as spreadsheet and Windows tools write
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno})") from err


class JsonLines(Sequence):
    """The rows of a JSON-lines file, each parsed from its bytes when asked for."""

    def __init__(self, path: Path, offsets: array, line_numbers: array) -> None:
        self.path, self.offsets, self.line_numbers = path, offsets, line_numbers
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.line_numbers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._fd is None:  # read, not memory-map: mapped pages of a big file would count as this process's
            self._fd = os.open(self.path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)
        # a row ends where the next begins (blank lines between them are whitespace to JSON)
        start, end = self.offsets[index], self.offsets[index + 1]
        return _parse_line(self.path, os.pread(self._fd, end - start, start), self.line_numbers[index])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # a sequence compared by value


class LineWheres(Sequence):
    """"file:line" of each row, made when asked for."""

    def __init__(self, path: str, line_numbers: array) -> None:
        self.path, self.line_numbers = path, line_numbers

    def __len__(self) -> int:
        return len(self.line_numbers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return f"{self.path}:{self.line_numbers[index]}"


def _read_json(path: Path) -> tuple[list[Any], list[str]]:
    """A JSON array of rows (or an object holding one under "data"/"rows"); JSON-lines content also works."""
    text = decode_utf8(path, path.read_bytes())
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values: it is JSON lines with a .json name
            return _read_jsonl(path)
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
    if isinstance(data, dict):
        data = next((data[key] for key in ("data", "rows", "train") if isinstance(data.get(key), list)), data)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of row objects, got a {type(data).__name__}")
    return data, [f"{path}: item [{i}]" for i in range(len(data))]


def _read_csv(path: Path) -> tuple[list[Any], list[str]]:
    """Rows of a CSV file with a header, each named by the line it starts on (a quoted cell may span lines)."""
    records, wheres = [], []
    reader = csv.reader(io.StringIO(decode_utf8(path, path.read_bytes()), newline=""))
    header = next(reader, None) or []
    while True:
        first_line = reader.line_num + 1  # the record starts on the line after the one the last record ended on
        cells = next(reader, None)
        if cells is None:
            break
        if not cells:  # a blank line
            continue
        if len(cells) > len(header):
            raise DataError(f"{path}:line {first_line}: {len(cells)} cells but the header names {len(header)} columns")
        records.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
        wheres.append(f"{path}:line {first_line}")
    return records, wheres


def _read_parquet(path: Path) -> tuple[list[Any], list[str]]:
    import pyarrow.parquet as pq

    try:
        records = [row_keys_only(record) for record in pq.read_table(path).to_pylist()]
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: cannot read as parquet ({err})") from err
    return records, [f"{path}: row {i}" for i in range(len(records))]


def row_keys_only(record: dict[str, Any]) -> dict[str, Any]:
    """A row read through Arrow without the keys other rows added: an Arrow struct column holds the union of every
    row's keys, so a tool gains `"query": null` from another tool's parameters. A null inside a nested object is
    therefore read as absent (Arrow cannot tell the two apart); top-level columns stay as they are."""
    return {key: _without_nulls(value) for key, value in record.items()}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _read_folder(path: Path) -> dict[str, Rows]:
    """train.<ext> (+ eval/validation/test.<ext>), a `save_to_disk` folder, or a hub-style data folder."""
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        from datasets import load_from_disk

        return _from_datasets(load_from_disk(str(path)), str(path))
    splits = {}
    for name in ("train", *EVAL_SPLIT_NAMES):
        files = [path / f"{name}{suffix}" for suffix in FILE_SUFFIXES if (path / f"{name}{suffix}").exists()]
        if len(files) > 1:
            raise DataError(f"{path}: several files for split '{name}' ({', '.join(f.name for f in files)}); keep one")
        if files:
            splits[name] = read_file(files[0])
    if splits:
        return splits
    # No train.* file: let datasets' own folder conventions (data/train-*.parquet, ...) find the splits,
    # exactly as for a dataset downloaded from the hub.
    return _read_hub(str(path))


def _read_hub(name: str) -> dict[str, Rows]:
    """A dataset through `datasets.load_dataset`: a hub name, or a local folder in hub layout."""
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # datasets raises many types (offline, gated, not found, bad config)
        raise DataError(f"{name}: cannot load with datasets.load_dataset: {type(err).__name__}: {err}") from err
    return _from_datasets(loaded, name)


def _from_datasets(loaded: Any, name: str) -> dict[str, Rows]:
    """Rows of a Dataset or DatasetDict, with ClassLabel ids turned back into their names."""
    from datasets import Dataset

    parts = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    return {split: _dataset_rows(part, f"{name}[{split}]") for split, part in parts.items()}


def _dataset_rows(dataset: Any, source: str) -> Rows:
    from datasets import ClassLabel

    records = [row_keys_only(record) for record in dataset.to_list()]
    for column, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            for record in records:
                if record[column] is not None and record[column] >= 0:
                    record[column] = feature.int2str(record[column])
    if not records:
        raise DataError(f"{source}: empty split, expected at least one row")
    return Rows(records, [f"{source}: row {i}" for i in range(len(records))], source)
