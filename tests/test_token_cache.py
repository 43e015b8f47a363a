"""Tokenized data is written once as Arrow, keyed by everything that changes it, and memory-mapped by later runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers import dialogue, write_jsonl

from llama_lora.data import token_cache
from llama_lora.data.audit import build_audit
from llama_lora.data.prepare import data_hash, prepare
from llama_lora.errors import DataError
from llama_lora.options.config import TrainConfig


def cfg(dataset: Path, cache: Path | str, **overrides) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), model="smollm2", data_cache=str(cache), **overrides)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "d.jsonl", [dialogue(f"What is {a} + 1?", f"It is {a + 1}.") for a in range(12)])


def test_a_second_run_reads_the_same_rows_from_the_cache_memory_mapped(data: Path, tmp_path: Path,
                                                                        smollm2_tokenizer):
    first = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    second = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    assert first.cache["built"] and not second.cache["built"]
    assert first.cache["path"] == second.cache["path"] and Path(first.cache["path"]).parent == tmp_path / "cache"
    assert list(second.train.rows) == list(first.train.rows) and len(second.eval.rows) == 1
    # the hash written at build time is the hash of the rows read back
    assert second.hash == data_hash([*second.train.rows, *second.eval.rows])
    table = second.train.rows.dataset
    assert table.cache_files and table.cache_files[0]["filename"].startswith(second.cache["path"])  # a file, mapped


def test_a_changed_source_file_is_never_served_stale(data: Path, tmp_path: Path, smollm2_tokenizer):
    before = prepare(cfg(data, tmp_path / "cache", eval_fraction=0), smollm2_tokenizer)
    write_jsonl(data, [dialogue("What is 7 + 1?", "It is 8, not 9.")])
    after = prepare(cfg(data, tmp_path / "cache", eval_fraction=0), smollm2_tokenizer)
    assert after.cache["built"] and after.cache["path"] != before.cache["path"]
    assert len(after.train.rows) == 1 and after.hash != before.hash


@pytest.mark.parametrize("change", [{"max_seq_length": 64}, {"loss_on": "all"}, {"role_map": "pupil=user"},
                                    {"seed": 1}, {"overlength": "truncate"}])
def test_every_option_that_changes_tokens_or_labels_changes_the_key(data: Path, smollm2_tokenizer, change: dict):
    assert token_cache.cache_key(cfg(data, "auto", **change), smollm2_tokenizer) != \
        token_cache.cache_key(cfg(data, "auto"), smollm2_tokenizer)
    changed = copy.deepcopy(smollm2_tokenizer)
    changed.chat_template = smollm2_tokenizer.chat_template.replace("helpful", "careful")
    assert token_cache.cache_key(cfg(data, "auto"), changed) != token_cache.cache_key(cfg(data, "auto"),
                                                                                      smollm2_tokenizer)


def test_an_unfinished_entry_is_rebuilt_not_used(data: Path, tmp_path: Path, smollm2_tokenizer):
    root = tmp_path / "cache"
    entry = root / token_cache.cache_key(cfg(data, root), smollm2_tokenizer)
    entry.mkdir(parents=True)
    (entry / "train.arrow").write_bytes(b"half a table")  # a build killed before it wrote its metadata
    prepared = prepare(cfg(data, root), smollm2_tokenizer)
    assert prepared.cache["built"] and len(prepared.train.rows) == 11
    assert [p.name for p in root.iterdir()] == [entry.name]  # no staging folder left behind


def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path: Path, smollm2_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dialogue("q", "a")) + "\n" + '{"messages": "oops"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2: field 'messages'"):
        prepare(cfg(bad, tmp_path / "cache"), smollm2_tokenizer)
    assert list((tmp_path / "cache").iterdir()) == []


def test_off_builds_privately_and_the_run_records_it(data: Path, tmp_path: Path, smollm2_tokenizer, monkeypatch):
    monkeypatch.setenv("LLAMA_LORA_DATA_CACHE", str(tmp_path / "default-cache"))
    prepared = prepare(cfg(data, "off"), smollm2_tokenizer)
    assert prepared.cache == {"path": "off", "built": True} and len(prepared.train.rows) == 11
    assert not (tmp_path / "default-cache").exists()
    audit = build_audit(prepared, 2048, "drop", "assistant", "the tokenizer's own")
    assert audit["cache"] == {"path": "off", "built": True} and audit["hash"] == prepared.hash


def test_clear_empties_the_cache(data: Path, tmp_path: Path, smollm2_tokenizer, capsys):
    prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    assert token_cache.main(["list", str(tmp_path / "cache")]) == 0
    assert "1 entries in" in capsys.readouterr().out
    assert token_cache.main(["clear", str(tmp_path / "cache")]) == 0
    assert list((tmp_path / "cache").iterdir()) == []


def test_tool_calling_data_read_from_the_cache_brings_its_template_along(tmp_path: Path, llama3_tokenizer):
    # a Llama 3 tokenizer whose template drops tools: the build switched it to Llama 3.1's, a cached run must too
    chats = write_jsonl(tmp_path / "tools.jsonl", [{"tools": [{"name": "add"}], "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]}])
    runs = []
    for _ in range(2):
        tokenizer = copy.deepcopy(llama3_tokenizer)
        tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
        runs.append((prepare(cfg(chats, tmp_path / "cache", eval_fraction=0), tokenizer), tokenizer))
    (first, first_tokenizer), (second, second_tokenizer) = runs
    assert first.cache["built"] and not second.cache["built"]
    assert second.template == first.template and second.template.startswith("Llama 3.1")
    assert second_tokenizer.chat_template == first_tokenizer.chat_template  # saved with the adapter: serving agrees
