"""A model's own Python code runs only when the command being run says --trust-remote-code.

The model here is the embedded SmolLM2 with a `shipped.py` next to its weights that config.json's and
tokenizer_config.json's auto_map point at (as a hub repository with custom code has): importing it writes a marker
file. It is a Llama underneath, so every command can load it without its code; the marker shows whether the code
ran. Each test gets its own marker path, so its shipped.py differs from the last one and transformers imports it
afresh instead of reusing a module imported by an earlier test.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import load_script, recording_cli

from llama_lora.options.config import TrainConfig, save_yaml

SHIPPED = """from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class ShippedConfig(LlamaConfig):
    pass


class ShippedModel(LlamaForCausalLM):
    config_class = ShippedConfig


class ShippedTokenizer(PreTrainedTokenizerFast):
    pass
"""
AUTO_MAP = {"AutoConfig": "shipped.ShippedConfig", "AutoModelForCausalLM": "shipped.ShippedModel"}


def ship_code(folder: Path) -> None:
    """Point the folder's config and tokenizer at a shipped.py, as a model with custom code does."""
    for name, auto_map in (("config.json", AUTO_MAP), ("tokenizer_config.json",
                                                        {"AutoTokenizer": [None, "shipped.ShippedTokenizer"]})):
        settings = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**settings, "auto_map": auto_map}))


