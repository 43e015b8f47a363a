"""The pure parts of samples.md: prompt/reference split of a tokenized row, style checks, label scoring."""

from __future__ import annotations

from llama_lora.data.prepare import IGNORE_INDEX
from llama_lora.train.samples import classification_scores, held_out, normalise_label, style_shares
from llama_lora.use.inference import Answer


def test_labels_are_read_from_answers_ignoring_case_quotes_and_punctuation():
    labels = ["negative", "neutral", "positive"]
    assert normalise_label(" Positive.", labels) == "positive"
    assert normalise_label('"neutral"', labels) == "neutral"
    assert normalise_label("negative, because it is dull", labels) == "negative"
    assert normalise_label("I think so", labels) is None


def test_accuracy_and_macro_f1_match_a_hand_computed_case():
    gold = ["a", "a", "b", "b"]
    predicted = ["a", "b", "b", None]  # one right per class for a; b: 1 tp, 1 fp (from a), 1 fn (unparsed)
    scores = classification_scores(predicted, gold, ["a", "b"])
    # F1(a) = 2*1 / (2*1 + 0 + 1) = 2/3; F1(b) = 2*1 / (2*1 + 1 + 1) = 1/2; macro = 7/12
    assert scores == {"accuracy": 0.5, "macro_f1": round(7 / 12, 4), "unparsed": 1}


def test_style_check_counts_quick_check_endings_numbered_steps_and_turn_ends():
    teacher = Answer("Idea.\n1. One.\n2. Two.\nQuick check: Why?", 12, True)
    rambling = Answer("It is because of many things and", 256, False)
    assert style_shares([teacher, rambling]) == {"quick_check": 0.5, "numbered_steps": 0.5, "stopped": 0.5}


class _Decoder:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_prompt_is_the_row_before_its_first_trained_token_and_reference_the_trained_span():
    rows = [{"where": f"r{i}", "input_ids": [1, 2, 3, 40 + i, 41, 99, 7],
             "labels": [IGNORE_INDEX] * 3 + [40 + i, 41, 99, IGNORE_INDEX]} for i in range(6)]
    picked = held_out(rows, 3, _Decoder(), stops=[99])
    assert [item.where for item in picked] == ["r0", "r2", "r4"]  # spread evenly over the split
    assert picked[0].prompt_ids == [1, 2, 3]
    assert picked[0].reference == Answer("40 41", 2, True)
    assert held_out(rows, 0, _Decoder(), stops=[99]) == []
