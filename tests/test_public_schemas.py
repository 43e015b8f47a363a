"""Data as users download it: small files in the exact schemas of popular public fine-tuning sets (written from
each data set's card, with this project's own text), each read, rendered with the Llama 3.1 template and masked as
a run does. Every one either trains as the data says (checked token by token: the decoded ids with every trained
token inside [[ ]]) or is refused with a message naming the file, the line and the option that makes it train."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llama_lora.data.audit import build_audit, metrics_data, render_marked
from llama_lora.data.chat_template import ensure_chat_template
from llama_lora.data.prepare import IGNORE_INDEX, prepare
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig

HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")


def llama(*turns: tuple[str, str, bool], system: str = "") -> str:
    """A Llama 3.1 rendering with the trained turns in [[ ]]: (role, text, trained) per turn after the system."""
    text = f"{HEAD}{system}<|eot_id|>"
    for role, content, trained in turns:
        body = f"{content}<|eot_id|>"
        text += f"<|start_header_id|>{role}<|end_header_id|>\n\n" + (f"[[{body}]]" if trained else body)
    return text


def write(path: Path, rows: list[dict]) -> Path:
    """Rows in the file type the suffix names."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(tmp_path: Path, tokenizer, rows: list[dict], name: str = "data.jsonl", **options):
    """(prepared data, audit) of the rows as a run with these data options reads them (no eval split, no cache)."""
    path = write(tmp_path / name, rows)
    cfg = TrainConfig(dataset=str(path), model="test", eval_fraction=0, data_cache="off", **options)
    prepared = prepare(cfg, tokenizer)
    return prepared, build_audit(prepared, cfg.max_seq_length, cfg.overlength, cfg.loss_on, "test")


def marked(tokenizer, prepared, index: int = 0) -> str:
    return render_marked(tokenizer, prepared.train.rows[index])


def refusal(tmp_path: Path, tokenizer, rows: list[dict], **options) -> str:
    with pytest.raises(DataError) as caught:
        run(tmp_path, tokenizer, rows, **options)
    return str(caught.value)


@pytest.fixture(scope="module")
def llama31(llama3_tokenizer):
    tokenizer = copy.deepcopy(llama3_tokenizer)
    ensure_chat_template(tokenizer)
    return tokenizer


# --- ShareGPT and OpenAI-messages sets -----------------------------------------------------------------------------

FINETOME = {"conversations": [{"from": "human", "value": "What is a prime number?"},
                              {"from": "gpt", "value": "A number with exactly two divisors."}],
            "source": "infini-instruct-top-500k", "score": 5.21}


def test_finetome_trains_as_sharegpt_and_its_metadata_is_listed_as_unused(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [FINETOME])
    assert prepared.format == "sharegpt"
    assert marked(llama31, prepared) == llama(("user", "What is a prime number?", False),
                                              ("assistant", "A number with exactly two divisors.", True))
    assert audit["splits"]["train"]["unused_fields"] == {"source": 1, "score": 1}


SMOLTALK = {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}],
            "source": "smol-magpie-ultra"}
TULU3 = {"id": "oasst1_42", "messages": SMOLTALK["messages"], "source": "ai2-adapt-dev/oasst1_converted"}
NO_ROBOTS = {"prompt": "Name a fruit.", "prompt_id": "9f1e", "messages": SMOLTALK["messages"], "category": "Brainstorm"}


@pytest.mark.parametrize("row, unused", [
    (SMOLTALK, {"source": 1}), (TULU3, {"id": 1, "source": 1}),
    (NO_ROBOTS, {"prompt": 1, "prompt_id": 1, "category": 1}),
], ids=["smoltalk", "tulu-3-sft-mixture", "no_robots"])
def test_messages_sets_train_their_conversation(tmp_path, llama31, row, unused):
    prepared, audit = run(tmp_path, llama31, [row])
    assert marked(llama31, prepared) == llama(("user", "Name a fruit.", False), ("assistant", "Apple.", True))
    assert audit["splits"]["train"]["unused_fields"] == unused


