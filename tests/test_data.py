"""Dialogue data: bad rows are reported by file and line, and only teacher turns (with their
end-of-turn token) count in the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_lora.data import (IGNORE_INDEX, DataError, data_hash, load_splits, read_dialogues, summarize,
                             tokenize_conversation)

from conftest import dialogue, write_jsonl

CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "1. Take 2.\n2. Add 2 to get 4.\nQuick check: What is 2 + 3?"},
    {"role": "user", "content": "5"},
    {"role": "assistant", "content": "Right, 5.\nQuick check: What is 3 + 3?"},
]


def supervised_runs(tokenizer, row: dict) -> list[str]:
    """Decode each contiguous run of tokens that carry a label."""
    runs, current = [], []
    for token_id, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_every_assistant_turn_is_supervised_with_its_end_of_turn_token(smollm2_tokenizer):
    row = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=2048)
    assert supervised_runs(smollm2_tokenizer, row) == [
        CONVERSATION[1]["content"] + "<|im_end|>",
        CONVERSATION[3]["content"] + "<|im_end|>",
    ]


def test_system_prompt_user_turns_and_headers_are_masked(smollm2_tokenizer):
    row = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=2048)
    masked = smollm2_tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l == IGNORE_INDEX])
    assert "What is 2 + 2?" in masked and "You are a helpful AI assistant" in masked
    assert masked.count("<|im_start|>assistant") == 2
    assert "Take 2" not in masked


def test_token_ids_are_the_chat_template_rendering(smollm2_tokenizer):
    row = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=2048)
    expected = smollm2_tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert row["input_ids"] == expected


def test_overlong_rows_are_truncated_and_the_lost_supervision_counted(smollm2_tokenizer):
    full = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=2048)
    cut = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=40)
    assert len(cut["input_ids"]) == 40 and cut["truncated"] and not full["truncated"]
    lost = sum(l != IGNORE_INDEX for l in full["labels"]) - sum(l != IGNORE_INDEX for l in cut["labels"])
    assert cut["lost_supervised_tokens"] == lost > 0
    assert summarize([cut])["truncated_rows"] == 1


def test_data_hash_changes_with_labels_not_only_tokens(smollm2_tokenizer):
    row = tokenize_conversation(smollm2_tokenizer, CONVERSATION, max_length=2048)
    relabelled = {**row, "labels": list(row["input_ids"])}
    assert data_hash([row]) == data_hash([dict(row)])
    assert data_hash([row]) != data_hash([relabelled])


def test_teacher_and_student_roles_map_to_assistant_and_user(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [dialogue("q?", "a.")])
    assert read_dialogues(path) == [[{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]]


@pytest.mark.parametrize("line, message", [
    ('{"messages": [', r"d.jsonl:2: malformed JSON"),
    ('{"conversation": []}', r"d.jsonl:2: field 'messages': expected a list"),
    ('{"messages": [{"role": "pupil", "content": "hi"}]}', r"d.jsonl:2: field 'messages\[0\].role': unknown role 'pupil'"),
    ('{"messages": [{"role": "student", "content": 3}]}', r"d.jsonl:2: field 'messages\[0\].content': expected a non-empty string"),
    ('{"messages": [{"role": "student", "content": "hi"}]}', r"d.jsonl:2: field 'messages': no assistant/teacher turn"),
])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, line: str, message: str):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(dialogue("ok?", "ok.")) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_dialogues(path)


def test_empty_file_is_an_error(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="d.jsonl: empty file"):
        read_dialogues(path)


def test_folder_with_eval_file_uses_it_as_the_eval_split(tiny_dataset: Path):
    splits = load_splits(str(tiny_dataset), eval_fraction=0.5, seed=0)
    assert (len(splits.train), len(splits.eval)) == (16, 4)
    assert splits.eval_source.endswith("eval.jsonl")


def test_single_file_holds_out_a_seeded_eval_fraction(tiny_dataset: Path):
    a = load_splits(str(tiny_dataset / "train.jsonl"), eval_fraction=0.25, seed=1)
    b = load_splits(str(tiny_dataset / "train.jsonl"), eval_fraction=0.25, seed=1)
    assert (len(a.train), len(a.eval)) == (12, 4)
    assert a == b
    assert not any(conv in a.train for conv in a.eval)
