"""From a dataset name to token ids and loss labels, the same for both backends.

Reading (sources), row formats (formats/) and rendering with the chat template (render) each have their module;
this one plans the splits (which rows train, which evaluate), then builds both splits a chunk at a time into the
token cache: rows become examples, examples token ids and labels, and over-length rows are dropped, cut or refused
(--overlength). What was left out on the way (bad rows under --bad-rows skip, unused fields) is counted for the
audit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import random
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llama_lora import distributed
from llama_lora.data import token_cache
from llama_lora.data.chat_template import ensure_tool_template
from llama_lora.data.formats import (
    SKIP_HINT,
    Example,
    Reading,
    assemble,
    check_choice,
    check_unicode,
    class_labels,
    convert,
    detect_format,
    reading_for,
)
from llama_lora.data.render import (
    IGNORE_INDEX,
    count_tokens,
    encode_literal,
    holds_special_text,
    label_tokens,
    render,
    special_pattern,
    specials_as_text,
)
from llama_lora.data.sources import Rows, Tally, eval_split, pick_split, read_splits, split_spec
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig

__all__ = ["IGNORE_INDEX", "Prepared", "Split", "apply_length_policy", "data_hash", "load_examples", "prepare",
           "tokenize_examples"]

CHUNK_ROWS = 1000  # rows per tokenizer batch (and per progress-bar tick)
BUILD_ROWS = 4000  # rows formatted, tokenized and written per step of a build: memory stays flat at any size
DROP_OVERLENGTH = "longer than --max-seq-length (--overlength drop)"
DROP_UNSUPERVISED = "no supervised token left"


@dataclass
class Split:
    """A tokenized split: the rows kept for training, and what happened to the others."""

    source: str
    rows: Sequence[dict[str, Any]]  # where, input_ids, labels, length: a list while building, then a TokenTable
    read: int
    lengths: list[int] = field(default_factory=list)  # tokens of every row read, before truncation
    over_length: list[dict[str, Any]] = field(default_factory=list)  # every row longer than the limit
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> wheres
    skipped: list[str] = field(default_factory=list)  # bad rows left out by --bad-rows skip: each one's error
    unused: dict[str, int] = field(default_factory=dict)  # fields no format reads -> rows holding them
    reasoning_tokens: int = 0  # tokens of assistant reasoning in the kept rows
    weighted_out: int = 0  # assistant turns kept out of the loss by `weight: 0`, in the kept rows


@dataclass
class Prepared:
    """Everything the run needs from the data, and what the audit reports about it."""

    format: str
    train: Split
    eval: Split | None
    labels: list[str] | None  # classification label set
    template: str | None = None  # where the chat template now comes from, when tool-calling data changed it
    hash: str | None = None  # data_hash of train + eval rows, computed while building
    cache: dict[str, Any] | None = None  # the cache entry ("off" without the cache) and whether this run built it
    options: dict[str, str] = field(default_factory=dict)  # the data options the audit names (reasoning, bad rows)


@dataclass(frozen=True)
class Plan:
    """Which rows each split takes, and how they are read."""

    format: str
    parts: dict[str, tuple[Rows, list[int]] | None]  # split -> (rows, the indices it takes)
    sources: dict[str, str]
    labels: list[str] | None
    reading: Reading


def plan_splits(cfg: TrainConfig) -> Plan:
    """Read both splits' raw rows and decide which rows each split takes. Rows become examples later, a chunk at
    a time."""
    check_choice(cfg.format)
    splits = read_splits(cfg.dataset)
    train = pick_split(splits, cfg.dataset_split, cfg.dataset)
    held = held_out_split(cfg, splits)
    reading = reading_for(cfg)
    fmt = detect_format(train, reading) if cfg.format == "auto" else cfg.format
    train, held = assemble(train, fmt, reading), held and assemble(held, fmt, reading)
    labels = class_labels(train, reading) if fmt == "classification" else None
    reading = dataclasses.replace(reading, labels=labels)
    sources = {"train": train.source}
    if held is not None:
        parts = {"train": (train, list(range(len(train.records)))), "eval": (held, list(range(len(held.records))))}
        sources["eval"] = held.source
    else:
        kept, out = _hold_out(len(train.records), cfg.eval_fraction, cfg.seed, train.groups)
        parts = {"train": (train, kept), "eval": (train, out) if out else None}
        sources["eval"] = f"{len(out)} rows held out from {train.source} (seed {cfg.seed})" if out else "none"
    return Plan(fmt, parts, sources, labels, reading)


def held_out_split(cfg: TrainConfig, splits: dict[str, Rows]) -> Rows | None:
    """The eval split: --eval-dataset's (`SOURCE:SPLIT` names the split), else the dataset's own, else None."""
    if not cfg.eval_dataset:
        return eval_split(splits, cfg.dataset_split, cfg.dataset)
    source, split = split_spec(cfg.eval_dataset)
    other = read_splits(source)
    if split:
        return pick_split(other, split, source, option="--eval-dataset SOURCE:SPLIT")
    held = eval_split(other, "", source) or (next(iter(other.values())) if len(other) == 1 else None)
    if held is None:
        raise DataError(f"{source}: --eval-dataset has splits {', '.join(other)}; name one as "
                        f"--eval-dataset {source}:SPLIT")
    return held


def load_examples(cfg: TrainConfig) -> tuple[str, dict[str, list[Example]], dict[str, str], list[str] | None]:
    """Read and format the train and eval splits at once: (format, examples, sources, labels)."""
    plan = plan_splits(cfg)
    examples = {name: [e for chunk in example_chunks(*part, plan.format, plan.reading) for e in chunk] if part else []
                for name, part in plan.parts.items()}
    return plan.format, examples, plan.sources, plan.labels


def _hold_out(n: int, fraction: float, seed: int, groups: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """A seeded share of the training rows set aside for evaluation: (train indices, eval indices), in file order.
    Rows of one group (the paths of one message tree) stay on one side."""
    keys = list(dict.fromkeys(groups)) if groups is not None else list(range(n))
    random.Random(seed).shuffle(keys)
    held = set(keys[:round(len(keys) * fraction)])
    key_of = groups if groups is not None else range(n)
    return [i for i in range(n) if key_of[i] not in held], [i for i in range(n) if key_of[i] in held]


def example_chunks(rows: Rows, indices: list[int], fmt: str, reading: Reading,
                   tally: Tally | None = None) -> Iterator[list[Example]]:
    """The chosen rows as Examples, BUILD_ROWS at a time (a bad row fails, or is skipped into the tally, when its
    chunk is formatted)."""
    for start in range(0, len(indices), BUILD_ROWS):
        picked = indices[start:start + BUILD_ROWS]
        chunk = Rows([rows.records[i] for i in picked], [rows.wheres[i] for i in picked], rows.source)
        yield convert(chunk, fmt, reading, tally)


class _TemplateChanged(Exception):
    """Tool-calling rows turned up after rows were rendered with a template that drops tools: start over."""


def prepare(cfg: TrainConfig, tokenizer: Any) -> Prepared:
    """Both splits tokenized and masked, as memory-mapped Arrow tables: from the cache when it holds this data,
    else built (by the main process only, under a launch) and cached."""
    root = token_cache.cache_dir(cfg.data_cache)
    if root is None:  # --data-cache off: build privately, gone at exit
        entry = token_cache.temporary_entry()
        _build(cfg, tokenizer, entry)
        return _load(entry, tokenizer, cached=False, built=True)
    entry = root / token_cache.cache_key(cfg, tokenizer)
    built = False
    if distributed.is_main() and not token_cache.usable(entry):  # absent, half-built or damaged: (re)build
        staging = token_cache.staging_entry(root, entry.name)
        try:
            _build(cfg, tokenizer, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a half-built entry is never used
            raise
        token_cache.publish(staging, entry)
        built = True
    distributed.wait_for_everyone()  # under a launch the other processes wait for the main one's build
    if distributed.world_size() > 1:
        print(f"[process {distributed.rank()} of {distributed.world_size()}] tokenized data "
              f"{'built into' if built else 'memory-mapped from'} {entry}", flush=True)
    return _load(entry, tokenizer, cached=True, built=built)


def _build(cfg: TrainConfig, tokenizer: Any, folder: Path) -> None:
    """Read, format, tokenize and mask both splits into folder/<split>.arrow, a chunk at a time, then meta.json."""
    try:
        _build_once(cfg, tokenizer, folder)
    except _TemplateChanged:
        _build_once(cfg, tokenizer, folder)  # the tokenizer now holds a template that renders tools


def _build_once(cfg: TrainConfig, tokenizer: Any, folder: Path) -> None:
    plan = plan_splits(cfg)
    fmt = plan.format
    if fmt != "text" and not tokenizer.chat_template:
        raise DataError(f"{cfg.model}: the tokenizer has no chat template and is not a Llama 3 tokenizer, so "
                        f"{fmt} rows cannot be rendered; use a model that ships a template, or --format text")
    loss_on = "all" if fmt == "text" else cfg.loss_on
    digest, template, written = hashlib.sha256(), None, 0
    splits: dict[str, dict[str, Any] | None] = {"train": None, "eval": None}
    for name, part in plan.parts.items():
        if part is None:
            continue
        rows, indices = part
        split, tally = Split(plan.sources[name], [], read=0), Tally()
        if rows.tally and (name == "train" or rows is not plan.parts["train"][0]):
            tally.add(rows.tally)  # what assembling the split set aside: counted once, with its own source
        writer = token_cache.TableWriter(folder / f"{name}.arrow")
        progress = tqdm(total=len(indices), desc=f"Tokenizing {name}", unit="row", disable=len(indices) < 5 * BUILD_ROWS)
        for examples in example_chunks(rows, indices, fmt, plan.reading, tally):
            # tool-calling rows need a template that renders tools: the tokenizer's own, else Llama 3.1's
            first = next((e for e in examples if e.needs_tool_template), None)
            if template is None and first is not None:
                try:
                    template = ensure_tool_template(tokenizer)
                except DataError as err:
                    raise DataError(f"{first.where}: {err}") from err
                if template is not None and written:
                    raise _TemplateChanged
            tokenized = tokenize_examples(tokenizer, examples, loss_on, cfg.data_workers, cfg.reasoning,
                                          cfg.bad_rows, tally.skipped)
            chunk = apply_length_policy(tokenized, cfg.max_seq_length, cfg.overlength, plan.sources[name])
            for row in chunk.rows:
                digest.update(_row_bytes(row))
            writer.write(chunk.rows)
            written += len(chunk.rows)
            _merge(split, chunk)
            progress.update(len(examples))
        writer.close()
        progress.close()
        split.read += len(tally.skipped)
        split.skipped, split.unused = tally.skipped, dict(tally.unused.most_common())
        splits[name] = {key: getattr(split, key) for key in SPLIT_RECORD}
        if name == "train" and not written:
            reasons = "; ".join([f"{len(w)} {reason}" for reason, w in split.dropped.items()]
                                + ([f"{len(split.skipped)} bad rows skipped"] if split.skipped else []))
            raise DataError(f"{plan.sources['train']}: no training row left ({reasons}). Raise --max-seq-length "
                            "or use --overlength truncate")
    token_cache.write_meta(folder, {"format": fmt, "labels": plan.labels, "template": template,
                                    "hash": digest.hexdigest(), "sources": plan.sources, "splits": splits,
                                    "options": {"reasoning": cfg.reasoning, "bad_rows": cfg.bad_rows}})


# What the cache's metadata keeps of each split (the rows themselves are the Arrow table).
SPLIT_RECORD = ("source", "read", "lengths", "over_length", "dropped", "skipped", "unused", "reasoning_tokens",
                "weighted_out")


def _merge(split: Split, chunk: Split) -> None:
    """Add a chunk's counts to its split's."""
    split.read += chunk.read
    split.lengths += chunk.lengths
    split.over_length += chunk.over_length
    split.reasoning_tokens += chunk.reasoning_tokens
    split.weighted_out += chunk.weighted_out
    for reason, wheres in chunk.dropped.items():
        split.dropped.setdefault(reason, []).extend(wheres)


def _load(entry: Path, tokenizer: Any, cached: bool, built: bool) -> Prepared:
    """The Prepared data of a finished entry, its tables memory-mapped."""
    meta = token_cache.read_meta(entry)
    if meta["template"]:  # the entry was rendered with the template tool-calling data needed: serve with it too
        ensure_tool_template(tokenizer)
    splits = {}
    for name, record in meta["splits"].items():
        splits[name] = None if record is None else Split(**{
            key: record[key] for key in SPLIT_RECORD if key in record},
            rows=token_cache.TokenTable(entry / f"{name}.arrow"))
    return Prepared(meta["format"], splits["train"], splits["eval"], meta["labels"], meta["template"], meta["hash"],
                    {"path": str(entry) if cached else "off", "built": built}, meta.get("options", {}))


def tokenize_examples(tokenizer: Any, examples: list[Example], loss_on: str, workers: int = 1,
                      reasoning: str = "train", bad_rows: str = "error",
                      skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Full-length input_ids and labels for every example, in batches, optionally over worker processes. With
    --bad-rows skip a row the template cannot render is left out and its error appended to `skipped`.

    In one process the Rust tokenizer already encodes each batch on every core; what stays serial is the
    Python part (template rendering, label masks). Worker processes split that part but must send every
    token back; on the machines measured that costs more than it saves (benchmarks/results/
    data_throughput.md), so one process is the default. A plain process pool: `datasets.map(num_proc=2)`
    was slower still (its Arrow round trip).
    """
    chunks = [examples[i:i + CHUNK_ROWS] for i in range(0, len(examples), CHUNK_ROWS)]
    progress = {"total": len(chunks), "desc": f"Tokenizing {len(examples):,} rows", "unit": "chunk",
                "disable": len(chunks) < 5}
    settings = (loss_on, reasoning, bad_rows)
    if workers <= 1:
        rows = [row for chunk in tqdm(chunks, **progress) for row in _tokenize_batch(tokenizer, chunk, *settings)]
    else:
        # fork: the workers inherit the tokenizer instead of unpickling it; each encodes single-threaded.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_set_worker_state, initargs=(tokenizer, settings)) as pool:
            rows = [row for part in tqdm(pool.map(_tokenize_in_worker, chunks), **progress) for row in part]
    if skipped is not None:
        skipped += [row["skipped"] for row in rows if "skipped" in row]
    return [row for row in rows if "skipped" not in row]