@pytest.fixture(scope="module")
def shipping_model(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2 (its weights linked, not copied) with config and tokenizer pointing at shipped.py."""
    folder = tmp_path_factory.mktemp("models") / "shipping-model"
    folder.mkdir()
    for item in Path(smollm2_path).iterdir():
        if item.suffix == ".safetensors":
            os.symlink(item, folder / item.name)
        else:
            shutil.copy(item, folder)
    ship_code(folder)
    return folder


@pytest.fixture
def marker(shipping_model: Path, tmp_path: Path, monkeypatch) -> Path:
    """Where the shipped code, if it runs, writes; transformers' copies of model code go to a temporary folder."""
    import transformers.dynamic_module_utils as dynamic

    path = tmp_path / "code-ran"
    (shipping_model / "shipped.py").write_text(SHIPPED.format(marker=str(path)))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends its modules folder
    return path


@pytest.fixture(scope="module")
def peft_cli():
    return load_script("lora_peft_finetuning.py").main


def dry_run(cli, model: Path, tiny: Path, *extra: str):
    return CliRunner().invoke(cli, ["--model", str(model), "--dataset", str(tiny), "--dry-run", *extra])


def test_training_runs_no_model_code_without_the_flag_even_in_a_dry_run(peft_cli, shipping_model, marker,
                                                                        tiny_dataset):
    result = dry_run(peft_cli, shipping_model, tiny_dataset)
    assert result.exit_code == 0, result.output
    assert not marker.exists()


def test_training_with_the_flag_runs_the_model_code(peft_cli, shipping_model, marker, tiny_dataset):
    result = dry_run(peft_cli, shipping_model, tiny_dataset, "--trust-remote-code")
    assert result.exit_code == 0, result.output
    assert marker.exists()  # the check above would see the code run


def test_a_config_file_asking_for_model_code_is_refused_naming_the_flag(peft_cli, shipping_model, marker,
                                                                         tiny_dataset, tmp_path):
    shared = tmp_path / "shared.yaml"
    shared.write_text("r: 8\ntrust_remote_code: true\n")
    result = dry_run(peft_cli, shipping_model, tiny_dataset, "--config", str(shared))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (f"{shared}:2: trust_remote_code: true asks to run the model's own Python code, which no file can allow"
            in result.output) and "Give --trust-remote-code on the command line" in result.output
    assert not marker.exists()


def test_the_flag_is_a_run_option_never_a_saved_config_value(tmp_path):
    seen: list = []
    old = tmp_path / "config.yaml"
    old.write_text("r: 8\ntrust_remote_code: false\n")  # as every older run folder saved it
    for args in (["--trust-remote-code"], ["--config", str(old)], ["--config", str(old), "--trust-remote-code"]):
        assert CliRunner().invoke(recording_cli(seen), args).exit_code == 0
    assert [options.trust_remote_code for _, options in seen] == [True, False, True]
    assert "trust_remote_code" not in TrainConfig.__dataclass_fields__
    save_yaml(seen[0][0], tmp_path / "saved.yaml")
    assert "trust_remote_code" not in (tmp_path / "saved.yaml").read_text()


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
def test_the_training_pipeline_hands_the_flag_to_the_backends_loader(flag, tiny_dataset, tmp_path):
    from llama_lora.backend import BACKENDS, Backend
    from llama_lora.train.cli import build_cli

    asked: list[bool] = []

    def load(cfg, path, trust_remote_code):
        asked.append(trust_remote_code)
        raise RuntimeError("stop here: only the loader's arguments are checked")

    cli = build_cli(Backend(BACKENDS["peft"], load=load))
    result = CliRunner().invoke(cli, ["--dataset", str(tiny_dataset), "--output-dir", str(tmp_path / "run"),
                                      "--max-steps", "1", *flag])
    assert result.exit_code == 1 and asked == [bool(flag)], result.output


@pytest.mark.parametrize("trust", [False, True])
def test_the_peft_loader_runs_the_model_code_only_when_told(shipping_model, marker, trust):
    from llama_lora.options.config import Machine, resolve

    script = load_script("lora_peft_finetuning.py")
    cfg = resolve(TrainConfig(model=str(shipping_model), r=4), "peft", Machine(cuda=False))
    script.load(cfg, str(shipping_model), trust)
    assert marker.exists() is trust


def test_the_memory_plan_reads_the_config_without_the_models_code(peft_cli, shipping_model, marker):
    result = CliRunner().invoke(peft_cli, ["--model", str(shipping_model), "--plan"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()


# --- use_adapter.py ----------------------------------------------------------------------------------------------

use_adapter = load_script("use_adapter.py")
ASKS_FOR_CODE = "trust_remote_code: true\n"


@pytest.fixture(scope="module")
def run_on_shipping_model(tmp_path_factory, shipping_model: Path) -> Path:
    """A run folder trained (here: a random adapter) on the shipping model, whose own tokenizer ships code too."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llama_lora.options.config import Machine, resolve

    folder = tmp_path_factory.mktemp("runs") / "run"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(shipping_model, dtype=torch.float32, trust_remote_code=False)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(shipping_model / name, folder)
    cfg = resolve(TrainConfig(model=str(shipping_model), r=4, dtype="float32"), "peft", Machine(cuda=False))
    save_yaml(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "backend": "peft", "model": {
        "name": str(shipping_model), "path": str(shipping_model)}, "load_in_4bit": False, "dtype": "float32"}))
    return folder


def commands(run: Path, out: Path) -> dict[str, list[str]]:
    """Every use_adapter.py command on the run, as small as each can be."""
    return {
        "generate": ["generate", str(run), "-p", "Hi", "--max-new-tokens", "2", "--no-stream"],
        "chat": ["chat", str(run), "--max-new-tokens", "2", "--no-stream"],
        "merge": ["merge", str(run), str(out / "merged"), "--dtype", "float32"],
        "swap": ["swap", str(run), "--max-new-tokens", "2"],
        "check": ["check", str(run)],
        "gguf": ["gguf", str(run), "--out", str(out / "gguf"), "--types", "f16"],
        "eval": ["eval", str(run), "--limit", "2", "--batch-size", "2"],
        "verify": ["verify", str(run), "--targets", "merged", "--count", "1", "--max-new-tokens", "2"],
    }


COMMANDS = list(commands(Path("run"), Path("out")))
TAKES_THE_FLAG = [name for name in COMMANDS if name != "gguf"]  # gguf writes files only and never runs model code


def test_every_use_adapter_command_is_checked_here():
    assert set(COMMANDS) == set(use_adapter.cli.commands)


def invoke(args: list[str]):
    return CliRunner().invoke(use_adapter.cli, args, input="Hello\n/exit\n")


@pytest.fixture
def asking_run(run_on_shipping_model: Path, shipping_model: Path, marker: Path, tmp_path: Path) -> Path:
    """The run folder shared by someone whose config.yaml asks for the model's code to run (its tokenizer's code
    shipped with it)."""
    folder = tmp_path / "shared-run"
    shutil.copytree(run_on_shipping_model, folder)
    shutil.copy(shipping_model / "shipped.py", folder)
    with (folder / "config.yaml").open("a") as config:
        config.write(ASKS_FOR_CODE)
    return folder


@pytest.mark.parametrize("command", TAKES_THE_FLAG)
def test_a_run_folder_asking_for_model_code_is_refused_naming_the_flag(command, asking_run, marker, tmp_path):
    result = invoke(commands(asking_run, tmp_path)[command])
    assert result.exit_code == 2, result.output
    assert f"{asking_run / 'config.yaml'}: trust_remote_code: true asks to run the model's own Python code" in \
        result.output and "--trust-remote-code" in result.output
    assert not marker.exists() and "Traceback" not in result.output


@pytest.mark.parametrize("command", TAKES_THE_FLAG)
def test_every_command_hands_its_flag_to_the_run_reader(command, asking_run, tmp_path, monkeypatch):
    from llama_lora.errors import UsageError
    from llama_lora.use import inference

    asked: list[bool] = []

    def read_run(folder, base=None, trust_remote_code=False):
        asked.append(trust_remote_code)
        raise UsageError("stop here: only the flag is checked")

    monkeypatch.setattr(inference, "read_run", read_run)
    for flag in ([], ["--trust-remote-code"]):
        assert invoke(commands(asking_run, tmp_path)[command] + flag).exit_code == 2
    assert asked == [False, True]


@pytest.mark.slow  # loads the 135M model once per command (merge twice, gguf writes it): about 70 s on 2 cores
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_loads_a_model_that_ships_code_without_running_it(command, run_on_shipping_model, marker,
                                                                        tmp_path):
    result = invoke(commands(run_on_shipping_model, tmp_path)[command])
    assert result.exit_code == 0, result.output
    assert not marker.exists()


@pytest.mark.slow  # one model load
def test_with_the_flag_a_command_runs_the_model_code(asking_run, marker, tmp_path):
    result = invoke(commands(asking_run, tmp_path)["generate"] + ["--trust-remote-code"])
    assert result.exit_code == 0, result.output
    assert marker.exists()
