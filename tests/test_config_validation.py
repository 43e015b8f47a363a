"""Every option value is checked before anything loads: names against the installed transformers' own lists, seeds
in numpy's range, finite numbers, YAML values of the option's exact type, no empty text standing for a default.
Each bad value exits 2 with one line naming the flag (or the file and line) and what was expected; the training
runner is never reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import capture_cli

from llama_lora.options import trainer_names
from llama_lora.options.config import ConfigError, build, load_yaml

MAX_SEED = 2**32 - 1  # numpy's seeds: 0 to 2**32 - 1


def refused(*args: str) -> str:
    """The CLI's output for arguments it must refuse before training (exit 2, no traceback)."""
    code, cfg, output = capture_cli(*args)
    assert code == 2 and cfg is None, output
    assert "Traceback" not in output
    return output


def test_scheduler_and_optimizer_names_are_the_installed_transformers_own():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert trainer_names.schedulers() == tuple(member.value for member in SchedulerType)
    assert trainer_names.optimizers() == tuple(member.value for member in OptimizerNames)


@pytest.mark.parametrize("flag, value", [("--lr-scheduler", "bogus"), ("--optim", "bogus")])
def test_an_unknown_scheduler_or_optimizer_is_refused_before_anything_loads(flag: str, value: str):
    output = refused(flag, value)
    assert f"{flag} 'bogus' is not a name the installed transformers knows; expected one of " in output
    assert ("cosine_with_restarts" if flag == "--lr-scheduler" else "adamw_torch_fused") in output


def test_every_scheduler_transformers_knows_is_accepted():
    for name in trainer_names.schedulers():
        code, cfg, output = capture_cli("--lr-scheduler", name)
        assert code == 0 and cfg.lr_scheduler == name, output


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1)])
def test_a_seed_outside_numpys_range_is_refused(seed: str):
    assert f"--seed must be in [0, {MAX_SEED}]" in refused("--seed", seed)


@pytest.mark.parametrize("seed", [0, MAX_SEED])
def test_the_seed_range_ends_are_accepted(seed: int):
    code, cfg, output = capture_cli("--seed", str(seed))
    assert code == 0 and cfg.seed == seed, output


@pytest.mark.parametrize("flag", ["--learning-rate", "--weight-decay", "--epochs", "--lora-dropout", "--warmup-ratio",
                                  "--eval-fraction"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_numbers_must_be_finite(flag: str, value: str):
    assert f"{flag} must be a finite number, got {float(value)!r}" in refused(flag, value)


def test_a_negative_weight_decay_is_refused():
    assert "--weight-decay must be 0 or positive" in refused("--weight-decay", "-0.1")


@pytest.mark.parametrize("flag", ["--output-dir", "--model", "--dataset", "--data-cache", "--eval-dataset",
                                  "--lr-scheduler"])
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_text_is_refused_never_taken_for_the_default(flag: str, value: str):
    assert f"{flag} must not be empty" in refused(flag, value)


@pytest.mark.parametrize("line, message", [
    ("r: 1.9", "r: expected an integer, got 1.9"),
    ("max_steps: 2.7", "max_steps: expected an integer, got 2.7"),
    ("max_steps: 2.0", "max_steps: expected an integer, got 2.0"),
    ("r: true", "r: expected an integer, got True"),
    ("learning_rate: true", "learning_rate: expected a number, got True"),
    ("learning_rate: fast", "learning_rate: expected a number, got 'fast'"),
    ("use_dora: 1", "use_dora: expected true or false, got 1"),
    ("lr_scheduler: 3", "lr_scheduler: expected a string, got 3"),
    ("model: [a, b]", "model: expected a string, got ['a', 'b']"),
    ("r: null", "r: expected a value, got null (only options whose default is auto take null)"),
    ("target_modules: [1, 2]", "target_modules: expected module names (a comma-separated string or a list of "
                               "strings), got [1, 2]"),
])
def test_yaml_values_must_have_the_options_type_exactly(tmp_path: Path, line: str, message: str):
    path = tmp_path / "run.yaml"
    path.write_text(f"seed: 3\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert str(caught.value) == f"{path}:2: {message}"  # the file, the line, the option, what was expected
    assert f"{path}:2: {message}" in refused("--config", str(path))


def test_yaml_numbers_in_their_usual_spellings_are_accepted(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-4\nweight_decay: 0\nepochs: 2\nlora_dropout: 0.05\n")  # 1e-4: a YAML string
    code, cfg, output = capture_cli("--config", str(path))
    assert code == 0, output
    assert (cfg.learning_rate, cfg.weight_decay, cfg.epochs, cfg.lora_dropout) == (1e-4, 0.0, 2.0, 0.05)
    assert isinstance(cfg.epochs, float) and isinstance(cfg.weight_decay, float)


def test_messages_name_the_type_in_words():
    with pytest.raises(ConfigError, match="^batch_size: expected an integer, got 'four'$"):
        build({"batch_size": "four"})
    with pytest.raises(ConfigError, match="^epochs: expected a number, got 'x'$"):
        build({"epochs": "x"})


def test_a_yaml_syntax_error_is_one_line_with_the_file_line_and_column(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("r: 8\nseed: [1,\n")
    output = refused("--config", str(path))
    assert output.strip().splitlines()[-1] == (f"Error: {path}:3:1: not valid YAML: expected the node content, but "
                                               "found '<stream end>'")


def test_auto_options_take_null_in_yaml(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("lora_alpha: null\nmax_steps: null\n")
    code, cfg, output = capture_cli("--config", str(path), "--r", "4")
    assert code == 0 and cfg.lora_alpha == 8, output