_worker_state: dict[str, Any] = {}


def _set_worker_state(tokenizer: Any, settings: tuple[str, str, str]) -> None:
    _worker_state.update(tokenizer=tokenizer, settings=settings)


def _tokenize_in_worker(chunk: list[Example]) -> list[dict[str, Any]]:
    return _tokenize_batch(_worker_state["tokenizer"], chunk, *_worker_state["settings"])


def _tokenize_batch(tokenizer: Any, examples: list[Example], loss_on: str, reasoning: str,
                    bad_rows: str) -> list[dict[str, Any]]:
    """Render, tokenize (batched where the data holds no special-token text) and label a list of examples; a row
    that fails is {"where", "skipped": its error} under --bad-rows skip."""
    pattern = special_pattern(tokenizer)
    rows: list[dict[str, Any] | None] = [None] * len(examples)
    plain, batched, renders = [], [], {}
    for i, example in enumerate(examples):
        try:
            if example.text is not None:
                plain.append(i)
                continue
            renders[i] = render(tokenizer, example, loss_on, reasoning)
            if not renders[i].text.isascii():  # a surrogate inside tool arguments reaches the text unchecked
                check_unicode(renders[i].text, example.where)
            if holds_special_text(renders[i], pattern):
                rows[i] = _row(example, *encode_literal(tokenizer, renders[i], pattern), renders[i], loss_on)
            else:
                batched.append(i)
        except DataError as err:
            rows[i] = _bad_row(example, err, bad_rows)
    if plain:  # continued pre-training: the tokenizer's own BOS, the text as text, EOS; every token counts
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        with specials_as_text(tokenizer) as backend:
            encodings = backend.encode_batch([examples[i].text for i in plain], add_special_tokens=True)
        for i, encoding in zip(plain, encodings):
            rows[i] = {"where": examples[i].where, "input_ids": encoding.ids + eos, "labels": encoding.ids + eos}
    if batched:
        # The Rust tokenizer directly: transformers' wrapper spends longer converting offsets than encoding.
        encodings = tokenizer.backend_tokenizer.encode_batch([renders[i].text for i in batched], add_special_tokens=False)
        for i, encoding in zip(batched, encodings):
            rows[i] = _row(examples[i], encoding.ids, encoding.offsets, renders[i], loss_on)
    return rows


