"""Turn raw rows of any common dataset format into conversations (or plain text) the trainer can use.

Formats, detected from a row's fields (`--format` overrides):

| format              | fields                                        | becomes                                  |
|---------------------|-----------------------------------------------|------------------------------------------|
| `messages`          | messages: [{role, content}]  (OpenAI)          | the conversation                         |
| `sharegpt`          | conversations: [{from, value}]                 | the conversation                         |
| `alpaca`            | instruction, input (optional), output          | user: instruction + input; assistant: output
| `prompt-completion` | prompt, completion (strings or message lists)  | user: prompt; assistant: completion      |
| `classification`    | text, label                                    | user: the labels and the text; assistant: label
| `text`              | text                                           | plain text, loss on every token          |

A `system` field, where a format has none of its own, becomes the system prompt.

Conversations may carry what chat APIs export today: OpenAI-style content parts (text parts are joined with a
newline; image and audio parts are refused), tool definitions (`tools` beside the messages), assistant turns
with `tool_calls` (content may then be empty) and `tool` turns holding a call's result.

Turn orders, and what they mean:
- an assistant turn first (a greeting the model opens with): trained as given;
- two turns of one role in a row: kept as given, each its own turn (a template that refuses it is reported);
- turns after the last assistant turn (a user question left unanswered, a trailing tool result): dropped,
  since nothing after the last answer is learned from;
- no assistant turn at all: refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llama_lora.data.sources import Rows
from llama_lora.errors import DataError

Message = dict[str, Any]
CHAT_ROLES = ("system", "user", "assistant", "tool")
# Role names seen in the wild, mapped onto the chat template's three. The bundled data speaks of teachers
# and students; ShareGPT of humans and gpt; Gemma of the model. `--role-map` adds to or overrides these.
DEFAULT_ROLE_MAP = {
    "system": "system", "user": "user", "assistant": "assistant",
    "teacher": "assistant", "student": "user",
    "human": "user", "gpt": "assistant", "model": "assistant",
    "tool": "tool", "ipython": "tool",
}
CLASSIFICATION_PROMPT = "Classify the text. Answer with exactly one of: {labels}.\n\nText: {text}"


@dataclass(frozen=True)
class Example:
    """One training example: a conversation, or plain text for continued pre-training."""

    where: str
    messages: list[Message] | None = None
    text: str | None = None
    tools: list[dict[str, Any]] | None = None  # JSON-schema function definitions the conversation may call

    @property
    def calls_tools(self) -> bool:
        """True when the conversation defines tools or calls one."""
        return bool(self.tools) or any("tool_calls" in m or m["role"] == "tool" for m in self.messages or [])


def parse_role_map(spec: str | dict[str, str]) -> dict[str, str]:
    """The default role map updated by "name=role,name=role" (or a YAML mapping)."""
    pairs = spec.items() if isinstance(spec, dict) else (
        item.split("=", 1) if "=" in item else (item, "") for item in spec.split(",") if item.strip()
    )
    role_map = dict(DEFAULT_ROLE_MAP)
    for name, role in pairs:
        name, role = str(name).strip(), str(role).strip()
        if role not in CHAT_ROLES or not name:
            raise DataError(f"--role-map: '{name}={role}': expected name=role with role one of "
                            f"{', '.join(CHAT_ROLES)}")
        role_map[name] = role
    return role_map


def detect_format(rows: Rows) -> str:
    """The format of a split, from the fields of its first row."""
    first, where = rows.records[0], rows.wheres[0]
    if not isinstance(first, dict):
        raise DataError(f"{where}: expected an object with named fields, got {type(first).__name__}")
    fields = set(first)
    for fmt, needs in (("messages", {"messages"}), ("sharegpt", {"conversations"}),
                       ("alpaca", {"instruction", "output"}), ("prompt-completion", {"prompt", "completion"}),
                       ("classification", {"text", "label"}), ("text", {"text"})):
        if needs <= fields:
            return fmt
    raise DataError(
        f"{where}: cannot tell the format from the fields {sorted(fields)}; expected one of: messages | "
        "conversations | instruction+output | prompt+completion | text+label | text (or pass --format)"
    )


def class_labels(rows: Rows) -> list[str]:
    """The sorted label set of a classification split."""
    return sorted({_label(record, where) for record, where in zip(rows.records, rows.wheres)})


def to_examples(rows: Rows, fmt: str, role_map: dict[str, str], labels: list[str] | None = None) -> list[Example]:
    """Every row of a split as an Example, or a DataError naming the first bad row and field."""
    convert = {
        "messages": lambda r, w: _messages(r, w, "messages", "role", "content", role_map),
        "sharegpt": lambda r, w: _messages(r, w, "conversations", "from", "value", role_map),
        "alpaca": _alpaca,
        "prompt-completion": lambda r, w: _prompt_completion(r, w, role_map),
        "classification": lambda r, w: _classification(r, w, labels or []),
        "text": lambda r, w: Example(w, text=_string(r, w, "text")),
    }[fmt]
    examples = []
    for record, where in zip(rows.records, rows.wheres):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with named fields, got {type(record).__name__}")
        example = convert(record, where)
        if example.messages is not None:
            example = _through_last_answer(example)
        examples.append(example)
    return examples


def _through_last_answer(example: Example) -> Example:
    """The conversation up to its last assistant turn (later turns teach nothing), or a DataError if it has none."""
    last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{example.where}: no assistant turn (after the role map), so nothing to learn from")
    if last == len(example.messages) - 1:
        return example
    return Example(example.where, messages=example.messages[: last + 1], tools=example.tools)


def _string(record: dict[str, Any], where: str, field: str, optional: bool = False, path: str = "") -> str:
    """record[field] as a non-empty string; `path` names a nested field in the error (messages[1].content)."""
    value = record.get(field)
    if optional and value in (None, ""):
        return ""
    if not isinstance(value, str) or not value.strip():
        got = "missing" if field not in record else f"got {value!r:.40}"
        raise DataError(f"{where}: field '{path or field}': expected a non-empty string ({got})")
    if not value.isascii():
        check_unicode(value, f"{where}: field '{path or field}'")
    return value


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """Prepend a system prompt unless the conversation has one (a row's `system` field, `--system` at inference)."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def check_unicode(text: str, place: str) -> None:
    """Raise a DataError at `place` if the text holds an unpaired surrogate (a lone \\ud800-style JSON escape),
    which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{place}: not valid Unicode text: unpaired surrogate {text[err.start]!r} at character "
                        f"{err.start}") from err


def _with_system(record: dict[str, Any], where: str, messages: list[Message]) -> list[Message]:
    return with_system(messages, _string(record, where, "system", optional=True))


def _messages(record: dict[str, Any], where: str, field: str, role_key: str, content_key: str,
              role_map: dict[str, str]) -> Example:
    turns = record.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{field}': expected a non-empty list of "
                        f"{{{role_key}, {content_key}}} objects")
    return Example(where, messages=_turns(turns, where, field, role_key, content_key, role_map),
                   tools=_tools(record, where))


def _turns(turns: list[Any], where: str, field: str, role_key: str, content_key: str,
           role_map: dict[str, str]) -> list[Message]:
    messages = []
    for i, turn in enumerate(turns):
        name = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field '{name}': expected an object with '{role_key}' and '{content_key}'")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in role_map:
            raise DataError(f"{where}: field '{name}.{role_key}': unknown role {role!r:.40}, expected one of "
                            f"{', '.join(sorted(role_map))} (add names with --role-map name=role)")
        message: Message = {"role": role_map[role]}
        if message["role"] == "assistant" and turn.get("tool_calls") is not None:
            message["tool_calls"] = _tool_calls(turn["tool_calls"], where, f"{name}.tool_calls")
            # a tool call's content is usually empty; the template renders the call
            message["content"] = _content(turn, where, content_key, f"{name}.{content_key}", optional=True)
        else:
            message["content"] = _content(turn, where, content_key, f"{name}.{content_key}")
        if message["role"] == "tool":  # which call this answers, for templates that name it
            for key in ("name", "tool_call_id"):
                if isinstance(turn.get(key), str):
                    message[key] = turn[key]
        messages.append(message)
    return messages


def _content(turn: dict[str, Any], where: str, key: str, path: str, optional: bool = False) -> str:
    """A turn's text: a string, or OpenAI-style content parts whose text parts are joined with a newline."""
    value = turn.get(key)
    if not isinstance(value, list):
        return _string(turn, where, key, optional=optional, path=path)
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            got = f"a {kind!r:.20} part" if isinstance(kind, str) else f"{part!r:.40}"
            raise DataError(f"{where}: field '{path}[{i}]': expected a text part {{\"type\": \"text\", \"text\": "
                            f"...}}, got {got} (only text is trained)")
        texts.append(_string(part, where, "text", path=f"{path}[{i}].text"))
    if not texts and not optional:
        raise DataError(f"{where}: field '{path}': expected a non-empty string or list of text parts (got [])")
    return "\n".join(texts)


def _tool_calls(value: Any, where: str, path: str) -> list[dict[str, Any]]:
    """OpenAI-style tool calls as {"type": "function", "function": {"name", "arguments": dict}}."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{path}': expected a non-empty list of "
                        '{"function": {"name": ..., "arguments": {...}}} objects')
    calls = []
    for i, call in enumerate(value):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise DataError(f"{where}: field '{path}[{i}]': expected an object with 'function' holding "
                            "'name' and 'arguments'")
        name = _string(function, where, "name", path=f"{path}[{i}].function.name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI exports arguments as a JSON string; templates want the object
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: field '{path}[{i}].function.arguments': malformed JSON "
                                f"({err.msg} at column {err.colno})") from err
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: field '{path}[{i}].function.arguments': expected an object of argument "
                            f"names and values (or its JSON string), got {arguments!r:.40}")
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments},
                      **({"id": call["id"]} if isinstance(call.get("id"), str) else {})})
    return calls


def _tools(record: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The row's tool definitions: a list of JSON-schema functions (or their JSON string), or None."""
    tools = record.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):  # CSV and parquet exports often hold the definitions as one JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field 'tools': malformed JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(tools, list):
        raise DataError(f"{where}: field 'tools': expected a list of function definitions, got {tools!r:.40}")
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{where}: field 'tools[{i}]': expected a function definition with a 'name' "
                            '({"type": "function", "function": {"name", "description", "parameters"}})')
    return tools


