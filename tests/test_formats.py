"""Every supported row format becomes the same kind of conversation; bad rows name file, row and field."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from helpers import REPO

from llama_lora.backend import BACKENDS, Backend
from llama_lora.data import formats
from llama_lora.data.formats import (
    CLASSIFICATION_PROMPT,
    DEFAULT_ROLE_MAP,
    FORMATS,
    Example,
    Format,
    Reading,
    class_labels,
    detect_format,
    markdown_table,
    parse_role_map,
    to_examples,
)
from llama_lora.data.sources import Rows
from llama_lora.errors import DataError
from llama_lora.options.config import CONFIG_FIELDS, TrainConfig
from llama_lora.train.cli import SUPPLIED_CHOICES, build_cli

U, A, S = "user", "assistant", "system"


def rows(*records: dict) -> Rows:
    return Rows(list(records), [f"d.jsonl:{i + 1}" for i in range(len(records))], "d.jsonl")


def convert(*records: dict, fmt: str | None = None, role_map: dict | None = None) -> list[Example]:
    split = rows(*records)
    fmt = fmt or detect_format(split)
    labels = class_labels(split) if fmt == "classification" else None
    return to_examples(split, fmt, role_map or DEFAULT_ROLE_MAP, labels)


def turns(example: Example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.messages]


FORMAT_ROWS = {
    "messages": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello"}]},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                   {"from": "gpt", "value": "Hello"}]},
    "alpaca": {"instruction": "Hi", "input": "", "output": "Hello", "system": "Be kind."},
    "prompt-completion": {"prompt": "Hi", "completion": "Hello", "system": "Be kind."},
}


@pytest.mark.parametrize("fmt", FORMAT_ROWS)
def test_chat_formats_are_detected_and_give_the_same_conversation(fmt: str):
    split = rows(FORMAT_ROWS[fmt])
    assert detect_format(split) == fmt
    assert turns(convert(FORMAT_ROWS[fmt])[0]) == [(S, "Be kind."), (U, "Hi"), (A, "Hello")]


def test_alpaca_input_is_appended_to_the_instruction():
    example = convert({"instruction": "Translate to French.", "input": "cat", "output": "chat"})[0]
    assert turns(example) == [(U, "Translate to French.\n\ncat"), (A, "chat")]


def test_conversational_prompt_completion_keeps_every_turn():
    example = convert({"prompt": [{"role": "user", "content": "2+2?"}],
                       "completion": [{"role": "assistant", "content": "4"}]})[0]
    assert turns(example) == [(U, "2+2?"), (A, "4")]


def test_plain_text_is_kept_as_text_for_continued_pretraining():
    example = convert({"text": "Once upon a time."})[0]
    assert example.text == "Once upon a time." and example.messages is None


def test_classification_becomes_an_instruction_whose_answer_is_the_label():
    examples = convert({"text": "great film", "label": "positive"}, {"text": "dull", "label": "negative"})
    assert detect_format(rows({"text": "x", "label": 1})) == "classification"
    assert turns(examples[1]) == [
        (U, CLASSIFICATION_PROMPT.format(labels="negative, positive", text="dull")), (A, "negative")]


def test_integer_labels_become_label_names():
    examples = convert({"text": "a", "label": 0}, {"text": "b", "label": 1})
    assert [turns(e)[-1] for e in examples] == [(A, "0"), (A, "1")]


def test_format_override_wins_over_detection():
    # A row with text and label trains as plain text when asked to.
    example = convert({"text": "great film", "label": "positive"}, fmt="text")[0]
    assert example.text == "great film"


def test_teacher_and_student_map_to_assistant_and_user_by_default():
    example = convert({"messages": [{"role": "student", "content": "q?"}, {"role": "teacher", "content": "a."}]})[0]
    assert turns(example) == [(U, "q?"), (A, "a.")]


def test_role_map_option_adds_names():
    role_map = parse_role_map("customer=user, bot=assistant")
    example = convert({"messages": [{"role": "customer", "content": "q?"}, {"role": "bot", "content": "a."}]},
                      role_map=role_map)[0]
    assert turns(example) == [(U, "q?"), (A, "a.")]
    assert parse_role_map({"agent": "assistant"})["agent"] == A


@pytest.mark.parametrize("spec", ["bot=robot", "=assistant", "bot"])
def test_role_map_rejects_roles_the_template_does_not_know(spec: str):
    with pytest.raises(DataError, match="--role-map"):
        parse_role_map(spec)


@pytest.mark.parametrize("record, message", [
    ({"conversation": []}, r"d.jsonl:2: cannot tell the format from the fields \['conversation'\]"),
], ids=["unknown fields"])
def test_unknown_fields_name_the_row_and_the_formats_expected(record: dict, message: str):
    with pytest.raises(DataError, match=message):
        detect_format(Rows([record], ["d.jsonl:2"], "d.jsonl"))


GOOD = {"messages": [{"role": "user", "content": "ok?"}, {"role": "assistant", "content": "ok."}]}


@pytest.mark.parametrize("fmt, record, message", [
    ("messages", {"messages": "hi"}, r"d.jsonl:2: field 'messages': expected a non-empty list"),
    ("messages", {"messages": [{"role": "pupil", "content": "hi"}]},
     r"d.jsonl:2: field 'messages\[0\].role': unknown role 'pupil'"),
    ("messages", {"messages": [{"role": "user", "content": 3}]},
     r"d.jsonl:2: field 'messages\[0\].content': expected a non-empty string"),
    ("messages", {"messages": ["hi"]}, r"d.jsonl:2: field 'messages\[0\]': expected an object"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}]}, r"d.jsonl:2: no assistant turn"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "hi"}]},
     r"d.jsonl:2: field 'conversations\[0\].from': unknown role 'robot'"),
    ("alpaca", {"instruction": "hi"}, r"d.jsonl:2: field 'output': expected a non-empty string \(missing; --columns output=COLUMN reads it"),
    ("alpaca", {"instruction": "hi", "output": "x", "input": 5}, r"d.jsonl:2: field 'input': expected a non-empty"),
    ("prompt-completion", {"prompt": "hi", "completion": ""}, r"d.jsonl:2: field 'completion': expected"),
    ("text", {"text": None}, r"d.jsonl:2: field 'text': expected a non-empty string"),
    ("classification", {"text": "x", "label": None}, r"d.jsonl:2: field 'label': expected a non-empty string or an"),
    ("messages", ["not", "an", "object"], r"d.jsonl:2: expected an object with named fields, got list"),
])
def test_bad_rows_name_row_field_and_expectation(fmt: str, record, message: str):
    first = {"messages": GOOD["messages"], "conversations": [{"from": "human", "value": "q"},
                                                             {"from": "gpt", "value": "a"}],
             "instruction": "q", "output": "a", "prompt": "q", "completion": "a", "text": "t", "label": "l"}
    with pytest.raises(DataError, match=message):
        labels = ["l"] if fmt == "classification" else None
        to_examples(Rows([first, record], ["d.jsonl:1", "d.jsonl:2"], "d.jsonl"), fmt, DEFAULT_ROLE_MAP, labels)


# --- The format registry: one declaration per format ------------------------------------------------------------

def qa_row(record: dict, where: str, reading: Reading) -> Example:
    return Example(where, messages=[{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}])


@pytest.fixture
def qa_format(monkeypatch) -> Format:
    """A format declared the one way a new format is: a Format record in FORMATS, with its converter."""
    spec = Format("qa-pairs", ("q", "a"), qa_row, "user: q; assistant: a", ({"q": "2+2?", "a": "4"},))
    monkeypatch.setitem(FORMATS, spec.name, spec)
    return spec


def capture(*args: str) -> tuple[int, list[TrainConfig], str]:
    """The real command line, with a runner that records the resolved config instead of training."""
    seen: list[TrainConfig] = []
    cli = build_cli(Backend(BACKENDS["peft"], load=lambda cfg, path: None),
                    train=lambda cfg, backend, options=None: seen.append(cfg) or 0)
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, seen, result.output


def test_a_declared_format_is_detected_converted_offered_and_documented(qa_format: Format):
    assert detect_format(rows({"q": "2+2?", "a": "4"})) == "qa-pairs"
    assert turns(convert({"q": "2+2?", "a": "4"})[0]) == [(U, "2+2?"), (A, "4")]
    with pytest.raises(DataError, match=r"expected one of: messages \| .* \| q\+a \(or pass --format\)"):
        detect_format(rows({"question": "2+2?"}))
    code, seen, output = capture("--format", "qa-pairs")
    assert code == 0 and seen[0].format == "qa-pairs"
    assert "qa-pairs" in capture("--help")[2]
    assert "| `qa-pairs` | `q` + `a` | `{\"q\": \"2+2?\", \"a\": \"4\"}` | user: q; assistant: a |" in markdown_table()


def test_every_format_detects_and_converts_its_own_example_rows():
    for name, spec in FORMATS.items():
        split = rows(*spec.example)
        assert detect_format(split) == name
        examples = convert_split(split, name)
        assert examples and all(e.messages or e.text for e in examples), name


def convert_split(split: Rows, name: str) -> list[Example]:
    reading = Reading(labels=class_labels(split) if name == "classification" else None)
    return formats.convert(formats.assemble(split, name, reading), name, reading)


def test_the_docs_table_of_formats_is_the_registrys():
    assert markdown_table() in (REPO / "docs" / "data.md").read_text()


def test_every_flag_the_data_docs_name_is_an_option_of_the_command_line():
    named = set(re.findall(r"(--[a-z][a-z-]+)", (REPO / "docs" / "data.md").read_text()))
    help_text = capture("--help")[2]
    assert {flag for flag in named if f"{flag} " not in help_text and f"{flag}/" not in help_text} == set()


def test_options_whose_choices_a_registry_supplies_are_offered_and_checked_by_the_cli(tmp_path):
    supplied = {name for name, spec in CONFIG_FIELDS.items() if spec.metadata["choices_from"]}
    assert supplied == set(SUPPLIED_CHOICES) == {"format"}
    code, seen, output = capture("--format", "jsonl")
    assert code == 2 and "'jsonl' is not one of 'auto', 'messages'," in output
    config = tmp_path / "run.yaml"
    config.write_text("format: jsonl\n")
    code, seen, output = capture("--config", str(config))
    assert code == 2 and not seen and "--format must be one of auto, messages, sharegpt," in output
    with pytest.raises(DataError, match="--format must be one of auto, messages"):
        formats.check_choice("jsonl")
