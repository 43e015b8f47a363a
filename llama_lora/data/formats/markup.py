"""Conversations written out as text in a chat markup, as some data sets store them (OpenAssistant's oasst_top1 in
ChatML, Guanaco in `### Human:` / `### Assistant:`, exports of Llama 3 prompts): recognised, and parsed back into
turns so they train as conversations with the loss on the assistant's turns."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llama_lora.errors import DataError

# The system prompt header Llama 3.1's template writes itself; parsed prompts drop it so it is not written twice.
LLAMA31_DATE_LINES = re.compile(r"\ACutting Knowledge Date: [^\n]*\nToday Date: [^\n]*\n\n?")


@dataclass(frozen=True)
class Markup:
    """One chat markup: what gives it away, and the pattern of one turn (groups: role, content)."""

    name: str
    marker: re.Pattern[str]
    turn: re.Pattern[str]
    opening: str = ""  # a token allowed before the first turn


MARKUPS = (
    Markup("ChatML", re.compile(r"<\|im_start\|>"),
           re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.DOTALL)),
    Markup("Llama 3", re.compile(r"<\|start_header_id\|>"),
           re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.DOTALL),
           opening="<|begin_of_text|>"),
    Markup("### Human/### Assistant", re.compile(r"### (?:Human|Assistant):"),
           re.compile(r"### (Human|Assistant|System):[ \t]*(.*?)(?=### (?:Human|Assistant|System):|\Z)", re.DOTALL)),
)


def find(text: str) -> str | None:
    """The name of the chat markup a text is written in, or None."""
    return next((m.name for m in MARKUPS if m.marker.search(text)), None)


def parse(text: str, where: str) -> list[dict[str, Any]]:
    """The turns of a text written in a chat markup, as {"role", "content"} (roles as the markup names them);
    a DataError when the text is not a sequence of whole turns."""
    markup = next((m for m in MARKUPS if m.marker.search(text)), None)
    if markup is None:
        raise DataError(f"{where}: field 'text': no chat markup found (expected one of "
                        f"{', '.join(m.name for m in MARKUPS)}); --format text trains it as plain text")
    rest = text.strip()
    if markup.opening and rest.startswith(markup.opening):
        rest = rest[len(markup.opening):]
    turns, position = [], 0
    for match in markup.turn.finditer(rest):
        if rest[position:match.start()].strip():
            break
        role, content = match.group(1).lower(), match.group(2).strip()
        if role == "system":
            content = LLAMA31_DATE_LINES.sub("", content).strip()
        turns.append({"role": role, "content": content})
        position = match.end()
    if not turns or rest[position:].strip():
        raise DataError(f"{where}: field 'text': {markup.name} markup that is not a sequence of whole turns (text "
                        f"left after {len(turns)} turns); --format text trains it as plain text on purpose")
    return turns
