"""Text in the data stays text: a message that spells out a special token (`<|eot_id|>`, `<|im_end|>`, ...) is
tokenized as those characters, never as the control token, in every role and format; only the chat template's own
markup becomes special ids. Checked with every special token of the real Llama 3.1 tokenizer and of SmolLM2's."""

from __future__ import annotations

import copy

import pytest

from llama_lora.data.chat_template import ensure_chat_template
from llama_lora.data.formats import Example
from llama_lora.data.prepare import IGNORE_INDEX, tokenize_examples
from llama_lora.data.render import encode_literal, render, special_pattern


@pytest.fixture(scope="module")
def llama31(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    ensure_chat_template(tokenizer)
    return tokenizer


def specials(tokenizer) -> list[str]:
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


def conversation(text: str, tool_calls: bool) -> Example:
    """System, user, tool and assistant turns (and a tool call's arguments) all holding `text`."""
    call = [{"type": "function", "function": {"name": "lookup", "arguments": {"query": f"Q {text}"}}}]
    messages = [{"role": "system", "content": f"S {text}"}, {"role": "user", "content": f"U {text}"},
                *([{"role": "assistant", "content": "", "tool_calls": call}] if tool_calls else
                  [{"role": "assistant", "content": "Looking it up."}]),
                {"role": "tool", "content": f"T {text}"}, {"role": "assistant", "content": f"A {text}"}]
    return Example("d.jsonl:1", messages=messages)


def special_ids(tokenizer, ids: list[int]) -> list[int]:
    allowed = set(tokenizer.convert_tokens_to_ids(specials(tokenizer)))
    return [i for i in ids if i in allowed]


@pytest.mark.parametrize("name, tool_calls", [("llama31", True), ("smollm2_tokenizer", False)])
def test_every_special_token_inside_every_role_is_text_and_only_the_templates_markup_is_special(
        request, name: str, tool_calls: bool):
    tokenizer = request.getfixturevalue(name)
    every = " ".join(specials(tokenizer))
    assert len(specials(tokenizer)) == (256 if name == "llama31" else 17)
    row = tokenize_examples(tokenizer, [conversation(every, tool_calls)], "assistant")[0]
    plain = tokenize_examples(tokenizer, [conversation("plain words", tool_calls)], "assistant")[0]
    # the same control tokens as a conversation without any: the template's own, nothing from the data
    assert special_ids(tokenizer, row["input_ids"]) == special_ids(tokenizer, plain["input_ids"])
    text = tokenizer.decode(row["input_ids"])
    for prefix in ("S", "U", "T", "A"):
        assert f"{prefix} {every}" in text
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    end = "<|eot_id|>" if name == "llama31" else "<|im_end|>"
    assert tokenizer.decode(trained).endswith(f"A {every}{end}")
    assert special_ids(tokenizer, trained)[-1:] == tokenizer.convert_tokens_to_ids([end])


def test_a_message_mentioning_eot_id_gets_exactly_the_templates_end_of_turn_tokens(llama31):
    example = Example("d.jsonl:1", messages=[{"role": "user", "content": "What does <|eot_id|> do?"},
                                             {"role": "assistant", "content": "<|eot_id|> ends a turn."}])
    row = tokenize_examples(llama31, [example], "assistant")[0]
    eot = llama31.convert_tokens_to_ids("<|eot_id|>")
    assert row["input_ids"].count(eot) == 3  # system, user, assistant: the template's three
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert trained[0] != eot and trained.count(eot) == 1  # the first trained token is the text "<", not a stop
    assert llama31.decode(trained) == "<|eot_id|> ends a turn.<|eot_id|>"


@pytest.mark.parametrize("name", ["llama31", "smollm2_tokenizer"])
def test_the_literal_path_gives_the_batched_paths_ids_and_offsets_for_ordinary_text(request, name: str):
    tokenizer = request.getfixturevalue(name)
    example = conversation("ordinary words, numbers 12 345 and  spaces\n\nnew lines", tool_calls=name == "llama31")
    rendered = render(tokenizer, example, "assistant", "train")
    encoding = tokenizer.backend_tokenizer.encode(rendered.text, add_special_tokens=False)
    assert encode_literal(tokenizer, rendered, special_pattern(tokenizer)) == (encoding.ids, encoding.offsets)


@pytest.mark.parametrize("name", ["llama31", "smollm2_tokenizer"])
def test_plain_text_rows_keep_special_token_text_as_text(request, name: str):
    tokenizer = request.getfixturevalue(name)
    text = "A document about chat markup: " + " ".join(specials(tokenizer))
    row = tokenize_examples(tokenizer, [Example("d.jsonl:1", text=text)], "all")[0]
    bos = [tokenizer.bos_token_id] if name == "llama31" else []
    assert special_ids(tokenizer, row["input_ids"]) == [*bos, tokenizer.eos_token_id]
    assert tokenizer.decode(row["input_ids"]) == f"{tokenizer.bos_token if bos else ''}{text}{tokenizer.eos_token}"
