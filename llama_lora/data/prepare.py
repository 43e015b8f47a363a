"""From a dataset name to token ids and loss labels, the same for both backends.

Conversations are rendered with the tokenizer's own chat template, and the label mask comes from rendering
conversation prefixes: the text between the end of an assistant header (the generation prompt) and the end
of that turn is the assistant's, end-of-turn token included, so the model learns to stop. This works for any
template (TRL's `assistant_only_loss` needs `{% generation %}` markers that Llama 3.1's template lacks).
"""

from __future__ import annotations

import bisect
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
from llama_lora.data.formats import Example, check_unicode, class_labels, detect_format, parse_role_map, to_examples
from llama_lora.data.sources import Rows, eval_split, pick_split, read_splits
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig

IGNORE_INDEX = -100  # label value that transformers' loss skips
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


def plan_splits(cfg: TrainConfig) -> tuple[str, dict[str, tuple[Rows, list[int]] | None], dict[str, str],
                                          list[str] | None]:
    """Read both splits' raw rows and decide which rows each split takes: (format, {split: (rows, row indices)},
    sources, labels). Rows become examples later, a chunk at a time."""
    splits = read_splits(cfg.dataset)
    train = pick_split(splits, cfg.dataset_split, cfg.dataset)
    if cfg.eval_dataset:
        other = read_splits(cfg.eval_dataset)
        held = eval_split(other, "") or (other["train"] if len(other) == 1 else None)
        if held is None:
            raise DataError(f"{cfg.eval_dataset}: --eval-dataset has splits {', '.join(other)}; "
                            "expected one of them to be called eval, validation or test")
    else:
        held = eval_split(splits, cfg.dataset_split)
    fmt = detect_format(train) if cfg.format == "auto" else cfg.format
    labels = class_labels(train) if fmt == "classification" else None
    sources = {"train": train.source}
    if held is not None:
        plan = {"train": (train, list(range(len(train.records)))), "eval": (held, list(range(len(held.records))))}
        sources["eval"] = held.source
    else:
        kept, out = _hold_out(len(train.records), cfg.eval_fraction, cfg.seed)
        plan = {"train": (train, kept), "eval": (train, out) if out else None}
        sources["eval"] = f"{len(out)} rows held out from {train.source} (seed {cfg.seed})" if out else "none"
    return fmt, plan, sources, labels


def load_examples(cfg: TrainConfig) -> tuple[str, dict[str, list[Example]], dict[str, str], list[str] | None]:
    """Read and format the train and eval splits at once: (format, examples, sources, labels)."""
    fmt, plan, sources, labels = plan_splits(cfg)
    role_map = parse_role_map(cfg.role_map)
    examples = {name: [e for chunk in example_chunks(*part, fmt, role_map, labels) for e in chunk] if part else []
                for name, part in plan.items()}
    return fmt, examples, sources, labels


def _hold_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded share of the training rows set aside for evaluation: (train indices, eval indices), in file order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:round(n * fraction)])
    return [i for i in range(n) if i not in held], [i for i in range(n) if i in held]


