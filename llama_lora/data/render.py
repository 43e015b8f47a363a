"""A conversation to token ids and loss labels: rendered with the tokenizer's chat template, tokenized so that the
data's text stays text, and masked so that the loss sees exactly the assistant turns the data says to train.

- **Masks from prefixes.** The text between the end of an assistant header (the generation prompt) and the end of
  that turn is the assistant's, end-of-turn token included, so the model learns to stop. This works for any
  template (TRL's `assistant_only_loss` needs `{% generation %}` markers that Llama 3.1's template lacks). A turn
  with `weight: 0` stays context.
- **Literal text.** A message that mentions `<|eot_id|>` holds those characters, not Llama's end-of-turn token:
  special tokens come only from the template. Rendering escapes them in the data, then tokenizes the text between
  the template's own special tokens with special-token matching off. Rows with no special-token text in their
  data take the usual batched path, which gives the same ids (the tokenizer splits on special tokens first).
- **Reasoning.** An assistant turn's reasoning is written before its answer as `<think>\\n...\\n</think>\\n\\n`
  (`--reasoning train`, the default, as R1 distillations train it), kept there but out of the loss (`context`),
  or left out (`drop`).
- **Nothing dropped unseen.** Every message's text must appear in the rendering: a template that drops or
  rewrites a turn (a tool result it has no role for) is reported with the row, not trained on something else.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llama_lora.data.formats import Example, Message
from llama_lora.errors import DataError

IGNORE_INDEX = -100  # label value that transformers' loss skips
REASONING_MODES = ("train", "context", "drop")
TEMPLATE_KEYS = ("role", "content", "tool_calls", "name", "tool_call_id")  # what a message tells the template
OPENING_MARKER = "llama-lora-opening-turn"
PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")  # private-use characters: no template or data writes them


def think_block(reasoning: str) -> str:
    """How reasoning is written before the answer."""
    return f"<think>\n{reasoning}\n</think>"


@dataclass
class Rendered:
    """A conversation as text, with the character spans the loss sees and those that hold reasoning."""

    text: str
    trained: list[tuple[int, int]]
    reasoning: list[tuple[int, int]]
    weighted_out: int  # assistant turns the data marks `weight: 0`
    messages: list[Message]  # as the template got them
    tools: list[dict[str, Any]] | None


def template_messages(messages: list[Message], reasoning: str) -> list[Message]:
    """The messages as the template gets them: only the keys templates know, reasoning written before the answer
    (or left out with --reasoning drop)."""
    shown = []
    for message in messages:
        out = {key: message[key] for key in TEMPLATE_KEYS if key in message}
        if message.get("reasoning") and reasoning != "drop":
            out["content"] = f"{think_block(message['reasoning'])}\n\n{message['content']}"
        shown.append(out)
    return shown


def render(tokenizer: Any, example: Example, loss_on: str, reasoning: str) -> Rendered:
    """Render one conversation and find its trained and reasoning spans; a DataError names the row."""
    messages = template_messages(example.messages, reasoning)
    try:
        text, spans = assistant_char_spans(tokenizer, messages, example.tools)
        check_rendered(text, messages)
    except DataError as err:
        raise DataError(f"{example.where}: {err}") from err
    except Exception as err:  # templates are foreign code (jinja2 errors, raise_exception, ...)
        raise DataError(f"{example.where}: the chat template cannot render this conversation: "
                        f"{type(err).__name__}: {err}") from err
    answers = [m for m in example.messages if m["role"] == "assistant"]
    turns = list(zip(spans, answers))
    trained, thinking = [], []
    for (start, end), message in turns[-1:] if loss_on == "last-assistant" else turns:
        block = think_block(message["reasoning"]) if message.get("reasoning") and reasoning != "drop" else None
        at = text.find(block, start, end) if block else -1
        if at >= 0:
            thinking.append((at, at + len(block)))
        if message.get("weight") == 0:
            continue
        if at >= 0 and reasoning == "context":  # the answer alone is trained, from its first character
            start = at + len(block)
            while start < end and text[start].isspace():
                start += 1
        trained.append((start, end))
    return Rendered(text, trained, thinking, sum(m.get("weight") == 0 for m in answers), messages, example.tools)


def check_rendered(text: str, messages: list[Message]) -> None:
    """Every message's text appears in the rendering (a tool call's is the call the template writes)."""
    for i, message in enumerate(messages):
        content = message.get("content", "").strip()
        if content and not message.get("tool_calls") and content not in text:
            raise DataError(f"the chat template does not render messages[{i}] ({message['role']}) as given: it drops "
                            "or rewrites that turn, so training would not see what the data holds")


def assistant_char_spans(tokenizer: Any, messages: list[dict[str, Any]],
                         tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return (text, [start, end) character spans of each assistant turn).

    A span runs from the end of the assistant header (the generation prompt) to the end of the turn as the
    template renders it, so it covers the content (or tool call) and the end-of-turn token, minus trailing
    whitespace. Tool results, like user turns, lie outside every span.
    """
    def rendered(turns: list[dict[str, Any]], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tools=tools, tokenize=False, add_generation_prompt=prompt)

    text = rendered(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = rendered(messages[:i], prompt=True) if i else _opening_prompt(rendered, message)
        through = text if i == len(messages) - 1 else rendered(messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError("the chat template does not render conversations prefix by prefix; "
                            "cannot locate assistant turns to mask")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _opening_prompt(rendered: Any, message: dict[str, Any]) -> str:
    """What a template renders ahead of an assistant turn that opens the conversation (there is no shorter prefix
    to render: templates refuse empty conversations), found by rendering that turn with a marker for its text."""
    text = rendered([{**message, "content": OPENING_MARKER}])
    if OPENING_MARKER not in text:
        raise DataError("the chat template does not render an assistant turn that opens the conversation "
                        "as text; start the conversation with a user turn")
    return text[: text.index(OPENING_MARKER)]


def special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex matching any of the tokenizer's special-token strings (longest first), or None if it has none."""
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in specials)) if specials else None


