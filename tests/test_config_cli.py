"""The config and CLI: one definition, auto values resolved per machine, YAML < flags, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, capture_cli

from llama_lora.backend import BACKENDS, Backend, lora_settings
from llama_lora.options.config import (
    ALL_LINEAR,
    ConfigError,
    Machine,
    TrainConfig,
    build,
    load_yaml,
    resolve,
    save_yaml,
)
from llama_lora.train.cli import build_cli

CPU = Machine(cuda=False, cpu_bf16=False)
GPU = Machine(cuda=True, cuda_bf16=True)


def test_defaults_match_the_product_spec():
    cfg = TrainConfig()
    assert cfg.r == 16
    assert cfg.max_seq_length == 2048
    assert cfg.target_modules == ALL_LINEAR
    assert cfg.lora_dropout == 0.0


def test_gpu_machine_defaults_to_llama_31_8b_instruct_in_4bit():
    cfg = resolve(TrainConfig(), "peft", GPU)
    assert (cfg.model, cfg.load_in_4bit, cfg.dtype) == ("llama-3.1-8b-instruct", True, "bfloat16")


def test_cpu_machine_defaults_to_embedded_smollm2_in_16bit():
    cfg = resolve(TrainConfig(), "unsloth", CPU)
    assert (cfg.model, cfg.load_in_4bit, cfg.dtype) == ("smollm2", False, "float32")
    assert resolve(TrainConfig(), "unsloth", Machine(cuda=False, cpu_bf16=True)).dtype == "bfloat16"


def test_cpu_machine_defaults_to_a_short_demo_run_and_gpu_to_full_epochs():
    assert resolve(TrainConfig(), "peft", CPU).max_steps == 60  # the embedded model's demo (test_recipe.py)
    assert resolve(TrainConfig(), "peft", GPU).max_steps == -1
    assert resolve(build({"max_steps": -1}), "peft", CPU).max_steps == -1


def test_output_dir_defaults_to_one_folder_per_backend():
    assert resolve(TrainConfig(), "peft", CPU).output_dir == "llama-3.1-lora-finetuned/peft"
    assert resolve(TrainConfig(), "unsloth", CPU).output_dir == "llama-3.1-lora-finetuned/unsloth"


def test_lora_alpha_defaults_to_twice_the_rank_and_explicit_values_win():
    assert resolve(build({"r": 8}), "peft", CPU).lora_alpha == 16
    assert resolve(build({"r": 8, "lora_alpha": 8}), "peft", CPU).lora_alpha == 8


def test_target_modules_accept_a_comma_list_or_a_yaml_list():
    assert build({"target_modules": "q_proj, v_proj"}).target_modules == ("q_proj", "v_proj")
    assert build({"target_modules": ["q_proj", "v_proj"]}).target_modules == ("q_proj", "v_proj")


def test_lora_settings_are_the_same_keywords_for_both_backends():
    cfg = resolve(build({"r": 8, "use_rslora": True}), "peft", CPU)
    assert lora_settings(cfg) == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": list(ALL_LINEAR),
                                  "use_rslora": True, "use_dora": False, "bias": "none"}


@pytest.mark.parametrize("values, flag", [
    ({"r": 0}, "--r"),
    ({"lora_dropout": 1.5}, "--lora-dropout"),
    ({"dtype": "float8"}, "--dtype"),
    ({"eval_fraction": 1.0}, "--eval-fraction"),
    ({"max_steps": 0}, "--max-steps"),
])
def test_out_of_range_values_are_rejected_naming_the_flag(values, flag):
    with pytest.raises(ConfigError, match=flag):
        resolve(build(values), "peft", CPU)


def test_wrongly_typed_value_names_the_field():
    with pytest.raises(ConfigError, match="batch_size: expected an integer, got 'four'"):
        build({"batch_size": "four"})


def test_yaml_unknown_key_is_rejected_with_file_and_known_keys(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("rank: 8\n")
    with pytest.raises(ConfigError, match=r"run.yaml:1: unknown option 'rank'. Known options: model, dataset, .*, r, "):
        load_yaml(path)


def test_flags_override_the_yaml_file_which_overrides_defaults(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("r: 8\nlearning-rate: 0.001\nseed: 7\n")
    code, cfg, output = capture_cli("--config", str(path), "--r", "32", "--model", "smollm2")
    assert code == 0, output
    assert (cfg.r, cfg.learning_rate, cfg.seed) == (32, 0.001, 7)
    assert cfg.grad_accum == resolve(build({"model": "smollm2"}), "peft", CPU).grad_accum  # untouched: the default


def test_saved_config_replays_the_same_resolved_run(tmp_path: Path):
    cfg = resolve(build({"r": 4, "target_modules": "q_proj,v_proj", "model": "smollm2"}), "peft", CPU)
    save_yaml(cfg, tmp_path / "config.yaml")
    code, replayed, output = capture_cli("--config", str(tmp_path / "config.yaml"))
    assert code == 0, output
    assert replayed == cfg


def test_bad_flag_value_exits_2_with_the_flag_named():
    code, cfg, output = capture_cli("--r", "-4")
    assert code == 2 and cfg is None
    assert "--r must be a positive integer" in output


def test_help_of_both_scripts_is_identical_apart_from_the_backend_name():
    def help_text(script: str) -> str:
        result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                                check=True)
        return result.stdout

    peft_help, unsloth_help = help_text("lora_peft_finetuning.py"), help_text("lora_unsloth_finetuning.py")
    assert "[default: 16]" in peft_help and "--load-in-4bit / --no-load-in-4bit" in peft_help
    normalized = unsloth_help.replace("lora_unsloth_finetuning.py", "lora_peft_finetuning.py")
    assert normalized.replace("Unsloth backend", "PEFT backend") == peft_help


def test_data_choices_are_checked_by_the_cli_and_by_validate():
    code, _, output = capture_cli("--overlength", "cut")
    assert code == 2 and "'cut' is not one of 'drop', 'truncate', 'error'" in output
    with pytest.raises(ConfigError, match="--loss-on must be one of assistant, last-assistant, all"):
        resolve(build({"loss_on": "users"}), "peft", CPU)


def test_role_map_may_be_a_yaml_mapping(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("role_map:\n  bot: assistant\n  customer: user\n")
    assert build(load_yaml(path)).role_map == "bot=assistant,customer=user"


def test_dry_run_reaches_the_runner_as_a_mode_not_a_config_field():
    seen = []
    cli = build_cli(Backend(BACKENDS["peft"], load=lambda cfg, path, trust_remote_code: None),
                    train=lambda cfg, backend, options: seen.append(options) or 0)
    assert CliRunner().invoke(cli, ["--dry-run"]).exit_code == 0 and seen[-1].dry_run
    assert CliRunner().invoke(cli, ["--resume"]).exit_code == 0 and seen[-1].resume == "latest"
    assert CliRunner().invoke(cli, ["--resume", "ck/checkpoint-4"]).exit_code == 0 and seen[-1].resume == "ck/checkpoint-4"
    assert "dry_run" not in TrainConfig.__dataclass_fields__ and "resume" not in TrainConfig.__dataclass_fields__


def test_resume_and_overwrite_contradict_each_other():
    code, cfg, output = capture_cli("--resume", "--overwrite")
    assert code == 2 and cfg is None and "pick one" in output