SLIMORCA = {"conversations": [{"from": "system", "value": "", "weight": None},
                              {"from": "human", "value": "Translate 'cat' to French.", "weight": 0.0},
                              {"from": "gpt", "value": "chat", "weight": 1.0}]}
OPENHERMES = {"conversations": [{"from": "human", "value": "7 leaves a day: how many in 2 weeks?", "weight": None},
                                {"from": "gpt", "value": "98 leaves.", "weight": None}],
              "source": "airoboros2.2", "category": "orca", "custom_instruction": None, "topic": None,
              "model_name": None, "views": None, "language": None, "id": None, "title": None, "hash": None,
              "system_prompt": None, "model": None}


def test_slimorca_empty_system_prompt_is_dropped_and_its_weights_train_the_answer(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [SLIMORCA])
    assert marked(llama31, prepared) == llama(("user", "Translate 'cat' to French.", False), ("assistant", "chat", True))
    assert audit["splits"]["train"]["unused_fields"] == {}


def test_openhermes_null_weights_train_every_answer_and_null_fields_are_not_listed(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [OPENHERMES])
    assert marked(llama31, prepared) == llama(("user", "7 leaves a day: how many in 2 weeks?", False),
                                              ("assistant", "98 leaves.", True))
    assert audit["splits"]["train"]["unused_fields"] == {"source": 1, "category": 1}


OPENTHOUGHTS = {"system": "Think step by step.",
                "conversations": [{"from": "user", "value": "2+2?"},
                                  {"from": "assistant", "value": "<|begin_of_thought|>Add.<|end_of_thought|> 4"}]}


def test_openthoughts_row_level_system_prompt_joins_the_conversation(tmp_path, llama31):
    prepared, _ = run(tmp_path, llama31, [OPENTHOUGHTS])
    assert marked(llama31, prepared) == llama(
        ("user", "2+2?", False), ("assistant", "<|begin_of_thought|>Add.<|end_of_thought|> 4", True),
        system="Think step by step.")


def test_a_row_level_system_prompt_that_contradicts_the_conversations_own_is_refused(tmp_path, llama31):
    row = {"system": "Be brief.", "messages": [{"role": "system", "content": "Be verbose."}, *SMOLTALK["messages"]]}
    assert "data.jsonl:1: field 'system' and the conversation's own system turn differ" in refusal(
        tmp_path, llama31, [row])


# --- Instruction sets --------------------------------------------------------------------------------------------

ALPACA = {"instruction": "Give a tip for sleep.", "input": "", "output": "Keep a fixed bedtime.",
          "text": "Below is an instruction that describes a task. ..."}
DOLLY = {"instruction": "When did the airline start?", "context": "It began flying on 31 August 2000.",
         "response": "On 31 August 2000.", "category": "closed_qa"}
GSM8K = {"question": "Ann has 3 apples and buys 2. How many now?", "answer": "3 + 2 = 5\n#### 5"}
METAMATH = {"query": "What is 6 x 7?", "response": "42", "type": "GSM_AnsAug", "original_question": "6 x 7?"}


def test_alpaca_trains_the_output_and_lists_its_prebuilt_text_field_as_unused(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [ALPACA])
    assert marked(llama31, prepared) == llama(("user", "Give a tip for sleep.", False),
                                              ("assistant", "Keep a fixed bedtime.", True))
    assert audit["splits"]["train"]["unused_fields"] == {"text": 1}


@pytest.mark.parametrize("row, columns", [
    (DOLLY, "input=context,output=response"), (GSM8K, "completion=answer,prompt=question"),
    (METAMATH, "completion=response,prompt=query"),
], ids=["dolly", "gsm8k", "metamathqa"])
def test_other_column_names_are_refused_with_the_columns_option_that_maps_them(tmp_path, llama31, row, columns):
    assert f"data.jsonl:1: cannot tell the format from the fields {sorted(row)}" in refusal(tmp_path, llama31, [row])
    assert f"--columns {columns}" in refusal(tmp_path, llama31, [row])
    prepared, _ = run(tmp_path, llama31, [row], columns=columns)
    assert prepared.train.rows[0]["labels"].count(IGNORE_INDEX) < len(prepared.train.rows[0]["labels"])


