"""Llama 3.1's chat template, supplied when a tokenizer has none, and the loss mask token by token."""

from __future__ import annotations

import copy

import pytest

from llama_lora.data.chat_template import LLAMA31_CHAT_TEMPLATE, ensure_chat_template
from llama_lora.data.formats import Example
from llama_lora.data.prepare import IGNORE_INDEX, tokenize_examples

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
X = IGNORE_INDEX

# Checked by hand against Meta's Llama 3.1 prompt format, decoding each id with the real tokenizer.
LLAMA31_IDS = [
    128000,                                   # <|begin_of_text|>
    128006, 9125, 128007, 271,                # <|start_header_id|>system<|end_header_id|>\n\n
    38766, 1303, 33025, 2696, 25, 6790, 220, 2366, 18, 198,  # Cutting Knowledge Date: December 2023\n
    15724, 2696, 25, 220, 1627, 10263, 220, 2366, 19, 271,   # Today Date: 26 Jul 2024\n\n
    3513, 10015, 13, 128009,                  # Be brief.<|eot_id|>
    128006, 882, 128007, 271,                 # <|start_header_id|>user<|end_header_id|>\n\n
    13347, 1070, 128009,                      # Hi there<|eot_id|>
    128006, 78191, 128007, 271,               # <|start_header_id|>assistant<|end_header_id|>\n\n
    9906, 0, 128009,                          # Hello!<|eot_id|>
    128006, 882, 128007, 271,                 # <|start_header_id|>user<|end_header_id|>\n\n
    17, 10, 17, 30, 128009,                   # 2+2?<|eot_id|>
    128006, 78191, 128007, 271,               # <|start_header_id|>assistant<|end_header_id|>\n\n
    19, 128009,                               # 4<|eot_id|>
]
LLAMA31_LABELS = [X] * 40 + [9906, 0, 128009] + [X] * 13 + [19, 128009]

# SmolLM2's own ChatML template: <|im_start|>=1, <|im_end|>=2, "\n"=198; "assistant" is two tokens.
SMOLLM2_IDS = [1, 9690, 198, 6077, 5453, 30, 2, 198,   # <|im_start|>system\nBe brief.<|im_end|>\n
               1, 4093, 198, 26843, 665, 2, 198,        # <|im_start|>user\nHi there<|im_end|>\n
               1, 520, 9531, 198, 19556, 17, 2, 198,    # <|im_start|>assistant\nHello!<|im_end|>\n
               1, 4093, 198, 34, 27, 34, 47, 2, 198,    # <|im_start|>user\n2+2?<|im_end|>\n
               1, 520, 9531, 198, 36, 2, 198]           # <|im_start|>assistant\n4<|im_end|>\n
SMOLLM2_LABELS = [X] * 19 + [19556, 17, 2] + [X] * 14 + [36, 2, X]


@pytest.fixture(scope="module")
def llama31(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    assert ensure_chat_template(tokenizer).startswith("Llama 3.1")
    return tokenizer


def tokenize(tokenizer, loss_on: str = "assistant") -> dict:
    return tokenize_examples(tokenizer, [Example("test", messages=CONVERSATION)], loss_on, workers=1)[0]


def test_the_llama3_tokenizer_ships_without_a_template(llama3_tokenizer):
    assert not llama3_tokenizer.chat_template


def test_llama31_template_renders_the_hand_checked_token_ids(llama31):
    assert tokenize(llama31)["input_ids"] == LLAMA31_IDS


def test_llama31_template_matches_meta_layout_as_text(llama31):
    text = llama31.apply_chat_template(CONVERSATION[1:3], tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    )


def test_generation_prompt_opens_an_assistant_turn(llama31):
    prompt = llama31.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("Hi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_mask_trains_every_assistant_turn_and_its_eot(llama31):
    assert tokenize(llama31)["labels"] == LLAMA31_LABELS


def test_chatml_mask_trains_every_assistant_turn_and_its_im_end(smollm2_tokenizer):
    row = tokenize(smollm2_tokenizer)
    assert row["input_ids"] == SMOLLM2_IDS
    assert row["labels"] == SMOLLM2_LABELS


def test_last_assistant_option_trains_only_the_final_answer(llama31, smollm2_tokenizer):
    assert tokenize(llama31, "last-assistant")["labels"] == [X] * 56 + [19, 128009]
    assert tokenize(smollm2_tokenizer, "last-assistant")["labels"] == [X] * 36 + [36, 2, X]


def test_all_option_trains_every_token(llama31):
    row = tokenize(llama31, "all")
    assert row["labels"] == row["input_ids"] == LLAMA31_IDS


def test_a_tokenizer_with_its_own_template_keeps_it(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    before = tokenizer.chat_template
    assert ensure_chat_template(tokenizer) == "the tokenizer's own"
    assert tokenizer.chat_template == before != LLAMA31_CHAT_TEMPLATE
