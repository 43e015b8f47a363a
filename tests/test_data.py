"""From a dataset to token ids and labels: splits, the over-length policy, plain text, parallel workers
and the data hash."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers import dialogue, write_jsonl

from llama_lora.data.formats import Example
from llama_lora.data.prepare import (
    DROP_OVERLENGTH,
    DROP_UNSUPERVISED,
    IGNORE_INDEX,
    _hold_out,
    apply_length_policy,
    data_hash,
    prepare,
    tokenize_examples,
)
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig


def cfg(dataset: Path | str, **overrides) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), model="smollm2", **overrides)


def test_folder_with_eval_file_uses_it_as_the_eval_split(tiny_dataset: Path, smollm2_tokenizer):
    prepared = prepare(cfg(tiny_dataset, eval_fraction=0.5), smollm2_tokenizer)
    assert (len(prepared.train.rows), len(prepared.eval.rows)) == (16, 4)
    assert prepared.eval.source.endswith("eval.jsonl")


def test_single_file_holds_out_a_seeded_eval_fraction(tiny_dataset: Path, smollm2_tokenizer):
    a = prepare(cfg(tiny_dataset / "train.jsonl", eval_fraction=0.25, seed=1), smollm2_tokenizer)
    b = prepare(cfg(tiny_dataset / "train.jsonl", eval_fraction=0.25, seed=1), smollm2_tokenizer)
    assert (len(a.train.rows), len(a.eval.rows)) == (12, 4)
    assert data_hash(a.eval.rows) == data_hash(b.eval.rows)
    assert not {r["where"] for r in a.train.rows} & {r["where"] for r in a.eval.rows}


def test_eval_dataset_option_names_a_separate_source(tiny_dataset: Path, tmp_path: Path, smollm2_tokenizer):
    other = write_jsonl(tmp_path / "other.jsonl", [dialogue("q?", "a.")] * 3)
    prepared = prepare(cfg(tiny_dataset, eval_dataset=str(other)), smollm2_tokenizer)
    assert len(prepared.eval.rows) == 3 and prepared.eval.source == str(other)


def long_and_short(tmp_path: Path) -> Path:
    rows = [dialogue("Short?", "Yes."), dialogue("Long? " * 10, "word " * 60)]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def test_overlength_drop_removes_the_row_and_says_which(tmp_path: Path, smollm2_tokenizer):
    prepared = prepare(cfg(long_and_short(tmp_path), max_seq_length=64, eval_fraction=0), smollm2_tokenizer)
    assert len(prepared.train.rows) == 1
    assert prepared.train.dropped == {DROP_OVERLENGTH: [f"{tmp_path / 'd.jsonl'}:2"]}
    assert prepared.train.over_length[0]["tokens"] > 64


def test_overlength_truncate_keeps_the_row_cut_to_the_limit(tmp_path: Path, smollm2_tokenizer):
    prepared = prepare(cfg(long_and_short(tmp_path), max_seq_length=64, overlength="truncate", eval_fraction=0),
                       smollm2_tokenizer)
    long_row = prepared.train.rows[1]
    assert len(long_row["input_ids"]) == len(long_row["labels"]) == 64 < long_row["length"]
    assert prepared.train.over_length[0]["lost_supervised"] > 0 and prepared.train.dropped == {}


def test_overlength_error_names_the_row_and_its_length(tmp_path: Path, smollm2_tokenizer):
    with pytest.raises(DataError, match=r"d.jsonl:2: \d+ tokens, over --max-seq-length 64"):
        prepare(cfg(long_and_short(tmp_path), max_seq_length=64, overlength="error"), smollm2_tokenizer)


def test_rows_whose_answer_is_cut_away_are_dropped_as_unsupervised():
    row = {"where": "d.jsonl:1", "input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4]}
    split = apply_length_policy([row], max_length=2, policy="truncate", source="d.jsonl")
    assert split.rows == [] and split.dropped == {DROP_UNSUPERVISED: ["d.jsonl:1"]}


def test_no_row_left_is_an_error_that_suggests_a_fix(tmp_path: Path, smollm2_tokenizer):
    with pytest.raises(DataError, match="no training row left .* Raise --max-seq-length"):
        prepare(cfg(long_and_short(tmp_path), max_seq_length=8), smollm2_tokenizer)


def test_plain_text_trains_on_every_token_and_ends_with_eos(tmp_path: Path, llama3_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "The cat sat."}])
    row = prepare(cfg(path, eval_fraction=0), llama3_tokenizer).train.rows[0]
    assert row["input_ids"][0] == llama3_tokenizer.bos_token_id
    assert row["input_ids"][-1] == llama3_tokenizer.eos_token_id
    assert row["labels"] == row["input_ids"]


def test_conversations_need_a_chat_template(tmp_path: Path, smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="no chat template and is not a Llama 3 tokenizer"):
        prepare(cfg(write_jsonl(tmp_path / "d.jsonl", [dialogue("q?", "a.")])), tokenizer)


def test_worker_processes_give_the_same_rows_as_one_process(smollm2_tokenizer):
    examples = [Example(f"r{i}", messages=[{"role": "user", "content": f"What is {i} + {i}?"},
                                           {"role": "assistant", "content": f"{2 * i}."}]) for i in range(2500)]
    one = tokenize_examples(smollm2_tokenizer, examples, "assistant", workers=1)
    two = tokenize_examples(smollm2_tokenizer, examples, "assistant", workers=2)
    assert one == two and len(one) == 2500


def test_data_hash_changes_with_labels_not_only_tokens():
    row = {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}
    assert data_hash([row]) == data_hash([dict(row)])
    assert data_hash([row]) != data_hash([{**row, "labels": [1, 2, 3]}])


def test_every_bundled_row_survives_the_default_policy(smollm2_tokenizer):
    prepared = prepare(TrainConfig(model="smollm2"), smollm2_tokenizer)
    assert (len(prepared.train.rows), len(prepared.eval.rows)) == (301, 34)
    assert prepared.format == "messages" and prepared.train.dropped == {}
    assert json.loads(json.dumps(prepared.train.rows[0]["labels"]))  # plain ints, JSON-able


def test_worker_processes_skip_the_same_bad_rows_as_one_process(smollm2_tokenizer):
    examples = [Example(f"r{i}", messages=[{"role": "user", "content": f"What is {i} + {i}?"},
                                           {"role": "assistant", "content": "\ud800" if i == 1500 else f"{2 * i}."}])
                for i in range(2500)]
    runs = []
    for workers in (1, 2):
        skipped: list[str] = []
        rows = tokenize_examples(smollm2_tokenizer, examples, "assistant", workers, bad_rows="skip", skipped=skipped)
        runs.append((rows, skipped))
    assert runs[0] == runs[1] and len(runs[0][0]) == 2499
    assert len(runs[0][1]) == 1 and runs[0][1][0].startswith("r1500: not valid Unicode text: unpaired surrogate")


def test_held_out_rows_of_one_group_stay_together():
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    kept, held = _hold_out(len(groups), 0.5, seed=3, groups=groups)
    assert sorted(kept + held) == list(range(7))
    assert not {groups[i] for i in kept} & {groups[i] for i in held} and len({groups[i] for i in held}) == 2
    assert _hold_out(10, 0.3, seed=1) == _hold_out(10, 0.3, seed=1, groups=list(range(10)))
