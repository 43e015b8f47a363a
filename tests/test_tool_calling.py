"""Tool-calling conversations: Meta's Llama 3.1 JSON tool format, token by token, and loss on calls and answers only."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import load_script, write_jsonl

from llama_lora.data.chat_template import ensure_chat_template, ensure_tool_template, renders_tools
from llama_lora.data.formats import DEFAULT_ROLE_MAP, to_examples
from llama_lora.data.prepare import IGNORE_INDEX, prepare, tokenize_examples
from llama_lora.data.sources import Rows
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig

X = IGNORE_INDEX
TOOLS = [{"name": "add"}]
CONVERSATION = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "4"},
]

# Checked by hand against Meta's Llama 3.1 JSON tool-calling prompt format, decoding each id with the real tokenizer.
LLAMA31_TOOL_IDS = [
    128000,                                                        # <|begin_of_text|>
    128006, 9125, 128007, 271,                                     # <|start_header_id|>system<|end_header_id|>\n\n
    13013, 25, 6125, 27993, 198,                                   # Environment: ipython\n
    38766, 1303, 33025, 2696, 25, 6790, 220, 2366, 18, 198,        # Cutting Knowledge Date: December 2023\n
    15724, 2696, 25, 220, 1627, 10263, 220, 2366, 19, 271,         # Today Date: 26 Jul 2024\n\n
    128009,                                                        # (no system prompt)<|eot_id|>
    128006, 882, 128007, 271,                                      # <|start_header_id|>user<|end_header_id|>\n\n
    22818, 279, 2768, 5865, 11, 4587, 6013, 449, 264, 4823, 369,   # Given the following functions, please respond
    264, 734, 1650, 449, 1202, 6300, 6105, 430, 1888, 11503, 279,  #  with a JSON for a function call with its proper
    2728, 10137, 382,                                              #  arguments that best answers the given prompt.\n\n
    66454, 304, 279, 3645, 5324, 609, 794, 734, 836, 11, 330,      # Respond in the format {"name": function name, "
    14105, 794, 11240, 315, 5811, 836, 323, 1202, 907, 7966,       # parameters": dictionary of argument name and its value}.
    5519, 539, 1005, 7482, 382,                                    # Do not use variables.\n\n
    517, 262, 330, 609, 794, 330, 723, 702, 633,                   # {\n    "name": "add"\n}\n\n
    17, 10, 17, 30, 128009,                                        # 2+2?<|eot_id|>
    128006, 78191, 128007, 271,                                    # <|start_header_id|>assistant<|end_header_id|>\n\n
    5018, 609, 794, 330, 723, 498, 330, 14105, 794,                # {"name": "add", "parameters":
    5324, 64, 794, 220, 17, 11, 330, 65, 794, 220, 17, 3500,       #  {"a": 2, "b": 2}}
    128009,                                                        # <|eot_id|>
    128006, 23799, 4690, 128007, 271,                              # <|start_header_id|>ipython<|end_header_id|>\n\n
    19, 128009,                                                    # 4<|eot_id|>
    128006, 78191, 128007, 271,                                    # <|start_header_id|>assistant<|end_header_id|>\n\n
    19, 128009,                                                    # 4<|eot_id|>
]
CALL = slice(104, 126)  # the tool call and its <|eot_id|>
ANSWER = slice(137, 139)  # the final answer and its <|eot_id|>


@pytest.fixture(scope="module")
def llama31(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    ensure_chat_template(tokenizer)
    return tokenizer


def tokenize(tokenizer, conversation=CONVERSATION, tools=TOOLS, fields=None) -> dict:
    rows = Rows([{"messages": conversation, "tools": tools, **(fields or {})}], ["d.jsonl:3"], "d.jsonl")
    return tokenize_examples(tokenizer, to_examples(rows, "messages", DEFAULT_ROLE_MAP), "assistant")[0]


def test_llama31_renders_tools_call_and_result_as_the_hand_checked_token_ids(llama31):
    assert tokenize(llama31)["input_ids"] == LLAMA31_TOOL_IDS


def test_loss_is_on_the_tool_call_and_the_answer_not_on_the_tool_result(llama31):
    expected = [X] * len(LLAMA31_TOOL_IDS)
    expected[CALL], expected[ANSWER] = LLAMA31_TOOL_IDS[CALL], LLAMA31_TOOL_IDS[ANSWER]
    assert tokenize(llama31)["labels"] == expected
    assert llama31.decode(LLAMA31_TOOL_IDS[CALL]) == '{"name": "add", "parameters": {"a": 2, "b": 2}}<|eot_id|>'


def test_openai_exports_with_json_string_arguments_train_the_same_tokens(llama31):
    exported = copy.deepcopy(CONVERSATION)
    exported[1] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}]}
    exported[2] = {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "4"}]}
    assert tokenize(llama31, exported, json.dumps(TOOLS)) == tokenize(llama31)


def test_tool_calls_without_tool_definitions_still_train(llama31):
    row = tokenize(llama31, tools=None)
    text = llama31.decode(row["input_ids"])
    assert "Environment: ipython" not in text and '{"name": "add", "parameters": {"a": 2, "b": 2}}' in text


@pytest.mark.parametrize("change, message", [
    ({"arguments": "{not json"}, r"d.jsonl:3: field 'messages\[1\].tool_calls\[0\].function.arguments': malformed"),
    ({"arguments": [1, 2]}, r"field 'messages\[1\].tool_calls\[0\].function.arguments': expected an object"),
    ({"name": ""}, r"field 'messages\[1\].tool_calls\[0\].function.name': expected a non-empty string"),
])
def test_bad_tool_calls_name_row_and_field(llama31, change: dict, message: str):
    bad = copy.deepcopy(CONVERSATION)
    bad[1]["tool_calls"][0]["function"].update(change)
    with pytest.raises(DataError, match=message):
        tokenize(llama31, bad)


def test_bad_tool_definitions_name_row_and_field(llama31):
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'tools\[0\]': expected a function definition"):
        tokenize(llama31, tools=[{"description": "no name"}])


def test_several_calls_in_one_turn_are_refused_by_the_llama31_template_naming_the_row(llama31):
    bad = copy.deepcopy(CONVERSATION)
    bad[1]["tool_calls"] *= 2
    with pytest.raises(DataError, match="d.jsonl:3: the chat template cannot render this conversation: .*one tool "
                                        "per assistant turn; this turn makes 2 calls"):
        tokenize(llama31, bad)


def test_a_template_without_tools_is_replaced_by_llama31_for_a_llama3_vocabulary(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    assert not renders_tools(tokenizer)
    assert ensure_tool_template(tokenizer).startswith("Llama 3.1 (supplied: the tokenizer's own does not render")
    assert tokenize(tokenizer)["input_ids"] == LLAMA31_TOOL_IDS
    assert ensure_tool_template(tokenizer) is None  # a template that renders tools is kept


def test_a_model_whose_template_drops_tools_is_refused_clearly(tmp_path: Path, smollm2_tokenizer):
    data = write_jsonl(tmp_path / "tools.jsonl", [{"messages": CONVERSATION, "tools": TOOLS}])
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    with pytest.raises(DataError, match=r"tools.jsonl:1: the data calls tools, but the model's chat template does "
                                        "not render tools"):
        prepare(TrainConfig(dataset=str(data), model="smollm2", eval_fraction=0), tokenizer)


@pytest.fixture(scope="module")
def llama3_model_folder(tmp_path_factory, llama3_tokenizer) -> Path:
    """A tiny Llama-architecture config next to the real Llama 3 tokenizer: enough for a dry run."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama3-tiny")
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(llama3_tokenizer)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(llama3_tokenizer.name_or_path) / name, folder / name)
    return folder


