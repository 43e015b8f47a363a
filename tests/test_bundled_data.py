"""The bundled teacher-student dataset: big enough, well-formed, a fixed held-out split, one learnable style."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from llama_lora.data.prepare import load_examples
from llama_lora.options.config import TrainConfig

FOLDER = REPO / "data" / "teacher_student"


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (FOLDER / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "eval")}


def test_at_least_300_dialogues_over_several_subjects(rows):
    everything = rows["train"] + rows["eval"]
    assert len(everything) >= 300
    assert len({row["subject"] for row in everything}) >= 10


def test_every_file_parses_with_the_projects_own_reader():
    examples = load_examples(TrainConfig(dataset=str(FOLDER)))[1]
    assert (len(examples["train"]), len(examples["eval"])) == (301, 34)


def test_eval_split_is_fixed_disjoint_and_covers_every_subject(rows):
    first_turns = lambda split: {row["messages"][0]["content"] for row in rows[split]}  # noqa: E731
    assert not first_turns("train") & first_turns("eval")
    assert {row["subject"] for row in rows["eval"]} == {row["subject"] for row in rows["train"]}
    examples = load_examples(TrainConfig(dataset=str(FOLDER), eval_fraction=0.5, seed=123))[1]
    assert (len(examples["train"]), len(examples["eval"])) == (301, 34)  # the fixed split wins over a fraction


def test_dialogues_alternate_student_teacher_with_one_to_four_exchanges(rows):
    for row in rows["train"] + rows["eval"]:
        roles = [m["role"] for m in row["messages"]]
        exchanges = len(roles) // 2
        assert 1 <= exchanges <= 4 and roles == ["student", "teacher"] * exchanges, row["id"]


def test_every_teacher_turn_explains_in_steps_and_ends_with_a_check_question(rows):
    for row in rows["train"] + rows["eval"]:
        for turn in row["messages"][1::2]:
            lines = turn["content"].split("\n")
            assert lines[1].startswith("1. "), row["id"]
            assert lines[-1].startswith("Quick check: ") and lines[-1].endswith("?"), row["id"]
