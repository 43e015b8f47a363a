"""Row formats: the one registry of every format a row may come in, and the reading of rows into Examples.

Each format is one `Format` record in `FORMATS` below: the fields that give it away, its converter, a one-line
doc and an example row. Detection (first match in declaration order), the `--format` choices, the error text for
a row no format fits, the docs table (`python -m llama_lora.data.formats` prints it) and the tests all read that
record, so adding a format is one declaration plus its converter. The converters live in one module per family:
`conversation` (OpenAI messages, ShareGPT), `instruction` (Alpaca, prompt/completion, classification, plain text),
`markup` (conversations written out in ChatML and the like), `function_calling` (Glaive, xLAM), `message_tree`
(OpenAssistant's message trees).

Why `--format`'s choices come from here although the option is declared in `options/config.py`: the options
layer sits below the data layer and cannot import it, and copying the names there would be a second declaration
that drifts. So the option declares only that a higher layer supplies its values (`choices_from`); the command
line, which sits above both, asks this registry for them when it builds the flag (`OPTION` and `choices`), and
checks a value from a --config file against it before anything loads; `check_choice` is the same check for
callers that skip the command line. No import by name, and no option name spelled inside generic code.

A format is checked row by row: a bad row stops the run naming file, line and field (or, with `--bad-rows skip`,
is left out and named in the audit). Every field a row holds that its format does not read is counted in the
audit, so nothing is dropped unseen.

Turn orders, and what they mean:
- an assistant turn first (a greeting the model opens with): trained as given;
- two turns of one role in a row: kept as given, each its own turn (a template that refuses it is reported);
- turns after the last assistant turn (a user question left unanswered, a trailing tool result): dropped,
  since nothing after the last answer is learned from;
- no assistant turn at all: refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_lora.data.formats import function_calling, instruction, message_tree
from llama_lora.data.formats.conversation import TURN_KEYS, messages_row, sharegpt_row
from llama_lora.data.formats.fields import (
    CHAT_ROLES,
    DEFAULT_ROLE_MAP,
    Example,
    Message,
    Reading,
    apply_columns,
    check_unicode,
    parse_columns,
    parse_role_map,
    unused_fields,
    with_system,
)
from llama_lora.data.formats.instruction import CLASSIFICATION_PROMPT
from llama_lora.data.sources import Rows, Tally
from llama_lora.errors import DataError

__all__ = ["CHAT_ROLES", "CLASSIFICATION_PROMPT", "DEFAULT_ROLE_MAP", "FORMATS", "Example", "Format", "Message",
           "Reading", "check_unicode", "class_labels", "convert", "detect_format", "parse_role_map", "to_examples",
           "with_system"]

OPTION = "format"  # the config field whose values this registry declares
DETECT_ROWS = 100  # with --bad-rows skip, rows tried until one shows the format
SKIP_HINT = "; --bad-rows skip leaves such rows out and names them in the audit"


@dataclass(frozen=True)
class Format:
    """One row format: how it is recognised, what reads it, and what it trains as."""

    name: str
    fields: tuple[str, ...]  # a row holding all of these is in this format (the first declared match wins)
    convert: Callable[[dict[str, Any], str, Reading], Example]  # one row (after --columns) -> Example
    doc: str  # one line: what a row trains as
    example: tuple[dict[str, Any], ...]  # rows in this format, for the docs table and the tests
    reads: tuple[str, ...] = ()  # other top-level fields it reads; any other field is listed in the audit as unused
    turns: str | None = None  # the field holding the turns, whose unread keys are listed too
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # other data sets' names for its fields
    matches: Callable[[dict[str, Any]], bool] | None = None  # a further test of a row's values (chat markup)
    assemble: Callable[[Rows, Reading], Rows] | None = None  # whole-split rows -> conversation records first

    def reads_field(self, name: str) -> bool:
        return name in self.fields or name in self.reads


CONVERSATION_READS = ("tools", "functions", "system")
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("messages", ("messages",), messages_row,
           "the conversation; `tools`, `tool_calls`, `weight`, reasoning fields and a row-level `system` as given",
           ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why does ice float?"},
                          {"role": "assistant", "content": "It is less dense than water."}]},),
           reads=CONVERSATION_READS, turns="messages"),
    Format("sharegpt", ("conversations",), sharegpt_row,
           "the conversation (`from`: human/gpt/system/tool; `weight` per turn)",
           ({"conversations": [{"from": "human", "value": "Why does ice float?"},
                               {"from": "gpt", "value": "It is less dense than water."}]},),
           reads=CONVERSATION_READS, turns="conversations"),
    Format("message-tree", tuple(sorted(message_tree.TREE_FIELDS)), messages_row,
           "one row per message (OpenAssistant); each path from a root prompt is a conversation (--tree-paths)",
           ({"message_id": "m1", "parent_id": None, "role": "prompter", "text": "Why does ice float?", "rank": None},
            {"message_id": "m2", "parent_id": "m1", "role": "assistant", "text": "It is less dense than water.",
             "rank": 0}),
           reads=tuple(sorted(message_tree.READS)), assemble=message_tree.assemble),
    Format("glaive", ("system", "chat"), function_calling.glaive_row,
           "system: the text before the JSON functions (which become `tools`); `USER:` / `ASSISTANT:` / "
           "`FUNCTION RESPONSE:` turns, `<functioncall>` as a tool call",
           ({"system": 'SYSTEM: You are a helpful assistant with access to the following functions. -\n'
                       '{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": '
                       '{"type": "string"}}}}',
             "chat": "USER: Weather in Paris?\n\n\nASSISTANT: <functioncall> {\"name\": \"get_weather\", "
                     "\"arguments\": '{\"city\": \"Paris\"}'} <|endoftext|>\n\n\nFUNCTION RESPONSE: "
                     "{\"temperature\": 18}\n\n\nASSISTANT: It is 18 C in Paris. <|endoftext|>"},)),
    Format("xlam", ("query", "answers", "tools"), function_calling.xlam_row,
           "user: the query; assistant: the calls in `answers`, with `tools` (JSON strings, as xLAM has them)",
           ({"query": "Weather in Paris?", "answers": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
             "tools": '[{"name": "get_weather", "description": "Current weather", "parameters": {"city": '
                      '{"type": "str"}}}]'},)),
    Format("alpaca", ("instruction", "output"), instruction.alpaca_row,
           "user: instruction + blank line + input; assistant: output",
           ({"instruction": "Translate to French.", "input": "cat", "output": "chat"},),
           reads=("input", "system"), aliases={"output": ("response", "answer"), "input": ("context",)}),
    Format("prompt-completion", ("prompt", "completion"), instruction.prompt_completion_row,
           "user: prompt; assistant: completion (strings, or lists of messages as TRL writes them)",
           ({"prompt": "2 + 2 =", "completion": "4"},),
           reads=("system", "tools"), aliases={"prompt": ("question", "query", "problem"),
                                              "completion": ("answer", "response", "solution")}),
    Format("classification", ("text", "label"), instruction.classification_row,
           "user: `Classify the text. Answer with exactly one of: <labels>.` + the text; assistant: the label",
           ({"text": "What a dull film.", "label": "negative"},), reads=("system",)),
    Format("chat-text", ("text",), instruction.chat_text_row,
           "a conversation written in ChatML, Llama 3 headers or `### Human:` / `### Assistant:`, parsed into turns",
           ({"text": "<|im_start|>user\nWhy does ice float?<|im_end|>\n<|im_start|>assistant\nIt is less dense "
                     "than water.<|im_end|>\n"},),
           matches=instruction.has_markup),
    Format("text", ("text",), instruction.text_row, "plain text with BOS/EOS, loss on every token",
           ({"text": "Continued pre-training text ..."},)),
)}
# Fields that hold a conversation's turns, whose keys --columns may rename too.
TURN_FIELDS = tuple(dict.fromkeys(f.turns for f in FORMATS.values() if f.turns))


def choices() -> tuple[str, ...]:
    """The values --format takes."""
    return ("auto", *FORMATS)


def check_choice(value: str) -> None:
    """A --format value the registry does not know is refused, naming the flag and the choices."""
    if value not in choices():
        raise DataError(f"--format must be one of {', '.join(choices())}, got {value!r}")


def known_fields() -> set[str]:
    """Every field name a format reads, top-level or inside a turn: what --columns may map."""
    return {name for f in FORMATS.values() for name in (*f.fields, *f.reads)} | set(TURN_KEYS)


def reading_for(cfg: Any, labels: list[str] | None = None) -> Reading:
    """How rows are read under the run's data options."""
    return Reading(role_map=parse_role_map(cfg.role_map), columns=parse_columns(cfg.columns, known_fields()),
                   labels=labels, tree_paths=cfg.tree_paths, format_given=cfg.format != "auto", bad_rows=cfg.bad_rows)


