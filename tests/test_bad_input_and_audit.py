"""Through the real command line (in process, PEFT backend): bad data stops the run with status 2, a message
naming file, line and field, and nothing written; --dry-run prints the audit and a marked example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import dialogue, load_script, write_jsonl

from llama_lora.data.audit import build_audit, percentiles, render_marked
from llama_lora.data.prepare import prepare
from llama_lora.options.config import TrainConfig


@pytest.fixture(scope="module")
def peft_cli():
    return load_script("lora_peft_finetuning.py").main


GOOD = json.dumps(dialogue("ok?", "ok."))
BAD_INPUTS = {
    "malformed JSON": ('{"messages": [', "d.jsonl:2: malformed JSON"),
    "missing field": ('{"messages": [{"role": "student"}, {"role": "teacher", "content": "x"}]}',
                      "d.jsonl:2: field 'messages[0].content': expected a non-empty string"),
    "wrong type": ('{"messages": [{"role": "student", "content": ["hi"]}, {"role": "teacher", "content": "x"}]}',
                   "d.jsonl:2: field 'messages[0].content[0]': expected a text part"),
    "unknown role": ('{"messages": [{"role": "pupil", "content": "hi"}]}',
                     "d.jsonl:2: field 'messages[0].role': unknown role 'pupil', expected one of"),
    "no assistant turn": ('{"messages": [{"role": "student", "content": "hi"}]}', "d.jsonl:2: no assistant turn"),
    "empty file": (None, "d.jsonl: empty file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_names_the_place_and_writes_nothing(peft_cli, tmp_path: Path, case: str):
    second_line, message = BAD_INPUTS[case]
    data = tmp_path / "d.jsonl"
    data.write_text("\n" if second_line is None else GOOD + "\n" + second_line + "\n")
    out = tmp_path / "runs" / "peft"
    result = CliRunner().invoke(peft_cli, ["--dataset", str(data), "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dry_run_prints_audit_and_marked_example_and_writes_nothing(peft_cli, tiny_dataset: Path, tmp_path: Path):
    out = tmp_path / "runs" / "peft"
    result = CliRunner().invoke(peft_cli, ["--dataset", str(tiny_dataset), "--output-dir", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "rows read" in result.stdout and "supervised tokens" in result.stdout
    assert "[[Multiplying by 3 means adding three copies." in result.stdout
    assert "Quick check: What is 7 times 3?<|im_end|>]]" in result.stdout
    assert "Dry run: no model weights loaded" in result.stdout
    assert ", batch 2: expected padding " in result.stdout  # predicted before any weight loads
    assert not (tmp_path / "runs").exists()


def test_audit_counts_what_was_read_dropped_and_supervised(tmp_path: Path, smollm2_tokenizer):
    rows = [dialogue(f"Question {i}?", "Answer.") for i in range(8)] + [dialogue("Long?", "word " * 80)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = TrainConfig(dataset=str(path), model="smollm2", max_seq_length=48, eval_fraction=0)
    audit = build_audit(prepare(cfg, smollm2_tokenizer), 48, "drop", "assistant", "the tokenizer's own")
    train = audit["splits"]["train"]
    assert (train["rows_read"], train["rows_kept"]) == (9, 8)
    assert train["rows_dropped"]["longer than --max-seq-length (--overlength drop)"] == {
        "count": 1, "rows": [f"{path}:9"]}
    assert train["over_length"]["rows"] == 1 and train["over_length"]["supervised_tokens_beyond_limit"] > 0
    # "Answer.<|im_end|>" is 3 tokens in each kept row
    assert train["supervised_tokens"] == 8 * 3
    assert train["supervised_share"] == round(24 / train["tokens"], 4)
    assert train["length_tokens"]["max"] > 48 >= train["length_tokens"]["p50"]
    assert "eval" not in audit["splits"] and len(audit["hash"]) == 64


def test_percentiles_use_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"min": 1, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7]) == {"min": 7, "p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7}


def test_marked_rendering_wraps_exactly_the_trained_tokens(smollm2_tokenizer):
    ids = smollm2_tokenizer("Hi there", add_special_tokens=False)["input_ids"]
    assert render_marked(smollm2_tokenizer, {"input_ids": ids, "labels": [-100, ids[1]]}) == "Hi[[ there]]"


def test_a_bad_row_names_the_option_that_trains_the_other_rows(peft_cli, tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD + "\n" + BAD_INPUTS["missing field"][0] + "\n")
    result = CliRunner().invoke(peft_cli, ["--dataset", str(data), "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("--bad-rows skip leaves such rows out and names them in the audit")


def test_bad_rows_skip_trains_the_rest_and_names_each_skipped_row_with_its_reason(peft_cli, tmp_path: Path):
    slimorca = {"conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "Hi?", "weight": 0.0},
                                  {"from": "gpt", "value": "Hello.", "weight": 1.0}], "source": "orca"}
    rows = [slimorca] * 3 + [{"conversations": [{"from": "human", "value": "Hi?"},
                                                {"from": "gpt", "value": "Hello.", "weight": 0.5}]}, slimorca]
    data = write_jsonl(tmp_path / "slimorca.jsonl", rows)
    result = CliRunner().invoke(peft_cli, ["--dataset", str(data), "--dry-run", "--bad-rows", "skip",
                                           "--eval-fraction", "0", "--data-cache", "off"])
    assert result.exit_code == 0, result.output
    assert re.search(r"│ rows read +│ +5 │", result.stdout) and re.search(r"│ rows kept +│ +4 │", result.stdout)
    assert re.search(r"│ bad rows skipped \(--bad-rows skip\) +│ +1 │", result.stdout)
    assert (f"train: skipped {data}:4: field 'conversations[1].weight': expected 0 (not trained) or 1 (trained), "
            "got 0.5") in result.stdout
    assert "train: fields not trained on: source (4 rows)" in result.stdout


def test_the_audit_names_the_first_skipped_rows_and_counts_them_all(tmp_path: Path, smollm2_tokenizer):
    rows = [dialogue("Q?", "A.")] + [{"messages": [{"role": "user", "content": "Q?"}]}] * 7
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = TrainConfig(dataset=str(path), model="smollm2", eval_fraction=0, bad_rows="skip", data_cache="off")
    train = build_audit(prepare(cfg, smollm2_tokenizer), 2048, "drop", "assistant", "own")["splits"]["train"]
    assert (train["rows_read"], train["rows_kept"], train["rows_skipped"]["count"]) == (8, 1, 7)
    assert train["rows_skipped"]["rows"] == [f"{path}:{line}: no assistant turn (after the role map), so nothing to "
                                             "learn from" for line in range(2, 7)]
