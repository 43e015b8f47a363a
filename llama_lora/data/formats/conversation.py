"""Conversations as chat APIs and ShareGPT exports hold them: turns with roles, content parts, tool definitions and
calls (OpenAI's current and legacy fields), per-turn weights and reasoning traces, a row-level system prompt."""

from __future__ import annotations

import json
import re
from typing import Any

from llama_lora.data.formats.fields import Example, Message, Reading, row_system, string
from llama_lora.errors import DataError

# Where exports keep an assistant turn's reasoning beside its answer (DeepSeek's API and R1 distillations:
# reasoning_content; Anthropic-style and several open sets: thinking; others: reasoning).
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
# Reasoning written into the answer itself, as R1-style models emit it.
INLINE_REASONING = re.compile(r"\s*<think>(.*?)</think>\s*", re.DOTALL)
# Every key a turn may hold that some part of the project reads (others are listed as unused in the audit).
TURN_KEYS = frozenset({"role", "content", "from", "value", "tool_calls", "function_call", "tool_call_id", "name",
                       "weight", *REASONING_KEYS})
ROW_KEYS = frozenset({"tools", "functions", "system"})


def messages_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """An OpenAI-style row: `messages` of {role, content}."""
    return conversation(record, where, "messages", "role", "content", reading)


def sharegpt_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """A ShareGPT row: `conversations` of {from, value}."""
    return conversation(record, where, "conversations", "from", "value", reading)


def conversation(record: dict[str, Any], where: str, name: str, role_key: str, content_key: str,
                 reading: Reading) -> Example:
    """The conversation field `name` of a row, with the row's tool definitions and system prompt."""
    turns = record.get(name)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{name}': expected a non-empty list of {{{role_key}, {content_key}}} objects")
    messages = row_system(record, where, read_turns(turns, where, name, role_key, content_key, reading))
    return Example(where, messages=messages, tools=row_tools(record, where))


def read_turns(turns: list[Any], where: str, field: str, role_key: str, content_key: str,
               reading: Reading) -> list[Message]:
    """Every turn as a message for the template; an empty system turn is no system prompt and is left out."""
    messages = []
    for i, turn in enumerate(turns):
        name = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field '{name}': expected an object with '{role_key}' and '{content_key}'")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in reading.role_map:
            raise DataError(f"{where}: field '{name}.{role_key}': unknown role {role!r:.40}, expected one of "
                            f"{', '.join(sorted(reading.role_map))} (add names with --role-map name=role)")
        role = reading.role_map[role]
        if role == "system" and turn.get(content_key) in (None, ""):
            continue
        messages.append(read_turn(turn, role, where, name, content_key))
    return messages


def read_turn(turn: dict[str, Any], role: str, where: str, name: str, content_key: str) -> Message:
    """One turn: its text, and for the assistant its tool calls, reasoning and weight; for a tool result, which
    call it answers."""
    message: Message = {"role": role}
    calls = assistant_calls(turn, where, name) if role == "assistant" else None
    if calls:
        message["tool_calls"] = calls
    # a tool call's content is usually empty or null: the template renders the call
    content = text_content(turn, where, content_key, f"{name}.{content_key}", optional=bool(calls))
    if role == "assistant":
        content = split_reasoning(turn, content, message, where, name)
        if not content.strip() and not calls:
            raise DataError(f"{where}: field '{name}.{content_key}': expected a non-empty answer after the reasoning")
    message["content"] = content
    weight = turn_weight(turn, role, where, name)
    if weight == 0 and role == "assistant":
        message["weight"] = 0
    if role == "tool":  # which call this answers, for templates that name it
        for key in ("name", "tool_call_id"):
            if isinstance(turn.get(key), str):
                message[key] = turn[key]
    return message


