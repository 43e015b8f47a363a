"""Rows come from local files of every common type, from folders, from saved datasets and from the hub,
each row keeping where it came from so errors can name it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llama_lora.data.sources import Rows, eval_split, pick_split, read_splits, split_spec
from llama_lora.errors import DataError

ROWS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(3)]


def write(path: Path, rows: list[dict] = ROWS) -> Path:
    """Write rows in the file type the suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix, where", [
    (".jsonl", "d.jsonl:3"), (".json", "d.json: item [2]"), (".csv", "d.csv:line 4"), (".parquet", "d.parquet: row 2"),
])
def test_each_file_type_reads_the_same_rows_and_names_them(tmp_path: Path, suffix: str, where: str):
    splits = read_splits(str(write(tmp_path / f"d{suffix}")))
    assert list(splits) == ["train"]
    assert splits["train"].records == ROWS
    assert splits["train"].wheres[2].endswith(where)


def test_json_lines_content_in_a_json_file_is_read_line_by_line(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_splits(str(path))["train"].records == ROWS


def test_folder_files_become_splits_and_eval_is_found_by_name(tmp_path: Path):
    write(tmp_path / "train.csv")
    write(tmp_path / "validation.parquet", ROWS[:1])
    splits = read_splits(str(tmp_path))
    assert set(splits) == {"train", "validation"}
    assert eval_split(splits, "train").records == ROWS[:1]


def test_saved_dataset_dict_loads_with_class_label_names(tmp_path: Path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data = DatasetDict({
        "train": Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]}, features=features),
        "test": Dataset.from_dict({"text": ["fine"], "label": [1]}, features=features),
    })
    data.save_to_disk(str(tmp_path / "saved"))
    splits = read_splits(str(tmp_path / "saved"))
    assert splits["train"].records == [{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}]
    assert eval_split(splits, "train").wheres == [f"{tmp_path / 'saved'}[test]: row 0"]


def test_hub_layout_folder_goes_through_datasets_load_dataset(tmp_path: Path):
    # The same call that downloads a hub dataset, on a folder laid out like a hub repository.
    (tmp_path / "hub" / "data").mkdir(parents=True)
    write(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    write(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet", ROWS[:2])
    splits = read_splits(str(tmp_path / "hub"))
    assert pick_split(splits, "train", "hub").records == ROWS
    assert eval_split(splits, "train").records == ROWS[:2]


def test_unknown_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="no-such-org/no-such-dataset: cannot load with datasets.load_dataset"):
        read_splits("no-such-org/no-such-dataset")


def test_missing_split_lists_the_splits_there_are(tmp_path: Path):
    write(tmp_path / "train.jsonl")
    with pytest.raises(DataError, match=r"no split named 'dev' \(--dataset-split\); it has: train"):
        pick_split(read_splits(str(tmp_path)), "dev", str(tmp_path))


@pytest.mark.parametrize("name, content, message", [
    ("d.jsonl", '{"a": 1}\n{"a": \n', r"d.jsonl:2: malformed JSON"),
    ("d.jsonl", "\n\n", r"d.jsonl: empty file"),
    ("d.json", '[{"a": 1},\n {"a": }]', r"d.json:2: malformed JSON"),
    ("d.json", '"just a string"', r"d.json: expected a JSON array of row objects, got a str"),
    ("d.csv", "a,b\n1,2\n3,4,5\n", r"d.csv:line 3: 3 cells but the header names 2 columns"),
    ("d.csv", "a,b\n", r"d.csv: empty file"),
    ("d.parquet", "not parquet", r"d.parquet: cannot read as parquet"),
    ("d.txt", "hello", r"d.txt: unsupported file type '.txt'"),
])
def test_unreadable_files_name_the_file_and_line(tmp_path: Path, name: str, content: str, message: str):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_splits(str(tmp_path / name))


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_splits(str(tmp_path / "nope.jsonl"))


def test_a_csv_record_spanning_lines_is_named_by_its_first_line(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\nSay hi.,hi\n"Write a poem\nof\nfive\nlines\nplease",ok\nSay bye.,bye\n')
    rows = read_splits(str(path))["train"]
    assert [where.rsplit(":", 1)[1] for where in rows.wheres] == ["line 2", "line 3", "line 8"]
    assert rows.records[1]["instruction"] == "Write a poem\nof\nfive\nlines\nplease"
    path.write_text('a,b\n1,2\n"x\ny",2,3\n')
    with pytest.raises(DataError, match=r"d.csv:line 3: 3 cells but the header names 2 columns"):
        read_splits(str(path))


def test_parquet_rows_keep_only_their_own_keys_inside_nested_objects(tmp_path: Path):
    rows = [{"tools": [{"name": "weather", "parameters": {"city": {"type": "string"}}}]},
            {"tools": [{"name": "search", "parameters": {"query": {"type": "string"}}}]}]
    write(tmp_path / "d.parquet", rows)
    assert read_splits(str(tmp_path / "d.parquet"))["train"].records == rows


@pytest.mark.parametrize("spec, expected", [
    ("data/folder:test_sft", ("data/folder", "test_sft")),
    ("org/name:validation", ("org/name", "validation")),
    ("org/name", ("org/name", None)),
    ("C:\\data\\train.jsonl", ("C:\\data\\train.jsonl", None)),
    ("folder:", ("folder:", None)),
])
def test_a_source_may_name_its_split_after_a_colon(spec: str, expected: tuple):
    assert split_spec(spec) == expected


def test_a_path_that_exists_with_a_colon_is_a_path(tmp_path: Path):
    path = write(tmp_path / "a:b.jsonl")
    assert split_spec(str(path)) == (str(path), None)


@pytest.mark.parametrize("names, train, held", [
    (["train", "validation", "test"], "train", "validation"),
    (["train_sft", "test_sft", "train_gen", "test_gen"], "train_sft", "test_sft"),
    (["train_gen", "test_sft", "test_gen"], "train_gen", "test_gen"),
    (["train", "test_2024"], "train", "test_2024"),
    (["train", "eval", "test_sft"], "train", "eval"),
    (["train"], "train", None),
])
def test_the_held_out_split_is_found_by_name_prefix_and_matching_suffix(names: list, train: str, held: str | None):
    splits = {name: Rows([name], [name], name) for name in names}
    found = eval_split(splits, train)
    assert (found.source if found else None) == held


def test_an_ambiguous_held_out_split_asks_for_one_by_name():
    splits = {name: Rows([name], [name], name) for name in ("train", "test_a", "test_b")}
    with pytest.raises(DataError, match=r"hub: several held-out splits \(test_a, test_b\); pick one with "
                                        r"--eval-dataset hub:SPLIT"):
        eval_split(splits, "train", "hub")
