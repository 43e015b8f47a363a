"""What every row format shares: the Example a row becomes, how rows are read (role names, column names), and the
field readers whose errors name the file, the line and the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama_lora.errors import DataError

Message = dict[str, Any]
CHAT_ROLES = ("system", "user", "assistant", "tool")
# Role names seen in the wild, mapped onto the chat template's roles. The bundled data speaks of teachers and
# students; ShareGPT of humans and gpt; Gemma of the model; OpenAssistant of prompters; OpenAI's legacy function
# results come as `function` turns. `--role-map` adds to or overrides these.
DEFAULT_ROLE_MAP = {
    "system": "system", "user": "user", "assistant": "assistant",
    "teacher": "assistant", "student": "user",
    "human": "user", "gpt": "assistant", "model": "assistant", "prompter": "user",
    "tool": "tool", "ipython": "tool", "function": "tool",
}


@dataclass(frozen=True)
class Example:
    """One training example: a conversation, or plain text for continued pre-training.

    An assistant message may carry `reasoning` (its thinking, rendered before the answer as --reasoning says) and
    `weight: 0` (not trained, as OpenAI's fine-tuning files mark it); the renderer reads both.
    """

    where: str
    messages: list[Message] | None = None
    text: str | None = None
    tools: list[dict[str, Any]] | None = None  # JSON-schema function definitions the conversation may call

    @property
    def calls_tools(self) -> bool:
        """True when the conversation defines tools, calls one or holds a tool's result."""
        return bool(self.tools) or any("tool_calls" in m or m["role"] == "tool" for m in self.messages or [])

    @property
    def needs_tool_template(self) -> bool:
        """True when only a template that renders tool definitions and calls can render it (a tool result given
        as text, as Hermes data has it, is an ordinary turn)."""
        return bool(self.tools) or any("tool_calls" in m for m in self.messages or [])


@dataclass(frozen=True)
class Reading:
    """How rows are read: the data options that change what a row becomes."""

    role_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    columns: dict[str, str] = field(default_factory=dict)  # a format's field name -> the column that holds it
    labels: list[str] | None = None  # classification: the training split's label set
    tree_paths: str = "top-ranked"  # message trees: the top-ranked path of each tree, or every path
    format_given: bool = False  # --format was named: chat markup in a `text` row then trains as plain text
    bad_rows: str = "error"  # a bad row stops the run, or is skipped and named in the audit


def parse_pairs(spec: str | dict[str, str], option: str, pair: str) -> list[tuple[str, str]]:
    """"a=b,c=d" (or a YAML mapping) as pairs; a malformed item names the option."""
    if isinstance(spec, dict):
        items = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    else:
        items = [tuple(part.strip() for part in item.split("=", 1)) if "=" in item else (item.strip(), "")
                 for item in spec.split(",") if item.strip()]
    for name, value in items:
        if not name or not value:
            raise DataError(f"{option}: '{name}={value}': expected {pair} pairs separated by commas")
    return items


def parse_role_map(spec: str | dict[str, str]) -> dict[str, str]:
    """The default role map updated by "name=role,name=role" (or a YAML mapping)."""
    role_map = dict(DEFAULT_ROLE_MAP)
    for name, role in parse_pairs(spec, "--role-map", f"name=role (role one of {', '.join(CHAT_ROLES)})"):
        if role not in CHAT_ROLES:
            raise DataError(f"--role-map: '{name}={role}': expected name=role with role one of {', '.join(CHAT_ROLES)}")
        role_map[name] = role
    return role_map


def parse_columns(spec: str | dict[str, str], known: set[str]) -> dict[str, str]:
    """--columns "field=column,...": which column holds each of a format's fields (`known`: every field a format
    reads, top-level or inside a turn)."""
    columns = {}
    for name, column in parse_pairs(spec, "--columns", "field=column"):
        if name not in known:
            raise DataError(f"--columns: '{name}={column}': '{name}' is not a field any format reads; expected "
                            f"one of {', '.join(sorted(known))}")
        columns[name] = column
    return columns


def apply_columns(record: Any, columns: dict[str, str], turn_fields: tuple[str, ...]) -> Any:
    """The record with each mapped column renamed to the field it holds, at the top level and inside the turns of
    a conversation field (`--columns role=speaker` renames `speaker` in every turn)."""
    if not columns or not isinstance(record, dict):
        return record
    renamed = {column: name for name, column in columns.items()}
    record = {renamed.get(key, key): value for key, value in record.items()}
    for name in turn_fields:
        turns = record.get(name)
        if isinstance(turns, list):
            record[name] = [{renamed.get(k, k): v for k, v in turn.items()} if isinstance(turn, dict) else turn
                            for turn in turns]
    return record


def unused_fields(record: dict[str, Any], reads: frozenset[str], turn_fields: tuple[str, ...],
                  turn_reads: frozenset[str]) -> list[str]:
    """Fields of a row that hold a value but that its format does not read (turn keys as `messages[].key`)."""
    unused = [key for key, value in record.items() if key not in reads and value not in (None, "", [], {})]
    for name in turn_fields:
        turns = record.get(name)
        if isinstance(turns, list):
            keys = {key for turn in turns if isinstance(turn, dict) for key, value in turn.items()
                    if key not in turn_reads and value not in (None, "", [], {})}
            unused += [f"{name}[].{key}" for key in sorted(keys)]
    return unused


def string(record: dict[str, Any], where: str, name: str, optional: bool = False, path: str = "") -> str:
    """record[name] as a non-empty string; `path` names a nested field in the error (messages[1].content)."""
    value = record.get(name)
    if optional and value in (None, ""):
        return ""
    if not isinstance(value, str) or not value.strip():
        if name not in record and not path:
            got = f"missing; --columns {name}=COLUMN reads it from another column"
        else:
            got = "missing" if name not in record else f"got {value!r:.40}"
        raise DataError(f"{where}: field '{path or name}': expected a non-empty string ({got})")
    if not value.isascii():
        check_unicode(value, f"{where}: field '{path or name}'")
    return value


def check_unicode(text: str, place: str) -> None:
    """Raise a DataError at `place` if the text holds an unpaired surrogate (a lone \\ud800-style JSON escape),
    which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{place}: not valid Unicode text: unpaired surrogate {text[err.start]!r} at character "
                        f"{err.start}") from err


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """Prepend a system prompt unless the conversation has one (a row's `system` field, `--system` at inference)."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def row_system(record: dict[str, Any], where: str, messages: list[Message]) -> list[Message]:
    """A row-level `system` field joined to the conversation as its system prompt (an empty one is no prompt);
    a conversation with a different system turn of its own is refused rather than one of them dropped."""
    system = string(record, where, "system", optional=True)
    own = next((m["content"] for m in messages if m["role"] == "system"), None)
    if system.strip() and own is not None and own.strip() != system.strip():
        raise DataError(f"{where}: field 'system' and the conversation's own system turn differ; keep one")
    return with_system(messages, system if system.strip() else None)