def test_dolly_with_columns_trains_instruction_context_and_response(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [DOLLY], columns="input=context,output=response")
    assert prepared.format == "alpaca"
    assert marked(llama31, prepared) == llama(
        ("user", "When did the airline start?\n\nIt began flying on 31 August 2000.", False),
        ("assistant", "On 31 August 2000.", True))
    assert audit["splits"]["train"]["unused_fields"] == {"category": 1}


def test_a_named_format_whose_field_is_missing_says_which_option_maps_it(tmp_path, llama31):
    assert "field 'output': expected a non-empty string (missing; --columns output=COLUMN" in refusal(
        tmp_path, llama31, [DOLLY], format="alpaca")


def test_columns_rename_keys_inside_turns_too(tmp_path, llama31):
    row = {"dialog": [{"speaker": "customer", "text": "Is it open?"}, {"speaker": "agent", "text": "Yes."}]}
    prepared, _ = run(tmp_path, llama31, [row], columns="messages=dialog,role=speaker,content=text",
                      role_map="customer=user,agent=assistant")
    assert marked(llama31, prepared) == llama(("user", "Is it open?", False), ("assistant", "Yes.", True))


def test_an_unknown_field_in_columns_is_refused_naming_the_fields_there_are(tmp_path, llama31):
    assert "--columns: 'answer=response': 'answer' is not a field any format reads" in refusal(
        tmp_path, llama31, [DOLLY], columns="answer=response")


# --- Conversations inside text ------------------------------------------------------------------------------------

OASST_TOP1 = {"text": "<|im_start|>user\nWhat is a monad?<|im_end|>\n<|im_start|>assistant\n"
                      "A pattern for chaining steps.<|im_end|>\n"}
GUANACO = {"text": "### Human: Write a haiku about rain.### Assistant: Soft rain on the roof."}
LLAMA_TEXT = {"text": HEAD + "Be kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"}


@pytest.mark.parametrize("row, expected", [
    (OASST_TOP1, llama(("user", "What is a monad?", False), ("assistant", "A pattern for chaining steps.", True))),
    (GUANACO, llama(("user", "Write a haiku about rain.", False), ("assistant", "Soft rain on the roof.", True))),
    (LLAMA_TEXT, llama(("user", "Hi", False), ("assistant", "Hello!", True), system="Be kind.")),
], ids=["oasst_top1 ChatML", "guanaco ### Human", "Llama 3 headers"])
def test_a_conversation_written_in_chat_markup_trains_as_that_conversation(tmp_path, llama31, row, expected):
    prepared, _ = run(tmp_path, llama31, [row])
    assert prepared.format == "chat-text"
    assert marked(llama31, prepared) == expected


def test_chat_markup_in_plain_text_rows_is_refused_naming_both_formats(tmp_path, llama31):
    message = refusal(tmp_path, llama31, [{"text": "A plain document."}, OASST_TOP1])
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:2: field 'text' holds a conversation in ChatML markup; "
                              "--format chat-text trains it as that conversation")
    assert "--format text as plain text on purpose" in message


def test_format_text_trains_chat_markup_as_plain_text_with_its_markers_as_text(tmp_path, smollm2_tokenizer):
    prepared, _ = run(tmp_path, smollm2_tokenizer, [OASST_TOP1], format="text")
    row = prepared.train.rows[0]
    im_start = smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start not in row["input_ids"]  # the markup is text here, never SmolLM2's own control tokens
    assert smollm2_tokenizer.decode(row["input_ids"]).startswith(OASST_TOP1["text"])
    assert row["labels"] == row["input_ids"]


def test_markup_that_is_not_whole_turns_is_refused_naming_the_plain_text_option(tmp_path, llama31):
    broken = {"text": "<|im_start|>user\nHi<|im_end|>\nThen some text outside any turn."}
    assert "field 'text': ChatML markup that is not a sequence of whole turns (text left after 1 turns); " \
           "--format text trains it as plain text on purpose" in refusal(tmp_path, llama31, [broken])