def test_dry_run_shows_a_tool_calling_example_with_its_trained_spans(tmp_path: Path, llama3_model_folder: Path):
    data = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": CONVERSATION, "tools": TOOLS},
    ])
    cli = load_script("lora_peft_finetuning.py").main
    result = CliRunner().invoke(cli, ["--model", str(llama3_model_folder), "--dataset", str(data), "--dry-run",
                                      "--eval-fraction", "0", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"Example: {data}:2 as the model sees it" in result.stdout
    assert ('[[{"name": "add", "parameters": {"a": 2, "b": 2}}<|eot_id|>]]<|start_header_id|>ipython'
            '<|end_header_id|>\n\n4<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n[[4<|eot_id|>]]'
            in result.stdout)
    assert re.search(r"│ tool-calling rows \(kept\) +│ +1 │", result.stdout)
    assert not (tmp_path / "run").exists()


def test_the_gguf_export_notes_that_its_modelfile_renders_no_tools(tmp_path: Path):
    from llama_lora.export.gguf import trained_tool_rows

    (tmp_path / "audit.json").write_text(json.dumps({"splits": {"train": {"tool_calling_rows": 3},
                                                                "eval": {"tool_calling_rows": 1}}}))
    assert trained_tool_rows(tmp_path) == 4
    assert trained_tool_rows(tmp_path / "no-run") == 0