def holds_special_text(rendered: Rendered, pattern: re.Pattern[str] | None) -> bool:
    """True when the data (any message, call or tool definition) spells out a special token."""
    return pattern is not None and bool(pattern.search(json.dumps([rendered.messages, rendered.tools],
                                                                  ensure_ascii=False)))


@contextmanager
def specials_as_text(tokenizer: Any) -> Iterator[Any]:
    """The Rust tokenizer with special-token matching off: `<|eot_id|>` in the input is tokenized as text."""
    backend = tokenizer.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        yield backend
    finally:
        backend.encode_special_tokens = before


def encode_literal(tokenizer: Any, rendered: Rendered, pattern: re.Pattern[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a rendering whose data spells out special tokens: only the template's
    own special tokens become special ids; the data's are tokenized as the text they are."""
    originals: list[str] = []

    def escape(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(lambda m: originals.append(m.group(0)) or f"\ue000{len(originals) - 1}\ue001", value)
        if isinstance(value, list):
            return [escape(item) for item in value]
        if isinstance(value, dict):
            return {key: escape(item) for key, item in value.items()}
        return value

    escaped = tokenizer.apply_chat_template(escape(rendered.messages), tools=escape(rendered.tools), tokenize=False)
    pieces = pattern.split(escaped)  # text, special, text, ...: every special left is the template's own
    specials = pattern.findall(escaped)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    text = ""
    with specials_as_text(tokenizer) as backend:
        for i, piece in enumerate(pieces):
            literal = PLACEHOLDER.sub(lambda m: originals[int(m.group(1))], piece)
            if literal:
                encoding = backend.encode(literal, add_special_tokens=False)
                ids += encoding.ids
                offsets += [(len(text) + start, len(text) + end) for start, end in encoding.offsets]
                text += literal
            if i < len(specials):
                ids.append(tokenizer.convert_tokens_to_ids(specials[i]))
                offsets.append((len(text), len(text) + len(specials[i])))
                text += specials[i]
    if text != rendered.text:
        raise DataError("the chat template rewrites message text that spells out special tokens, so it cannot be "
                        "kept as text")
    return ids, offsets


def label_tokens(token_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """The token id where a token overlaps a trained span, IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(token_ids)
    for first, stop in token_ranges(offsets, spans):
        labels[first:stop] = token_ids[first:stop]
    return labels


def token_ranges(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, stop) token indices of the tokens overlapping each character span."""
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    # Token offsets grow monotonically, so the tokens overlapping a span are one contiguous slice.
    return [(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)) for start, end in spans]


def count_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> int:
    """How many tokens overlap the spans."""
    return sum(max(0, stop - first) for first, stop in token_ranges(offsets, spans))
