"""Guards that act before or instead of training: model-aware config checks, contradictory flags, and the
out-of-memory message (the GPU is the one thing mocked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import read_metrics

from llama_lora.backend import BACKENDS, Backend
from llama_lora.errors import UsageError
from llama_lora.model.preflight import check_model, linear_module_names, oom_advice
from llama_lora.options.config import ALL_LINEAR, ConfigError, Machine, TrainConfig, build, resolve
from llama_lora.run import measure
from llama_lora.train.cli import build_cli

CPU = Machine(cuda=False)


def test_linear_modules_come_from_an_empty_model(smollm2_path):
    from transformers import AutoConfig

    assert set(ALL_LINEAR) | {"lm_head"} == linear_module_names(AutoConfig.from_pretrained(smollm2_path))


def test_target_modules_the_model_lacks_are_named_with_the_ones_it_has(smollm2_path):
    cfg = TrainConfig(model="smollm2", target_modules=("q_proj", "query_key_value"))
    with pytest.raises(UsageError, match="query_key_value not found in smollm2; its linear modules are down_proj, "
                                         "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        check_model(cfg, smollm2_path)


def test_max_seq_length_above_the_models_positions_is_refused(smollm2_path):
    with pytest.raises(UsageError, match="--max-seq-length 16384 is above smollm2's limit of 8192 positions"):
        check_model(TrainConfig(model="smollm2", max_seq_length=16384), smollm2_path)


@pytest.mark.parametrize("values, message", [
    ({"optim": "paged_adamw_8bit"}, "--optim paged_adamw_8bit needs a CUDA GPU"),
    ({"dtype": "float16"}, "--dtype float16 needs a CUDA GPU"),
    ({"early_stopping_patience": 2, "save_steps": 0}, "--early-stopping-patience keeps the best checkpoint"),
    ({"early_stopping_patience": 2, "keep_checkpoints": 1}, "--keep-checkpoints must be >= 2"),
    ({"save_steps": -5}, "--save-steps must be 0"),
    ({"lora_dropout": 1.0}, r"--lora-dropout must be in \[0, 1\)"),
    ({"r": 0}, "--r must be a positive integer"),
    ({"learning_rate": 0}, "--learning-rate must be positive"),
    ({"batch_size": 0}, "--batch-size must be positive"),
])
def test_contradictory_or_out_of_range_flags_are_refused_before_loading(values: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        resolve(build(values), "peft", CPU)


def test_oom_advice_names_the_peak_and_concrete_next_settings():
    cfg = TrainConfig(load_in_4bit=False, batch_size=4, grad_accum=2, max_seq_length=4096,
                      gradient_checkpointing=False)
    advice = oom_advice(cfg, peak_gib=78.3, total_gib=79.6)
    assert advice.splitlines()[:2] == ["CUDA ran out of memory: peak 78.3 GiB allocated of 79.6 GiB on the GPU.",
                                       "Try, in this order:"]
    assert [line.split(" (")[0].strip() for line in advice.splitlines()[2:]] == [
        "--load-in-4bit", "--batch-size 2 --grad-accum 4", "--gradient-checkpointing", "--max-seq-length 2048",
        "--optim paged_adamw_8bit"]


def test_an_out_of_memory_error_ends_the_run_with_advice_and_a_failed_status(
        tiny_dataset: Path, tmp_path: Path, monkeypatch):
    def load(cfg, path, trust_remote_code):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(measure, "gpu_peak_and_total_gib", lambda: (77.9, 79.6))  # the GPU we do not have
    cli = build_cli(Backend(BACKENDS["peft"], load=load))
    out = tmp_path / "runs" / "peft"
    result = CliRunner().invoke(cli, ["--dataset", str(tiny_dataset), "--output-dir", str(out), "--batch-size", "8",
                                      "--grad-accum", "2"])
    assert result.exit_code == 1, result.output
    assert "peak 77.9 GiB allocated of 79.6 GiB" in result.stderr and "--batch-size 4 --grad-accum 4" in result.stderr
    record = read_metrics(tmp_path / "runs" / ".peft.partial")
    assert record["status"] == "failed" and record["reason"].startswith("CUDA ran out of memory")
    assert not out.exists()


def test_pickled_weights_are_never_loaded(tmp_path: Path, smollm2_path):
    import shutil

    from helpers import load_script

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(Path(smollm2_path) / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    script = load_script("lora_peft_finetuning.py")
    cfg = resolve(TrainConfig(model=str(folder)), "peft", CPU)
    with pytest.raises(OSError, match="safetensors"):
        script.load(cfg, str(folder))


def test_remote_code_does_not_run_unless_asked(tmp_path: Path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}))
    (folder / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'custom'\n")
    with pytest.raises(UsageError, match="ships its own Python code .* add --trust-remote-code if you trust it"):
        check_model(TrainConfig(model=str(folder)), str(folder))
    assert not marker.exists()
