"""Files and conversations as users bring them: byte-order marks, other encodings, content parts, odd turn orders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers import dialogue

from llama_lora.data.chat_template import ensure_chat_template
from llama_lora.data.formats import DEFAULT_ROLE_MAP, to_examples
from llama_lora.data.prepare import IGNORE_INDEX, tokenize_examples
from llama_lora.data.sources import Rows, read_file
from llama_lora.errors import DataError

ROW = dialogue("Why does ice float?", "It is less dense than water.")


@pytest.mark.parametrize("name, content", [
    ("d.jsonl", json.dumps(ROW) + "\n"),
    ("d.json", json.dumps([ROW])),
    ("d.csv", "instruction,output\nWhy does ice float?,It is less dense than water.\n"),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, name: str, content: str):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    record = read_file(path).records[0]
    assert "messages" in record or "instruction" in record  # the first field's name carries no BOM


@pytest.mark.parametrize("name, content, where", [
    ("d.jsonl", json.dumps(ROW).encode() + b"\n" + '{"text": "caf\xe9"}\n'.encode("latin-1"), "d.jsonl:2"),
    ("d.json", b'[\n{"text": "ok"},\n{"text": "caf\xe9"}]', "d.json:3"),
    ("d.csv", b"text\nok\ncaf\xe9\n", "d.csv:3"),
])
def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path, name: str, content: bytes, where: str):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{where}: not UTF-8 text \\(byte 0xe9"):
        read_file(tmp_path / name)


def messages(*turns: dict, **fields) -> list:
    rows = Rows([{"messages": list(turns), **fields}], ["d.jsonl:1"], "d.jsonl")
    return to_examples(rows, "messages", DEFAULT_ROLE_MAP)[0].messages


def test_text_content_parts_are_joined_with_a_newline():
    turns = messages({"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "text", "text": "2+2?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "4"}]})
    assert turns == [{"role": "user", "content": "Look:\n2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("part, message", [
    ({"type": "image_url", "image_url": {"url": "x.png"}},
     r"d.jsonl:1: field 'messages\[0\].content\[1\]': expected a text part .* got a 'image_url' part"),
    ({"type": "input_audio"}, r"field 'messages\[0\].content\[1\]': .* got a 'input_audio' part"),
    ("plain string", r"field 'messages\[0\].content\[1\]': expected a text part"),
    ({"type": "text", "text": 5}, r"field 'messages\[0\].content\[1\].text': expected a non-empty string"),
])
def test_other_content_parts_are_refused_naming_file_line_and_field(part, message: str):
    with pytest.raises(DataError, match=message):
        messages({"role": "user", "content": [{"type": "text", "text": "see"}, part]},
                 {"role": "assistant", "content": "ok"})


def test_turns_after_the_last_answer_are_dropped():
    turns = messages({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                     {"role": "user", "content": "unanswered"})
    assert [t["content"] for t in turns] == ["q", "a"]


@pytest.fixture(scope="module")
def llama31(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    ensure_chat_template(tokenizer)
    return tokenizer


@pytest.mark.parametrize("tokenizer_name", ["llama31", "smollm2_tokenizer"])
def test_an_opening_assistant_turn_trains_and_a_trailing_user_turn_is_dropped(request, tokenizer_name: str):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rows = Rows([{"messages": [{"role": "assistant", "content": "Hello, ask me anything."},
                               {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                               {"role": "user", "content": "thanks"}]}], ["d.jsonl:1"], "d.jsonl")
    row = tokenize_examples(tokenizer, to_examples(rows, "messages", DEFAULT_ROLE_MAP), "assistant")[0]
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])
    end = "<|eot_id|>" if tokenizer_name == "llama31" else "<|im_end|>"
    assert trained == f"Hello, ask me anything.{end}4{end}"
    assert "thanks" not in tokenizer.decode(row["input_ids"])


def test_two_user_turns_in_a_row_stay_two_turns_of_context(llama31):
    rows = Rows([{"messages": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4"}]}], ["d.jsonl:1"], "d.jsonl")
    row = tokenize_examples(llama31, to_examples(rows, "messages", DEFAULT_ROLE_MAP), "assistant")[0]
    text = llama31.decode(row["input_ids"])
    assert text.count("<|start_header_id|>user<|end_header_id|>") == 2
    assert llama31.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]) \
        == "4<|eot_id|>"


def test_a_template_that_refuses_a_conversation_names_the_row(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}"
                               "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                               "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    rows = Rows([{"messages": [{"role": "assistant", "content": "Hello"}]}], ["d.jsonl:7"], "d.jsonl")
    with pytest.raises(DataError, match="d.jsonl:7: the chat template cannot render this conversation: "
                                        "TemplateError: roles must alternate user/assistant"):
        tokenize_examples(tokenizer, to_examples(rows, "messages", DEFAULT_ROLE_MAP), "assistant")
