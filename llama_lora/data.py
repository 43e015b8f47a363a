"""Dialogue data: read JSONL, map roles, render through the chat template, and mask the loss.

Only assistant (teacher) turns are trained on, each including its end-of-turn token so the model learns
to stop. Masks come from rendering conversation prefixes with the tokenizer's own chat template, so they
work for any template (TRL's `assistant_only_loss` needs `{% generation %}` markers Llama 3.1's lacks).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llama_lora.config import REPO_ROOT

IGNORE_INDEX = -100  # label value that transformers' loss skips
# The bundled data speaks of teachers and students; chat templates know assistants and users.
DEFAULT_ROLE_MAP = {"teacher": "assistant", "student": "user", "assistant": "assistant", "user": "user",
                    "system": "system"}

Message = dict[str, str]


class DataError(ValueError):
    """Unusable input data; the message names the file, line, field and what was expected."""


@dataclass(frozen=True)
class DataSplits:
    """Conversations for training and evaluation, and where each came from."""

    train: list[list[Message]]
    eval: list[list[Message]]
    train_source: str
    eval_source: str  # a file, "held out from <file>", or "none"


def resolve_dataset_path(dataset: str) -> Path:
    """The dataset path as given, else relative to the repository (so the bundled data works from any cwd)."""
    given = Path(dataset).expanduser()
    if given.exists() or given.is_absolute():
        return given
    bundled = REPO_ROOT / given
    return bundled if bundled.exists() else given


def read_dialogues(path: Path) -> list[list[Message]]:
    """Read a JSONL file with one {"messages": [{"role", "content"}, ...]} object per line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    conversations = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno})") from err
        conversations.append(parse_messages(row, f"{path}:{line_no}"))
    if not conversations:
        raise DataError(f"{path}: empty file, expected one JSON object per line")
    return conversations


def parse_messages(row: Any, where: str, role_map: dict[str, str] = DEFAULT_ROLE_MAP) -> list[Message]:
    """Validate one row and return its messages with roles mapped to system/user/assistant."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        raise DataError(f"{where}: field 'messages': expected a list of {{role, content}} objects")
    messages = []
    for i, message in enumerate(row["messages"]):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: field '{field}': expected an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in role_map:
            raise DataError(f"{where}: field '{field}.role': unknown role {role!r}, expected one of "
                            f"{', '.join(sorted(role_map))}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: field '{field}.content': expected a non-empty string")
        messages.append({"role": role_map[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field 'messages': no assistant/teacher turn, so nothing to learn from")
    return messages


def load_splits(dataset: str, eval_fraction: float, seed: int) -> DataSplits:
    """Train and eval conversations: a folder's own eval.jsonl if present, else a seeded held-out share."""
    path = resolve_dataset_path(dataset)
    train_file = path / "train.jsonl" if path.is_dir() else path
    train = read_dialogues(train_file)
    eval_file = path / "eval.jsonl" if path.is_dir() else None
    if eval_file is not None and eval_file.exists():
        return DataSplits(train, read_dialogues(eval_file), str(train_file), str(eval_file))
    n_eval = round(len(train) * eval_fraction)
    if n_eval == 0:
        return DataSplits(train, [], str(train_file), "none")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    return DataSplits(
        [c for i, c in enumerate(train) if i not in held_out],
        [c for i, c in enumerate(train) if i in held_out],
        str(train_file),
        f"{n_eval} rows held out from {train_file} (seed {seed})",
    )


def assistant_char_spans(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return (text, [start, end) character spans of each assistant turn).

    A span runs from the end of the assistant header (the generation prompt) to the end of the turn as the
    template renders it, so it covers the content and the end-of-turn token, minus trailing whitespace.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError("the chat template does not render conversations prefix by prefix; "
                            "cannot locate assistant turns to mask")
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def tokenize_conversation(tokenizer: Any, messages: list[Message], max_length: int) -> dict[str, Any]:
    """input_ids and labels (IGNORE_INDEX outside assistant turns), truncated to max_length."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token_id if any(start < span_end and end > span_start for span_start, span_end in spans) else IGNORE_INDEX
        for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    length = len(encoded["input_ids"])
    return {
        "input_ids": encoded["input_ids"][:max_length],
        "labels": labels[:max_length],
        "truncated": length > max_length,
        "lost_supervised_tokens": sum(label != IGNORE_INDEX for label in labels[max_length:]),
    }


def tokenize_all(tokenizer: Any, conversations: Iterable[list[Message]], max_length: int) -> list[dict[str, Any]]:
    """Tokenize every conversation (the bundled data takes about a second; issue #3 adds parallelism)."""
    return [tokenize_conversation(tokenizer, messages, max_length) for messages in conversations]


def data_hash(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 over every row's input_ids and labels: equal hashes mean both backends trained on the same data."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["labels"]], separators=(",", ":")).encode())
    return digest.hexdigest()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts the run record keeps about a tokenized split."""
    tokens = sum(len(row["input_ids"]) for row in rows)
    supervised = sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in rows)
    return {
        "rows": len(rows),
        "tokens": tokens,
        "supervised_tokens": supervised,
        "truncated_rows": sum(row["truncated"] for row in rows),
        "lost_supervised_tokens": sum(row["lost_supervised_tokens"] for row in rows),
        "max_row_tokens": max((len(row["input_ids"]) for row in rows), default=0),
    }
