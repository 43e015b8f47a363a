"""Each option is declared once (config.py `_opt`): whether it changes what is computed, where metrics.json
shows its effect, and its type. The fairness check, the resume check, the recorded trainer arguments and the
CLI's types are derived from those declarations, so a new option cannot be forgotten in one of them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from llama_lora.errors import UsageError
from llama_lora.options.config import (
    CONFIG_FIELDS,
    Machine,
    TrainConfig,
    computes,
    recorded_path,
    resolve,
    save_yaml,
    value_type,
)
from llama_lora.run import run_record
from llama_lora.run.compare import FAIRNESS, ComparedRun, fairness
from llama_lora.run.run_folder import check_same_config

CPU = Machine(cuda=False)
# a real run's record (see test_run_record.py)
RECORDED = json.loads((Path(__file__).parent / "fixtures" / "metrics_v1_main_f773af3.json").read_text())
# values a trainer accepts where "another value" cannot be made generically
OTHER_VALUE = {"lr_scheduler": "cosine", "optim": "adamw_torch", "dtype": "bfloat16", "target_modules": ("q_proj",)}
COMPUTING = [name for name in CONFIG_FIELDS if computes(name)]
BOOKKEEPING = [name for name in CONFIG_FIELDS if not computes(name)]


def resolved() -> TrainConfig:
    return resolve(TrainConfig(), "peft", CPU)


def other_value(name: str, value: Any) -> Any:
    """A valid value different from `value` for the field `name`."""
    if name in OTHER_VALUE:
        return OTHER_VALUE[name]
    choices = CONFIG_FIELDS[name].metadata["choices"]
    if choices:
        return next(choice for choice in choices if choice != value)
    kind = value_type(name)
    if kind is bool:
        return not value
    if kind is int:
        return value + 1
    if kind is float:
        return value / 2 if value else 0.5
    return f"{value}-other"


def other_recorded(value: Any) -> Any:
    """Another value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "other"]
    return f"{value}-other"


def with_path(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of a nested record with the dotted `path` set to `value`."""
    *parents, key = path.split(".")
    copy = {**record}
    target = copy
    for parent in parents:
        target[parent] = {**target.get(parent, {})}
        target = target[parent]
    target[key] = value
    return copy


def test_the_declared_types_match_the_defaults_and_resolve_auto_fields():
    for name, spec in CONFIG_FIELDS.items():
        if spec.default is not None:
            assert isinstance(spec.default, value_type(name)), name
    assert {name: value_type(name) for name in ("lora_alpha", "load_in_4bit", "max_steps", "model")} == {
        "lora_alpha": int, "load_in_4bit": bool, "max_steps": int, "model": str}


@pytest.mark.parametrize("name", COMPUTING)
def test_every_compute_changing_option_is_compared_by_the_fairness_check(name: str, tmp_path: Path):
    path = recorded_path(name)
    assert path in FAIRNESS.values()
    a = ComparedRun(tmp_path, run_record.parse(RECORDED))
    b = ComparedRun(tmp_path, run_record.parse(with_path(RECORDED, path, other_recorded(a.get(path)))))
    assert [m["setting"] for m in fairness(a, b)] == [k for k, v in FAIRNESS.items() if v == path]


def test_options_recorded_as_trainer_arguments_are_recorded_with_their_value():
    """In a real run's record, each such trainer argument holds the option's value (warm-up: a share)."""
    for name in CONFIG_FIELDS:
        if recorded_path(name).startswith("training_args."):
            assert run_record.parse(RECORDED).value(recorded_path(name)) == RECORDED["config"][name], name


@pytest.mark.parametrize("name", COMPUTING)
def test_resume_refuses_a_change_to_every_compute_changing_option(name: str, tmp_path: Path):
    cfg = resolved()
    save_yaml(cfg, tmp_path / "config.yaml")
    changed = dataclasses.replace(cfg, **{name: other_value(name, getattr(cfg, name))})
    with pytest.raises(UsageError, match=f"--resume with other options than the interrupted run: {name}:"):
        check_same_config(tmp_path, changed)


def test_resume_accepts_changes_to_bookkeeping_options_only(tmp_path: Path):
    assert set(BOOKKEEPING) == {"data_workers", "save_steps", "keep_checkpoints", "samples", "sample_max_tokens",
                                "output_dir", "report_to", "experiment", "run_name",
                                "data_cache"}
    cfg = resolved()
    save_yaml(cfg, tmp_path / "config.yaml")
    check_same_config(tmp_path, dataclasses.replace(cfg, **{n: other_value(n, getattr(cfg, n)) for n in BOOKKEEPING}))