# --- OpenAssistant message trees ----------------------------------------------------------------------------------

def oasst(message_id: str, parent: str | None, role: str, text: str, rank: int | None = None, **extra) -> dict:
    return {"message_id": message_id, "parent_id": parent, "user_id": "u", "created_date": "2023-02-05T14:23:50",
            "text": text, "role": role, "lang": "en", "review_count": 3, "rank": rank, "synthetic": False,
            "model_name": None, "deleted": False, "message_tree_id": "t1", "tree_state": "ready_for_export", **extra}


OASST2 = [
    oasst("m1", None, "prompter", "What is a monad?"),
    oasst("m2", "m1", "assistant", "A design pattern.", rank=1),
    oasst("m3", "m1", "assistant", "A way to chain steps.", rank=0),
    oasst("m4", "m3", "prompter", "Simpler, please.", rank=0),
    oasst("m5", "m4", "assistant", "A box with rules for what comes next.", rank=0),
    oasst("m6", "m5", "prompter", "Thanks!", rank=0),  # a leaf prompt: nothing answers it
    oasst("m7", None, "prompter", "Spam", deleted=True),
]


def test_oasst_message_trees_train_the_top_ranked_path_by_default(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, OASST2)
    assert prepared.format == "message-tree" and len(prepared.train.rows) == 1
    assert marked(llama31, prepared) == llama(
        ("user", "What is a monad?", False), ("assistant", "A way to chain steps.", True),
        ("user", "Simpler, please.", False), ("assistant", "A box with rules for what comes next.", True))
    assert prepared.train.rows[0]["where"] == f"{tmp_path / 'data.jsonl'}:5"  # named by its last message's row
    unused = audit["splits"]["train"]["unused_fields"]
    assert set(unused) == {"user_id", "created_date", "lang", "review_count", "synthetic", "tree_state"}
    assert unused["lang"] == 6  # every message row that is not deleted


def test_oasst_all_paths_trains_every_path_from_the_root(tmp_path, llama31):
    prepared, _ = run(tmp_path, llama31, OASST2, tree_paths="all")
    assert len(prepared.train.rows) == 2
    assert marked(llama31, prepared, 0) == llama(("user", "What is a monad?", False),
                                                 ("assistant", "A design pattern.", True))


def test_a_held_out_share_of_message_trees_takes_whole_trees(tmp_path, llama31):
    trees = [oasst(f"r{t}", None, "prompter", f"Question {t}?") for t in range(6)] + [
        oasst(f"a{t}{k}", f"r{t}", "assistant", f"Answer {k} to {t}.", rank=k) for t in range(6) for k in range(2)]
    path = write(tmp_path / "trees.jsonl", trees)
    cfg = TrainConfig(dataset=str(path), model="test", eval_fraction=0.5, tree_paths="all", data_cache="off")
    prepared = prepare(cfg, llama31)
    question = {split: {llama31.decode(row["input_ids"]).split("Question ")[1][0] for row in rows}
                for split, rows in (("train", prepared.train.rows), ("eval", prepared.eval.rows))}
    assert len(prepared.train.rows) == len(prepared.eval.rows) == 6 and not question["train"] & question["eval"]


# --- Reasoning traces --------------------------------------------------------------------------------------------