def _row(example: Example, ids: list[int], offsets: list[tuple[int, int]], rendered: Any, loss_on: str) -> dict[str, Any]:
    """One tokenized conversation with its labels and what the audit counts of it."""
    row = {"where": example.where, "input_ids": ids,
           "labels": list(ids) if loss_on == "all" else label_tokens(ids, offsets, rendered.trained)}
    if example.calls_tools:
        row["tools"] = True
    if rendered.reasoning:
        row["reasoning_tokens"] = count_tokens(offsets, rendered.reasoning)
    if rendered.weighted_out:
        row["weighted_out"] = rendered.weighted_out
    return row


def _bad_row(example: Example, err: DataError, bad_rows: str) -> dict[str, Any]:
    """A row that cannot be rendered: an error, or with --bad-rows skip a marker holding it."""
    message = str(err) if str(err).startswith(example.where) else f"{example.where}: {err}"
    if bad_rows != "skip":
        raise DataError(f"{message}{SKIP_HINT}") from err
    return {"where": example.where, "skipped": message}


def apply_length_policy(rows: list[dict[str, Any]], max_length: int, policy: str, source: str) -> Split:
    """Drop, truncate or reject over-length rows, then drop rows with nothing left to learn."""
    split = Split(source, [], read=len(rows))
    for row in rows:
        length = len(row["input_ids"])
        split.lengths.append(length)
        row["length"] = length
        row["supervised"] = sum(label != IGNORE_INDEX for label in row["labels"])
        row["lost_supervised"] = sum(label != IGNORE_INDEX for label in row["labels"][max_length:])
        if length > max_length:
            split.over_length.append({"where": row["where"], "tokens": length,
                                      "lost_supervised": row["lost_supervised"]})
            if policy == "error":
                raise DataError(f"{row['where']}: {length} tokens, over --max-seq-length {max_length} "
                                f"(--overlength error); raise the limit or choose --overlength drop|truncate")
            if policy == "drop":
                split.dropped.setdefault(DROP_OVERLENGTH, []).append(row["where"])
                continue
            row["input_ids"], row["labels"] = row["input_ids"][:max_length], row["labels"][:max_length]
        # The first token is never a target (labels shift by one), so it cannot count as supervision.
        if all(label == IGNORE_INDEX for label in row["labels"][1:]):
            split.dropped.setdefault(DROP_UNSUPERVISED, []).append(row["where"])
            continue
        split.reasoning_tokens += row.get("reasoning_tokens", 0)
        split.weighted_out += row.get("weighted_out", 0)
        split.rows.append(row)
    return split


def data_hash(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 over every row's input_ids and labels: equal hashes mean both backends trained on the same data."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(_row_bytes(row))
    return digest.hexdigest()


def _row_bytes(row: dict[str, Any]) -> bytes:
    return json.dumps([row["input_ids"], row["labels"]], separators=(",", ":")).encode()
