"""Function-calling data sets whose rows are not OpenAI conversations, converted into the tool-calling conversations
the chat template renders: Glaive's `system` + `chat` strings and Salesforce xLAM's `query` / `tools` / `answers`
JSON strings."""

from __future__ import annotations

import json
import re
from typing import Any

from llama_lora.data.formats.conversation import json_object, tool_list
from llama_lora.data.formats.fields import Example, Message, Reading, string, with_system
from llama_lora.errors import DataError

GLAIVE_TURN = re.compile(r"(?:^|\n)[ \t]*(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]*")
GLAIVE_ROLES = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
GLAIVE_END = "<|endoftext|>"  # Glaive closes each assistant turn with GPT-2's end-of-text, as text
GLAIVE_CALL = "<functioncall>"
# Glaive quotes a call's arguments as a JSON string in single quotes: {"name": "f", "arguments": '{"a": 1}'}
GLAIVE_QUOTED_ARGUMENTS = re.compile(r"""^(\{.*"arguments"\s*:\s*)'(.*)'(\s*\})$""", re.DOTALL)


def glaive_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """A Glaive function-calling row: the system prompt with the JSON function definitions after its text, and a
    chat of USER / ASSISTANT / FUNCTION RESPONSE turns where a call is `<functioncall> {...}`."""
    system, tools = glaive_system(string(record, where, "system", optional=True), where)
    messages = [glaive_turn(role, text, where, i) for i, (role, text) in enumerate(glaive_turns(record, where))]
    return Example(where, messages=with_system(messages, system), tools=tools)


def glaive_system(text: str, where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(system prompt, tool definitions) of a Glaive `system` value: "SYSTEM: ... -\\n{...}\\n\\n{...}"."""
    text = text.strip().removeprefix("SYSTEM:").strip()
    start = text.find("{")
    if start < 0:
        return text, None
    functions, decoder, position = [], json.JSONDecoder(), start
    while position < len(text):
        try:
            function, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field 'system': malformed JSON function definition ({err.msg} at character "
                            f"{err.pos})") from err
        functions.append(function)
        while position < len(text) and text[position].isspace():
            position += 1
    tools = tool_list(functions, where, "system")
    return text[:start].strip(), [{"type": "function", "function": function} for function in tools or []]


def glaive_turns(record: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """(role, text) of each turn of a Glaive `chat` value."""
    chat = string(record, where, "chat")
    marks = list(GLAIVE_TURN.finditer(chat))
    if not marks or chat[:marks[0].start()].strip():
        raise DataError(f"{where}: field 'chat': expected turns starting 'USER:', 'ASSISTANT:' or 'FUNCTION RESPONSE:'")
    ends = [m.start() for m in marks[1:]] + [len(chat)]
    return [(GLAIVE_ROLES[m.group(1)], chat[m.end():end].strip().removesuffix(GLAIVE_END).strip())
            for m, end in zip(marks, ends)]


def glaive_turn(role: str, text: str, where: str, index: int) -> Message:
    """One Glaive turn as a message; an assistant `<functioncall> {...}` becomes a tool call."""
    if not text:
        raise DataError(f"{where}: field 'chat': turn {index + 1} ({role}) is empty")
    if role != "assistant" or not text.startswith(GLAIVE_CALL):
        return {"role": role, "content": text}
    call = text[len(GLAIVE_CALL):].strip()
    quoted = GLAIVE_QUOTED_ARGUMENTS.match(call)
    if quoted:  # the single-quoted JSON string of the arguments, as an object
        call = f"{quoted.group(1)}{json.dumps(quoted.group(2))}{quoted.group(3)}"
    function = json_object(call, where, f"chat (turn {index + 1}, the function call)", "a JSON function call")
    name = string(function, where, "name", path=f"chat (turn {index + 1}).name")
    arguments = json_object(function.get("arguments", {}), where, f"chat (turn {index + 1}).arguments",
                            "an object of argument names and values")
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def xlam_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """An xLAM row: the user's query, and the assistant's answer as the calls in `answers` (JSON strings)."""
    tools = tool_list(record.get("tools"), where, "tools")
    answers = record.get("answers")
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field 'answers': malformed JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where}: field 'answers': expected a non-empty list of calls {{\"name\", \"arguments\"}}")
    calls = []
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise DataError(f"{where}: field 'answers[{i}]': expected a call {{\"name\", \"arguments\"}}")
        arguments = json_object(answer.get("arguments", {}), where, f"answers[{i}].arguments",
                                "an object of argument names and values")
        calls.append({"type": "function", "function": {
            "name": string(answer, where, "name", path=f"answers[{i}].name"), "arguments": arguments}})
    return Example(where, messages=[{"role": "user", "content": string(record, where, "query")},
                                    {"role": "assistant", "content": "", "tool_calls": calls}],
                   tools=[tool if "function" in tool else {"type": "function", "function": tool} for tool in tools or []]
                   or None)