OPENR1 = {"problem": "What is 2+2?", "solution": "4", "answer": "4", "problem_type": "Algebra", "uuid": "0a1b",
          "generations": ["<think>\nTwo and two.\n</think>\n\nThe answer is 4."], "correctness_count": 1,
          "messages": [{"role": "user", "content": "What is 2+2?"},
                       {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nThe answer is 4."}]}
REASONING_CONTENT = {"messages": [{"role": "user", "content": "What is 2+2?"},
                                  {"role": "assistant", "content": "The answer is 4.",
                                   "reasoning_content": "Two and two."}]}
MULTILINGUAL_THINKING = {"reasoning_language": "French", "developer": "Be exact.", "user": "What is 2+2?",
                         "analysis": "Two and two.", "final": "The answer is 4.",
                         "messages": [{"role": "user", "content": "What is 2+2?", "thinking": None},
                                      {"role": "assistant", "content": "The answer is 4.", "thinking": "Two and two."}]}
THINK = "<think>\nTwo and two.\n</think>\n\n"


@pytest.mark.parametrize("row", [OPENR1, REASONING_CONTENT, MULTILINGUAL_THINKING],
                         ids=["openr1 inline <think>", "reasoning_content", "thinking"])
def test_reasoning_trains_inline_before_the_answer_and_is_counted(tmp_path, llama31, row):
    prepared, audit = run(tmp_path, llama31, [row])
    assert marked(llama31, prepared) == llama(("user", "What is 2+2?", False),
                                              ("assistant", f"{THINK}The answer is 4.", True))
    think_tokens = len(llama31(THINK.strip(), add_special_tokens=False)["input_ids"])
    assert audit["splits"]["train"]["reasoning_tokens"] == think_tokens


def test_reasoning_context_keeps_it_out_of_the_loss_and_drop_leaves_it_out(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [REASONING_CONTENT], reasoning="context")
    assert marked(llama31, prepared) == llama(("user", "What is 2+2?", False),
                                              ("assistant", f"{THINK}The answer is 4.", False)).replace(
        "The answer is 4.<|eot_id|>", "[[The answer is 4.<|eot_id|>]]")
    assert audit["reasoning"] == "context" and audit["splits"]["train"]["reasoning_tokens"] > 0
    prepared, audit = run(tmp_path, llama31, [REASONING_CONTENT], reasoning="drop")
    assert marked(llama31, prepared) == llama(("user", "What is 2+2?", False), ("assistant", "The answer is 4.", True))
    assert audit["splits"]["train"]["reasoning_tokens"] == 0


def test_multilingual_thinking_lists_its_unused_top_level_fields(tmp_path, llama31):
    _, audit = run(tmp_path, llama31, [MULTILINGUAL_THINKING])
    assert audit["splits"]["train"]["unused_fields"] == {f: 1 for f in
                                                         ("reasoning_language", "developer", "user", "analysis", "final")}


def test_reasoning_given_twice_is_refused(tmp_path, llama31):
    row = copy.deepcopy(OPENR1)
    row["messages"][1]["reasoning_content"] = "Again."
    assert "reasoning given twice ('messages[1].reasoning_content' and <think> in 'messages[1]')" in refusal(
        tmp_path, llama31, [row])


# --- OpenAI fine-tuning files: tools, weights, legacy functions ---------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
OPENAI_CHAT = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "assistant", "content": "It is 18 C.", "weight": 0},
    {"role": "user", "content": "And tomorrow?"},
    {"role": "assistant", "content": "I only know today's weather.", "weight": 1},
], "tools": [WEATHER], "parallel_tool_calls": False}


def test_openai_weight_0_keeps_an_answer_out_of_the_loss(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [OPENAI_CHAT])
    text = render_marked(llama31, prepared.train.rows[0])
    assert '[[{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>]]' in text
    assert "\n\nIt is 18 C.<|eot_id|>" in text and "[[It is 18 C." not in text
    assert "[[I only know today's weather.<|eot_id|>]]" in text
    assert audit["splits"]["train"]["weighted_out_turns"] == 1
    assert audit["splits"]["train"]["unused_fields"] == {"parallel_tool_calls": 1}


@pytest.mark.parametrize("weight", [0.5, 2, "0", True])
def test_a_weight_other_than_0_or_1_is_refused_naming_file_line_and_message(tmp_path, llama31, weight):
    row = copy.deepcopy(OPENAI_CHAT)
    row["messages"][3]["weight"] = weight
    assert f"data.jsonl:1: field 'messages[3].weight': expected 0 (not trained) or 1 (trained), got {weight!r}" \
        in refusal(tmp_path, llama31, [row])


