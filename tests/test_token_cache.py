"""Tokenized data is written once as Arrow, keyed by everything that changes it, and memory-mapped by later runs;
an entry is verified whenever it is used, and clearing the cache removes its own folders only."""

from __future__ import annotations

import copy
import json
import re
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
                                    {"seed": 1}, {"overlength": "truncate"}, {"columns": "messages=conversation"},
                                    {"reasoning": "drop"}, {"tree_paths": "all"}, {"bad_rows": "skip"},
                                    {"format": "sharegpt"}, {"dataset_split": "test"}, {"eval_fraction": 0.5}])
def test_every_option_that_changes_tokens_or_labels_changes_the_key(data: Path, smollm2_tokenizer, change: dict):
    assert token_cache.cache_key(cfg(data, "auto", **change), smollm2_tokenizer) != \
        token_cache.cache_key(cfg(data, "auto"), smollm2_tokenizer)
    changed = copy.deepcopy(smollm2_tokenizer)
    changed.chat_template = smollm2_tokenizer.chat_template.replace("helpful", "careful")
    assert token_cache.cache_key(cfg(data, "auto"), changed) != token_cache.cache_key(cfg(data, "auto"),
                                                                                      smollm2_tokenizer)


def test_a_folders_split_suffix_keys_that_split(tmp_path: Path, smollm2_tokenizer):
    folder = tmp_path / "chats"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [dialogue("Hi?", "Hello.")])
    write_jsonl(folder / "test.jsonl", [dialogue("Bye?", "Goodbye.")])
    whole = token_cache.cache_key(cfg(folder, "auto", eval_dataset=str(folder)), smollm2_tokenizer)
    test_split = token_cache.cache_key(cfg(folder, "auto", eval_dataset=f"{folder}:test"), smollm2_tokenizer)
    assert whole != test_split


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


def test_clear_removes_only_the_caches_own_folders_and_the_users_survive(data: Path, tmp_path: Path,
                                                                          smollm2_tokenizer, capsys):
    root = tmp_path / "folder"
    prepare(cfg(data, root), smollm2_tokenizer)
    half_built = token_cache.staging_entry(root, "0" * 24)  # a build killed before it wrote anything
    older = root / "5f0c2a9e3b1d4c7a8e6f0b2d"  # an entry written before entries carried the marker
    older.mkdir()
    (older / "meta.json").write_text("{}")
    (older / "train.arrow").write_bytes(b"table")
    for name, files in {"photos": ["cat.jpg"], "thesis": ["draft.tex", "meta.json"], "0123456789abcdef01234567": [
            "notes.txt"], "empty": []}.items():  # the last two: a hex name, or nothing inside, is not enough
        (root / name).mkdir()
        for file in files:
            (root / name / file).write_text("the user's")
    (root / "todo.txt").write_text("a file of the user's")
    assert token_cache.main(["clear", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Removed 3 entries from {root}\n")
    assert "Left 4 other folders alone (not cache entries): 0123456789abcdef01234567, empty, photos, thesis" in out
    assert sorted(p.name for p in root.iterdir()) == ["0123456789abcdef01234567", "empty", "photos", "thesis",
                                                      "todo.txt"]
    assert (root / "photos" / "cat.jpg").read_text() == "the user's" and not half_built.exists()


def test_an_entry_carries_the_caches_marker_from_its_first_moment(tmp_path: Path):
    staging = token_cache.staging_entry(tmp_path / "cache", "a" * 24)
    assert [p.name for p in staging.iterdir()] == [token_cache.MARKER] and token_cache.is_entry(staging)


def damage_truncate_table(entry: Path) -> None:
    table = entry / "train.arrow"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])


def damage_truncate_meta(entry: Path) -> None:
    meta = entry / "meta.json"
    meta.write_text(meta.read_text()[:40])


def damage_edit_recorded_hash(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "hash": "0" * 64}))  # valid JSON, another data hash


def damage_remove_table(entry: Path) -> None:
    (entry / "train.arrow").unlink()


@pytest.mark.parametrize("damage, why", [
    (damage_truncate_table, "train.arrow has .* bytes where its build wrote"),
    (damage_truncate_meta, "meta.json cannot be read"),
    (damage_edit_recorded_hash, "meta.json is not the one its build wrote"),
    (damage_remove_table, "train.arrow is missing"),
])
def test_a_damaged_entry_is_rebuilt_with_one_line_saying_why(data: Path, tmp_path: Path, smollm2_tokenizer, capsys,
                                                            damage, why: str):
    clean = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    rows = list(clean.train.rows)  # read before the damage: the table is memory-mapped, a truncated map faults
    damage(Path(clean.cache["path"]))
    capsys.readouterr()
    again = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.fullmatch(f"Tokenized-data cache: {re.escape(clean.cache['path'])}: {why}.*; "
                                            "rebuilding it.", lines[0]), lines
    assert again.cache == {"path": clean.cache["path"], "built": True}
    assert list(again.train.rows) == rows and again.hash == clean.hash


def test_a_same_size_change_to_the_token_ids_is_caught_and_the_recorded_hash_is_of_the_rows_trained(
        data: Path, tmp_path: Path, smollm2_tokenizer, capsys):
    clean = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    table = Path(clean.cache["path"]) / "train.arrow"
    ids = clean.train.rows[0]["input_ids"][:8]
    original = b"".join(i.to_bytes(4, "little") for i in ids)
    changed = b"".join(i.to_bytes(4, "little") for i in [*ids[:4], ids[4] + 1, *ids[5:]])
    assert table.read_bytes().count(original) >= 1
    table.write_bytes(table.read_bytes().replace(original, changed, 1))  # same size, one token id different
    again = prepare(cfg(data, tmp_path / "cache"), smollm2_tokenizer)
    assert "train.arrow holds other bytes than its build wrote (same size" in capsys.readouterr().err
    assert again.train.rows[0]["input_ids"][:8] == ids  # rebuilt: the rows trained on are the clean ones
    assert again.hash == clean.hash == data_hash([*again.train.rows, *again.eval.rows])


def test_a_damaged_entry_never_stops_a_run(tmp_path: Path, tiny_dataset: Path):
    from click.testing import CliRunner
    from helpers import load_script

    cli = load_script("lora_peft_finetuning.py").main
    args = ["--dataset", str(tiny_dataset), "--data-cache", str(tmp_path / "cache"), "--dry-run"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (entry,) = [p for p in (tmp_path / "cache").iterdir()]
    damage_truncate_table(entry)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("rebuilding it.") == 1 and "Traceback" not in result.output


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
