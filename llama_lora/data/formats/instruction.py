"""Rows that are not yet conversations: instruction/response pairs (Alpaca), prompt/completion pairs, labelled
texts for classification, and plain text (which may hold a whole conversation in a chat markup)."""

from __future__ import annotations

from typing import Any

from llama_lora.data.formats import markup
from llama_lora.data.formats.conversation import read_turns, row_tools
from llama_lora.data.formats.fields import Example, Reading, row_system, string
from llama_lora.errors import DataError

CLASSIFICATION_PROMPT = "Classify the text. Answer with exactly one of: {labels}.\n\nText: {text}"


def alpaca_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """user: the instruction (a blank line, then the input, if any); assistant: the output."""
    instruction = string(record, where, "instruction")
    extra = string(record, where, "input", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Example(where, messages=row_system(record, where, [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": string(record, where, "output")},
    ]))


def prompt_completion_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """user: the prompt; assistant: the completion (strings, or TRL's lists of messages)."""
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        messages = (read_turns(prompt, where, "prompt", "role", "content", reading)
                    + read_turns(completion, where, "completion", "role", "content", reading))
        return Example(where, messages=row_system(record, where, messages), tools=row_tools(record, where))
    return Example(where, messages=row_system(record, where, [
        {"role": "user", "content": string(record, where, "prompt")},
        {"role": "assistant", "content": string(record, where, "completion")},
    ]))


def label(record: Any, where: str) -> str:
    """A classification row's label as text."""
    value = record.get("label") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        got = "missing" if not isinstance(record, dict) or "label" not in record else f"got {value!r:.40}"
        raise DataError(f"{where}: field 'label': expected a non-empty string or an integer ({got})")
    return str(value).strip()


def classification_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """user: the label set and the text; assistant: the label."""
    labels = reading.labels or []
    answer = label(record, where)
    if answer not in labels:
        raise DataError(f"{where}: field 'label': {answer!r} is not among the training labels ({', '.join(labels)})")
    prompt = CLASSIFICATION_PROMPT.format(labels=", ".join(labels), text=string(record, where, "text"))
    return Example(where, messages=row_system(record, where, [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": answer},
    ]))


def text_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """Plain text, loss on every token. A text that holds a conversation in a chat markup is refused unless
    --format text was asked for: trained as text, its user turns would be learned too."""
    text = string(record, where, "text")
    found = markup.find(text)
    if found and not reading.format_given:
        raise DataError(f"{where}: field 'text' holds a conversation in {found} markup; --format chat-text trains "
                        "it as that conversation (loss on the assistant turns), --format text as plain text on purpose")
    return Example(where, text=text)


def chat_text_row(record: dict[str, Any], where: str, reading: Reading) -> Example:
    """A conversation written out in a chat markup inside `text` (ChatML, Llama 3 headers, ### Human:/###
    Assistant:), parsed back into its turns."""
    text = string(record, where, "text")
    turns = markup.parse(text, where)
    return Example(where, messages=read_turns(turns, where, "text", "role", "content", reading))


def has_markup(record: dict[str, Any]) -> bool:
    """True when a row's `text` is written in a chat markup (detection of chat-text)."""
    return isinstance(record.get("text"), str) and markup.find(record["text"]) is not None