def test_openai_legacy_functions_train_exactly_as_tools(tmp_path, llama31):
    legacy = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C."}], "functions": [WEATHER["function"]]}
    modern = copy.deepcopy(OPENAI_CHAT)
    modern["messages"] = modern["messages"][:4]
    del modern["messages"][3]["weight"], modern["parallel_tool_calls"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run(tmp_path / "a", llama31, [legacy])[0].train.rows[0]["input_ids"] == \
        run(tmp_path / "b", llama31, [modern])[0].train.rows[0]["input_ids"]


def test_parquet_tool_schemas_keep_exactly_each_rows_keys(tmp_path, llama31):
    search = {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}
    rows = [{**SMOLTALK, "tools": [WEATHER]}, {**SMOLTALK, "tools": [search]}]
    prepared, _ = run(tmp_path, llama31, rows, name="data.parquet")
    first = llama31.decode(prepared.train.rows[0]["input_ids"])
    assert json.dumps(WEATHER, indent=4) in first and "query" not in first


# --- Function-calling sets in their own layouts -------------------------------------------------------------------

GLAIVE = {
    "system": 'SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n'
              '{\n    "name": "get_weather",\n    "parameters": {"type": "object", "properties": {"city": '
              '{"type": "string"}}}\n}\n',
    "chat": "USER: Weather in Paris?\n\n\nASSISTANT: <functioncall> {\"name\": \"get_weather\", \"arguments\": "
            "'{\"city\": \"Paris\"}'} <|endoftext|>\n\n\nFUNCTION RESPONSE: {\"temperature\": 18}\n\n\n"
            "ASSISTANT: It is 18 C in Paris. <|endoftext|>\n\n\n",
}
CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'


def test_glaive_rows_become_tool_calling_conversations(tmp_path, llama31):
    prepared, _ = run(tmp_path, llama31, [GLAIVE])
    text = marked(llama31, prepared)
    assert prepared.format == "glaive"
    assert text.startswith(HEAD.replace("system<|end_header_id|>\n\n", "system<|end_header_id|>\n\nEnvironment: "
                                        "ipython\n") + "You are a helpful assistant with access to the following "
                           "functions. Use them if required -<|eot_id|>")
    assert f"[[{CALL}<|eot_id|>]]<|start_header_id|>ipython<|end_header_id|>\n\n{{\"temperature\": 18}}<|eot_id|>" \
           "<|start_header_id|>assistant<|end_header_id|>\n\n[[It is 18 C in Paris.<|eot_id|>]]" in text
    assert '"name": "get_weather"' in text.split("Weather in Paris?")[0]  # the definitions, in the first user turn


XLAM = {"id": 7, "query": "Weather in Paris?",
        "answers": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "tools": '[{"name": "get_weather", "description": "Weather now", "parameters": {"city": {"type": "str"}}}]'}
XLAM_PARALLEL = {**XLAM, "answers": '[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                                    '{"name": "get_weather", "arguments": {"city": "Rome"}}]'}


def test_xlam_rows_train_their_calls(tmp_path, llama31):
    prepared, audit = run(tmp_path, llama31, [XLAM])
    assert prepared.format == "xlam"
    assert marked(llama31, prepared).endswith(
        f"Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n[[{CALL}<|eot_id|>]]")
    assert audit["splits"]["train"]["unused_fields"] == {"id": 1}


def test_parallel_calls_are_refused_by_llama31_and_skipped_by_name_with_bad_rows_skip(tmp_path, llama31):
    message = refusal(tmp_path, llama31, [XLAM_PARALLEL, XLAM])
    assert "data.jsonl:1: the chat template cannot render this conversation" in message
    assert "one tool per assistant turn" in message and "--bad-rows skip" in message
    prepared, audit = run(tmp_path, llama31, [XLAM_PARALLEL, XLAM], bad_rows="skip")
    skipped = audit["splits"]["train"]["rows_skipped"]
    assert len(prepared.train.rows) == 1 and skipped["count"] == 1
    assert skipped["rows"][0].startswith(f"{tmp_path / 'data.jsonl'}:1: the chat template cannot render")
    assert metrics_data(audit)["train"]["rows_skipped"] == skipped


HERMES_FC = {"id": "c5b8", "category": "Finance", "subcategory": "Stocks", "task": "Get a stock price",
             "conversations": [
                 {"from": "system", "value": "You are a function calling AI model. <tools> [{'name': 'price'}] </tools>"},
                 {"from": "human", "value": "Price of AAPL?"},
                 {"from": "gpt", "value": "<tool_call>\n{'arguments': {'symbol': 'AAPL'}, 'name': 'price'}\n</tool_call>"},
                 {"from": "tool", "value": "<tool_response>\n{'price': 150.75}\n</tool_response>"},
                 {"from": "gpt", "value": "AAPL is at $150.75."}]}


def test_hermes_tool_turns_as_text_train_on_a_template_without_tool_support(tmp_path, smollm2_tokenizer):
    prepared, _ = run(tmp_path, smollm2_tokenizer, [HERMES_FC])
    text = marked(smollm2_tokenizer, prepared)
    assert "<|im_start|>tool\n<tool_response>\n{'price': 150.75}\n</tool_response><|im_end|>" in text
    assert "[[<tool_call>\n{'arguments': {'symbol': 'AAPL'}, 'name': 'price'}\n</tool_call><|im_end|>]]" in text
    assert text.endswith("[[AAPL is at $150.75.<|im_end|>]]\n")


def test_tool_turns_a_template_cannot_render_are_refused_naming_file_and_line(tmp_path, smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] in ['user', 'assistant', 'system'] %}"
                               "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}")
    assert "data.jsonl:1: the chat template does not render messages[3] (tool) as given" in refusal(
        tmp_path, tokenizer, [HERMES_FC])