def turn_weight(turn: dict[str, Any], role: str, where: str, name: str) -> int | None:
    """A turn's `weight` as OpenAI defines it: 1 trains an assistant turn, 0 keeps it as context; missing or null
    is the default. Any other value, or 1 on a turn that is not the assistant's, is refused."""
    weight = turn.get("weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        raise DataError(f"{where}: field '{name}.weight': expected 0 (not trained) or 1 (trained), got {weight!r:.40}")
    if weight == 1 and role != "assistant":
        raise DataError(f"{where}: field '{name}.weight': 1 on a {role} turn, but only assistant turns are trained")
    return int(weight)


def split_reasoning(turn: dict[str, Any], content: str, message: Message, where: str, name: str) -> str:
    """The answer of an assistant turn; its reasoning (a `reasoning_content`/`thinking`/`reasoning` field, or a
    leading <think>...</think> block) goes into message["reasoning"]."""
    given = [key for key in REASONING_KEYS if turn.get(key) not in (None, "")]
    inline = INLINE_REASONING.match(content)
    if len(given) + bool(inline) > 1:
        places = [f"'{name}.{key}'" for key in given] + ([f"<think> in '{name}'"] if inline else [])
        raise DataError(f"{where}: reasoning given twice ({' and '.join(places)}); keep one")
    if given:
        message["reasoning"] = string(turn, where, given[0], path=f"{name}.{given[0]}").strip()
    elif inline:
        if inline.group(1).strip():
            message["reasoning"] = inline.group(1).strip()
        content = content[inline.end():]
    return content


def text_content(turn: dict[str, Any], where: str, key: str, path: str, optional: bool = False) -> str:
    """A turn's text: a string, or OpenAI-style content parts whose text parts are joined with a newline."""
    value = turn.get(key)
    if not isinstance(value, list):
        return string(turn, where, key, optional=optional, path=path)
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            got = f"a {kind!r:.20} part" if isinstance(kind, str) else f"{part!r:.40}"
            raise DataError(f"{where}: field '{path}[{i}]': expected a text part {{\"type\": \"text\", \"text\": "
                            f"...}}, got {got} (only text is trained)")
        texts.append(string(part, where, "text", path=f"{path}[{i}].text"))
    if not texts and not optional:
        raise DataError(f"{where}: field '{path}': expected a non-empty string or list of text parts (got [])")
    return "\n".join(texts)


def assistant_calls(turn: dict[str, Any], where: str, name: str) -> list[dict[str, Any]] | None:
    """The turn's tool calls: OpenAI's `tool_calls`, or its legacy single `function_call`."""
    calls, legacy = turn.get("tool_calls"), turn.get("function_call")
    if calls is not None and legacy is not None:
        raise DataError(f"{where}: field '{name}': both 'tool_calls' and the legacy 'function_call'; keep one")
    if legacy is not None:
        return tool_calls([{"function": legacy}], where, f"{name}.function_call", legacy=True)
    return tool_calls(calls, where, f"{name}.tool_calls") if calls is not None else None


def tool_calls(value: Any, where: str, path: str, legacy: bool = False) -> list[dict[str, Any]]:
    """OpenAI-style tool calls as {"type": "function", "function": {"name", "arguments": dict}}."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{path}': expected a non-empty list of "
                        '{"function": {"name": ..., "arguments": {...}}} objects')
    calls = []
    for i, call in enumerate(value):
        place = path if legacy else f"{path}[{i}].function"
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise DataError(f"{where}: field '{path}[{i}]': expected an object with 'function' holding "
                            "'name' and 'arguments'")
        name = string(function, where, "name", path=f"{place}.name")
        arguments = json_object(function.get("arguments", {}), where, f"{place}.arguments",
                                "an object of argument names and values (or its JSON string)")
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments},
                      **({"id": call["id"]} if isinstance(call.get("id"), str) else {})})
    return calls


def json_object(value: Any, where: str, path: str, expected: str) -> Any:
    """A value that exports often hold as its JSON string, parsed; a dict is required."""
    if isinstance(value, str):  # OpenAI exports arguments as a JSON string; templates want the object
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field '{path}': malformed JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(value, dict):
        raise DataError(f"{where}: field '{path}': expected {expected}, got {value!r:.40}")
    return value


def row_tools(record: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The row's tool definitions (`tools`, or OpenAI's legacy `functions`): JSON-schema functions (or their
    JSON string), or None."""
    if record.get("tools") not in (None, "", []) and record.get("functions") not in (None, "", []):
        raise DataError(f"{where}: fields 'tools' and the legacy 'functions' both define tools; keep one")
    legacy = record.get("functions") not in (None, "", [])
    name = "functions" if legacy else "tools"
    tools = tool_list(record.get(name), where, name)
    if tools and legacy:  # legacy definitions are the function objects themselves
        tools = [{"type": "function", "function": function} for function in tools]
    return tools


def tool_list(tools: Any, where: str, name: str) -> list[dict[str, Any]] | None:
    """A list of function definitions (or its JSON string), each with a name; None when empty."""
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):  # CSV and parquet exports often hold the definitions as one JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field '{name}': malformed JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(tools, list):
        raise DataError(f"{where}: field '{name}': expected a list of function definitions, got {tools!r:.40}")
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{where}: field '{name}[{i}]': expected a function definition with a 'name' "
                            '({"type": "function", "function": {"name", "description", "parameters"}})')
    return tools or None