def detect_format(rows: Rows, reading: Reading | None = None) -> str:
    """The format of a split, from the fields (after --columns) of its first row; with --bad-rows skip, of its
    first row that shows one."""
    reading = reading or Reading()
    tries = DETECT_ROWS if reading.bad_rows == "skip" else 1
    records, wheres = rows.records[:tries], rows.wheres[:tries]
    for i, (record, where) in enumerate(zip(records, wheres)):
        try:
            return _detect(apply_columns(record, reading.columns, TURN_FIELDS), where)
        except DataError:
            if i == len(records) - 1:
                raise
    raise DataError(f"{rows.source}: no rows")


def _detect(record: Any, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with named fields, got {type(record).__name__}")
    for spec in FORMATS.values():
        if set(spec.fields) <= set(record) and (spec.matches is None or spec.matches(record)):
            return spec.name
    expected = " | ".join(dict.fromkeys("+".join(f.fields) for f in FORMATS.values()))
    raise DataError(f"{where}: cannot tell the format from the fields {sorted(record)}; expected one of: "
                    f"{expected}{_column_hint(record)} (or pass --format)")


def _column_hint(record: dict[str, Any]) -> str:
    """A --columns mapping under which the row's own column names fit a format, when one does."""
    for spec in FORMATS.values():
        mapping = {}
        for name in (*spec.fields, *spec.reads):
            alias = next((a for a in spec.aliases.get(name, ()) if a in record), None)
            if name not in record and alias:
                mapping[name] = alias
        if mapping and all(name in record or name in mapping for name in spec.fields):
            pairs = ",".join(f"{name}={column}" for name, column in sorted(mapping.items()))
            return f"; its columns fit {spec.name} with --columns {pairs}"
    return ""


def class_labels(rows: Rows, reading: Reading | None = None) -> list[str]:
    """The sorted label set of a classification split (rows skipped as bad under --bad-rows skip add none)."""
    reading = reading or Reading()
    labels = set()
    for record, where in zip(rows.records, rows.wheres):
        try:
            labels.add(instruction.label(apply_columns(record, reading.columns, TURN_FIELDS), where))
        except DataError:
            if reading.bad_rows != "skip":
                raise
    return sorted(labels)


def assemble(rows: Rows, fmt: str, reading: Reading) -> Rows:
    """The split as the records its format converts: whole-split formats (message trees) assemble theirs first."""
    spec = FORMATS[fmt]
    if spec.assemble is None:
        return rows
    records = [apply_columns(record, reading.columns, TURN_FIELDS) for record in rows.records]
    return spec.assemble(Rows(records, rows.wheres, rows.source), reading)


def convert(rows: Rows, fmt: str, reading: Reading, tally: Tally | None = None) -> list[Example]:
    """Every row of a split as an Example. A bad row raises a DataError naming it, or with --bad-rows skip is
    left out and its error kept in the tally, which also counts the fields no reader used."""
    spec = FORMATS[fmt]
    tally = tally if tally is not None else Tally()
    examples = []
    for record, where in zip(rows.records, rows.wheres):
        try:
            record = apply_columns(record, reading.columns, TURN_FIELDS)
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected an object with named fields, got {type(record).__name__}")
            example = spec.convert(record, where, reading)
            if example.messages is not None:
                example = through_last_answer(example)
        except DataError as err:
            if reading.bad_rows != "skip":
                raise DataError(f"{err}{SKIP_HINT}") from err
            tally.skipped.append(str(err))
            continue
        if spec.assemble is None:  # assembled records were counted as the raw rows they came from
            tally.unused.update(unused_fields(record, frozenset((*spec.fields, *spec.reads)),
                                              (spec.turns,) if spec.turns else (), TURN_KEYS))
        examples.append(example)
    return examples


def to_examples(rows: Rows, fmt: str, role_map: dict[str, str], labels: list[str] | None = None) -> list[Example]:
    """Every row of a split as an Example, or a DataError naming the first bad row and field."""
    return convert(rows, fmt, Reading(role_map=role_map, labels=labels))


def through_last_answer(example: Example) -> Example:
    """The conversation up to its last assistant turn (later turns teach nothing), or a DataError if it has none."""
    last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{example.where}: no assistant turn (after the role map), so nothing to learn from")
    if last == len(example.messages) - 1:
        return example
    return Example(example.where, messages=example.messages[: last + 1], tools=example.tools)


def markdown_table() -> str:
    """The docs table of formats, from the registry."""
    lines = ["| `--format` | detected by the fields | one row | trains as |", "|---|---|---|---|"]
    for spec in FORMATS.values():
        detected = " + ".join(f"`{name}`" for name in spec.fields) + (" holding chat markup" if spec.matches else "")
        rows = "<br>".join(f"`{json.dumps(row, ensure_ascii=False)}`".replace("|", "\\|") for row in spec.example)
        lines.append(f"| `{spec.name}` | {detected} | {rows} | {spec.doc} |")
    return "\n".join(lines)