def example_chunks(rows: Rows, indices: list[int], fmt: str, role_map: dict[str, str],
                   labels: list[str] | None) -> Iterator[list[Example]]:
    """The chosen rows as Examples, BUILD_ROWS at a time (a bad row fails when its chunk is formatted)."""
    for start in range(0, len(indices), BUILD_ROWS):
        picked = indices[start:start + BUILD_ROWS]
        chunk = Rows([rows.records[i] for i in picked], [rows.wheres[i] for i in picked], rows.source)
        yield to_examples(chunk, fmt, role_map, labels)


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
    fmt, plan, sources, labels = plan_splits(cfg)
    if fmt != "text" and not tokenizer.chat_template:
        raise DataError(f"{cfg.model}: the tokenizer has no chat template and is not a Llama 3 tokenizer, so "
                        f"{fmt} rows cannot be rendered; use a model that ships a template, or --format text")
    role_map = parse_role_map(cfg.role_map)
    loss_on = "all" if fmt == "text" else cfg.loss_on
    digest, template, written = hashlib.sha256(), None, 0
    splits: dict[str, dict[str, Any] | None] = {"train": None, "eval": None}
    for name, part in plan.items():
        if part is None:
            continue
        split = Split(sources[name], [], read=0)
        writer = token_cache.TableWriter(folder / f"{name}.arrow")
        progress = tqdm(total=len(part[1]), desc=f"Tokenizing {name}", unit="row", disable=len(part[1]) < 5 * BUILD_ROWS)
        for examples in example_chunks(*part, fmt, role_map, labels):
            # tool-calling rows need a template that renders tools: the tokenizer's own, else Llama 3.1's
            if template is None and any(e.calls_tools for e in examples):
                template = ensure_tool_template(tokenizer)
                if template is not None and written:
                    raise _TemplateChanged
            rows = tokenize_examples(tokenizer, examples, loss_on, cfg.data_workers)
            chunk = apply_length_policy(rows, cfg.max_seq_length, cfg.overlength, sources[name])
            for row in chunk.rows:
                digest.update(_row_bytes(row))
            writer.write(chunk.rows)
            written += len(chunk.rows)
            _merge(split, chunk)
            progress.update(len(examples))
        writer.close()
        progress.close()
        splits[name] = {"source": split.source, "read": split.read, "lengths": split.lengths, "over_length": split.over_length, "dropped": split.dropped}
        if name == "train" and not written:
            reasons = "; ".join(f"{len(w)} {reason}" for reason, w in split.dropped.items())
            raise DataError(f"{sources['train']}: no training row left ({reasons}). Raise --max-seq-length "
                            "or use --overlength truncate")
    token_cache.write_meta(folder, {"format": fmt, "labels": labels, "template": template,
                                    "hash": digest.hexdigest(), "sources": sources, "splits": splits})


def _merge(split: Split, chunk: Split) -> None:
    """Add a chunk's counts to its split's."""
    split.read += chunk.read
    split.lengths += chunk.lengths
    split.over_length += chunk.over_length
    for reason, wheres in chunk.dropped.items():
        split.dropped.setdefault(reason, []).extend(wheres)


def _load(entry: Path, tokenizer: Any, cached: bool, built: bool) -> Prepared:
    """The Prepared data of a finished entry, its tables memory-mapped."""
    meta = token_cache.read_meta(entry)
    if meta["template"]:  # the entry was rendered with the template tool-calling data needed: serve with it too
        ensure_tool_template(tokenizer)
    splits = {}
    for name, record in meta["splits"].items():
        splits[name] = None if record is None else Split(
            record["source"], token_cache.TokenTable(entry / f"{name}.arrow"), record["read"], record["lengths"],
            record["over_length"], record["dropped"])
    return Prepared(meta["format"], splits["train"], splits["eval"], meta["labels"], meta["template"], meta["hash"],
                    {"path": str(entry) if cached else "off", "built": built})


def tokenize_examples(tokenizer: Any, examples: list[Example], loss_on: str, workers: int = 1) -> list[dict[str, Any]]:
    """Full-length input_ids and labels for every example, in batches, optionally over worker processes.

    In one process the Rust tokenizer already encodes each batch on every core; what stays serial is the
    Python part (template rendering, label masks). Worker processes split that part but must send every
    token back; on the machines measured that costs more than it saves (benchmarks/results/
    data_throughput.md), so one process is the default. A plain process pool: `datasets.map(num_proc=2)`
    was slower still (its Arrow round trip).
    """
    chunks = [examples[i:i + CHUNK_ROWS] for i in range(0, len(examples), CHUNK_ROWS)]
    progress = {"total": len(chunks), "desc": f"Tokenizing {len(examples):,} rows", "unit": "chunk",
                "disable": len(chunks) < 5}
    if workers <= 1:
        return [row for chunk in tqdm(chunks, **progress) for row in _tokenize_batch(tokenizer, chunk, loss_on)]
    # fork: the workers inherit the tokenizer instead of unpickling it; each encodes single-threaded.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_set_worker_state, initargs=(tokenizer, loss_on)) as pool:
        return [row for part in tqdm(pool.map(_tokenize_in_worker, chunks), **progress) for row in part]


_worker_state: dict[str, Any] = {}


def _set_worker_state(tokenizer: Any, loss_on: str) -> None:
    _worker_state.update(tokenizer=tokenizer, loss_on=loss_on)


