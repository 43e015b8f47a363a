"""An Ollama Modelfile read back, and its TEMPLATE rendered for a conversation the way Ollama renders it, so the
prompt Ollama builds can be compared with the prompt the model was trained on without Ollama installed.

TEMPLATE is a Go text/template; this renders the part of the language the Modelfiles written by `gguf` use
(`range .Messages`, `if eq/ne .Role "x"`, `.Role`, `.Content`, `end`, and `{{-` / `-}}` trimming) and refuses any
other action by name, so a template it cannot render is never judged on a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_lora.data.formats import with_system
from llama_lora.errors import UsageError

GO_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
TRIPLE_QUOTED = r'^{key} """(.*?)"""$'


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile says: the model and adapter files (relative to it), the template, system prompt, stops."""

    path: Path
    model: Path
    adapter: Path | None
    template: str
    system: str | None
    stops: tuple[str, ...]


def read_modelfile(path: Path) -> Modelfile:
    """A Modelfile's FROM, ADAPTER, TEMPLATE, SYSTEM and stop parameters; UsageError naming what is missing."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"{path}: cannot read it: {err}") from err
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1].strip() for line in text.splitlines()
             if line.startswith(("FROM ", "ADAPTER "))}
    template = re.search(TRIPLE_QUOTED.format(key="TEMPLATE"), text, re.DOTALL | re.MULTILINE)
    if "FROM" not in lines or template is None:
        raise UsageError(f"{path}: expected a FROM line and a TEMPLATE \"\"\"...\"\"\" block")
    system = re.search(TRIPLE_QUOTED.format(key="SYSTEM"), text, re.DOTALL | re.MULTILINE)
    stops = tuple(json.loads(value) for value in re.findall(r'^PARAMETER stop (".*")$', text, re.MULTILINE))
    return Modelfile(path, path.parent / lines["FROM"], path.parent / lines["ADAPTER"] if "ADAPTER" in lines else None,
                     template.group(1), system.group(1) if system else None, stops)


def parse(template: str) -> list[Any]:
    """Text pieces and (action, argument, children) nodes; "{{-" trims whitespace before, "-}}" after."""
    root: list[Any] = []
    stack = [root]
    position, trim_next = 0, False
    for match in GO_ACTION.finditer(template):
        text = template[position:match.start()]
        text = text.lstrip() if trim_next else text
        stack[-1].append(text.rstrip() if match.group(1) else text)
        action, position, trim_next = match.group(2), match.end(), bool(match.group(3))
        if action == "end":
            if len(stack) == 1:
                raise UsageError("TEMPLATE: {{ end }} without a range or if to close")
            stack.pop()
        elif action.startswith("range ") or re.fullmatch(r'if (eq|ne) \.\w+ ".*"', action):
            node = (*action.split(" ", 1), [])
            stack[-1].append(node)
            stack.append(node[2])
        elif re.fullmatch(r"\.\w+", action):
            stack[-1].append(("field", action, []))
        else:
            raise UsageError(f"TEMPLATE: the action {{{{ {action} }}}} is not one this check renders "
                             "(range, if eq/ne .Field \"value\", .Field, end)")
    stack[-1].append(template[position:].lstrip() if trim_next else template[position:])
    if len(stack) != 1:
        raise UsageError("TEMPLATE: a range or if is never closed with {{ end }}")
    return root


def execute(nodes: list[Any], dot: dict[str, Any]) -> str:
    """The text the parsed template gives for `dot` (a mapping standing for Go's `.`)."""
    out = ""
    for node in nodes:
        if isinstance(node, str):
            out += node
        elif node[0] == "range":
            out += "".join(execute(node[2], item) for item in dot[node[1].lstrip(".")])
        elif node[0] == "if":
            op, field, value = node[1].split(" ", 2)
            if (dot[field.lstrip(".")] == json.loads(value)) == (op == "eq"):
                out += execute(node[2], dot)
        else:
            out += dot[node[1].lstrip(".")]
    return out


def render(modelfile: Modelfile, messages: list[dict[str, Any]]) -> str:
    """The prompt Ollama builds for `messages`: SYSTEM becomes the first message when the conversation has no system
    message of its own, then TEMPLATE renders them all."""
    go_messages = [{"Role": m["role"], "Content": m["content"]} for m in with_system(messages, modelfile.system)]
    return execute(parse(modelfile.template), {"Messages": go_messages})