# --- Splits ------------------------------------------------------------------------------------------------------

def ultrachat_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ultrachat_200k"
    (folder / "data").mkdir(parents=True)
    for split, n in (("train_sft", 3), ("test_sft", 2), ("train_gen", 1), ("test_gen", 1)):
        rows = [{"prompt": f"{split} {i}?", "prompt_id": f"{i}", "messages": [
            {"role": "user", "content": f"{split} {i}?"}, {"role": "assistant", "content": "Yes."}]} for i in range(n)]
        write(folder / "data" / f"{split}-00000-of-00001.parquet", rows)
    return folder


def test_a_hub_folder_evaluates_on_the_held_out_split_matching_the_training_split(tmp_path, llama31):
    folder = ultrachat_folder(tmp_path)
    prepared = prepare(TrainConfig(dataset=str(folder), dataset_split="train_sft", data_cache="off"), llama31)
    assert (len(prepared.train.rows), len(prepared.eval.rows)) == (3, 2)
    assert prepared.eval.source == f"{folder}[test_sft]"


def test_eval_dataset_takes_a_folder_and_split(tmp_path, llama31):
    folder = ultrachat_folder(tmp_path)
    cfg = TrainConfig(dataset=str(folder), dataset_split="train_sft", eval_dataset=f"{folder}:test_gen",
                      data_cache="off")
    assert prepare(cfg, llama31).eval.source == f"{folder}[test_gen]"
    with pytest.raises(DataError, match=r"no split named 'dev' \(--eval-dataset SOURCE:SPLIT\); it has: test_gen"):
        prepare(TrainConfig(dataset=str(folder), dataset_split="train_sft", eval_dataset=f"{folder}:dev",
                            data_cache="off"), llama31)


def test_several_held_out_splits_without_a_match_ask_for_one_by_name(tmp_path, llama31):
    folder = ultrachat_folder(tmp_path)
    with pytest.raises(DataError, match=r"several held-out splits \(test_gen, test_sft\); pick one with "
                                        rf"--eval-dataset {folder}:SPLIT"):
        prepare(TrainConfig(dataset=str(folder), dataset_split="train_sft", eval_dataset=str(folder),
                            data_cache="off"), llama31)