def _tokenize_in_worker(chunk: list[Example]) -> list[dict[str, Any]]:
    return _tokenize_batch(_worker_state["tokenizer"], chunk, _worker_state["loss_on"])


def _tokenize_batch(tokenizer: Any, examples: list[Example], loss_on: str) -> list[dict[str, Any]]:
    """Render, tokenize (one batched call) and label a list of examples."""
    texts, spans = [], []
    for example in examples:
        if example.text is not None:
            texts.append(example.text)
            spans.append(None)
        else:
            text, assistant = _rendered_spans(tokenizer, example)
            texts.append(text)
            spans.append(assistant[-1:] if loss_on == "last-assistant" else assistant)
    for example, text in zip(examples, texts):  # a surrogate inside tool arguments reaches the text unchecked
        if not text.isascii():
            check_unicode(text, example.where)
    plain = [i for i, s in enumerate(spans) if s is None]
    chat = [i for i, s in enumerate(spans) if s is not None]
    ids: list[list[int]] = [[] for _ in examples]
    labels: list[list[int]] = [[] for _ in examples]
    if plain:  # continued pre-training: the tokenizer's own BOS, the text, EOS; every token counts
        encoded = tokenizer([texts[i] for i in plain], add_special_tokens=True)["input_ids"]
        for i, token_ids in zip(plain, encoded):
            ids[i] = token_ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
            labels[i] = list(ids[i])
    if chat:
        # The Rust tokenizer directly: transformers' wrapper spends longer converting offsets than encoding.
        encodings = tokenizer.backend_tokenizer.encode_batch([texts[i] for i in chat], add_special_tokens=False)
        for i, encoding in zip(chat, encodings):
            ids[i] = encoding.ids
            labels[i] = list(ids[i]) if loss_on == "all" else label_tokens(ids[i], encoding.offsets, spans[i])
    return [{"where": e.where, "input_ids": i, "labels": lab, **({"tools": True} if e.calls_tools else {})}
            for e, i, lab in zip(examples, ids, labels)]


def _rendered_spans(tokenizer: Any, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """assistant_char_spans for one example; a template that refuses the conversation names its row."""
    try:
        return assistant_char_spans(tokenizer, example.messages, example.tools)
    except DataError as err:
        raise DataError(f"{example.where}: {err}") from err
    except Exception as err:  # templates are foreign code (jinja2 errors, raise_exception, ...)
        raise DataError(f"{example.where}: the chat template cannot render this conversation: "
                        f"{type(err).__name__}: {err}") from err


def assistant_char_spans(tokenizer: Any, messages: list[dict[str, Any]],
                         tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return (text, [start, end) character spans of each assistant turn).

    A span runs from the end of the assistant header (the generation prompt) to the end of the turn as the
    template renders it, so it covers the content (or tool call) and the end-of-turn token, minus trailing
    whitespace. Tool results, like user turns, lie outside every span.
    """
    def render(turns: list[dict[str, Any]], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tools=tools, tokenize=False, add_generation_prompt=prompt)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], prompt=True) if i else _opening_prompt(render, message)
        through = text if i == len(messages) - 1 else render(messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError("the chat template does not render conversations prefix by prefix; "
                            "cannot locate assistant turns to mask")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


OPENING_MARKER = "llama-lora-opening-turn"


def _opening_prompt(render: Any, message: dict[str, Any]) -> str:
    """What a template renders ahead of an assistant turn that opens the conversation (there is no shorter prefix
    to render: templates refuse empty conversations), found by rendering that turn with a marker for its text."""
    text = render([{**message, "content": OPENING_MARKER}])
    if OPENING_MARKER not in text:
        raise DataError("the chat template does not render an assistant turn that opens the conversation "
                        "as text; start the conversation with a user turn")
    return text[: text.index(OPENING_MARKER)]


def label_tokens(token_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """The token id where a token overlaps an assistant span, IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(token_ids)
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    for span_start, span_end in spans:
        # Token offsets grow monotonically, so the tokens overlapping a span are one contiguous slice.
        first, stop = bisect.bisect_right(ends, span_start), bisect.bisect_left(starts, span_end)
        labels[first:stop] = token_ids[first:stop]
    return labels


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