def _alpaca(record: dict[str, Any], where: str) -> Example:
    instruction = _string(record, where, "instruction")
    extra = _string(record, where, "input", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Example(where, messages=_with_system(record, where, [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": _string(record, where, "output")},
    ]))


def _prompt_completion(record: dict[str, Any], where: str, role_map: dict[str, str]) -> Example:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        return Example(where, messages=_turns(prompt, where, "prompt", "role", "content", role_map)
                       + _turns(completion, where, "completion", "role", "content", role_map),
                       tools=_tools(record, where))
    return Example(where, messages=_with_system(record, where, [
        {"role": "user", "content": _string(record, where, "prompt")},
        {"role": "assistant", "content": _string(record, where, "completion")},
    ]))


def _label(record: dict[str, Any], where: str) -> str:
    label = record.get("label") if isinstance(record, dict) else None
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        got = "missing" if not isinstance(record, dict) or "label" not in record else f"got {label!r:.40}"
        raise DataError(f"{where}: field 'label': expected a non-empty string or an integer ({got})")
    return str(label).strip()


def _classification(record: dict[str, Any], where: str, labels: list[str]) -> Example:
    label = _label(record, where)
    if label not in labels:
        raise DataError(f"{where}: field 'label': {label!r} is not among the training labels ({', '.join(labels)})")
    prompt = CLASSIFICATION_PROMPT.format(labels=", ".join(labels), text=_string(record, where, "text"))
    return Example(where, messages=_with_system(record, where, [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": label},
    ]))
