"""The shipped accelerate configs parse with accelerate's own loader and launcher, and under the FSDP one the
PEFT backend loads the 4-bit base the way FSDP can shard it. (FSDP and NCCL cannot run on this CPU machine:
the FSDP training itself is checked on GPUs only.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from unittest import mock

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_multi_gpu_env
from helpers import REPO, load_script

from llama_lora.options.config import Machine, TrainConfig, resolve


def launch_env(config_file: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file ...` gives every process."""
    args = launch_command_parser().parse_args(["--config_file", str(REPO / config_file), "train.py"])
    with mock.patch("torch.cuda.device_count", return_value=2), mock.patch("torch.cuda.is_available", return_value=True):
        args, *_ = _validate_launch_command(args)  # merges the file's values into the arguments, as launch does
        return prepare_multi_gpu_env(args)


def test_ddp_config_is_a_multi_gpu_launch():
    config = load_config_from_file(str(REPO / "configs/accelerate/ddp.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and config.num_processes == 2
    assert "ACCELERATE_USE_FSDP" not in launch_env("configs/accelerate/ddp.yaml")


def test_fsdp_config_shards_a_qlora_model_the_way_peft_documents():
    config = load_config_from_file(str(REPO / "configs/accelerate/fsdp_qlora.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    env = launch_env("configs/accelerate/fsdp_qlora.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"


@pytest.mark.parametrize("fsdp", [False, True])
def test_fsdp_loads_without_device_map_and_stores_4bit_in_the_compute_dtype(fsdp):
    cfg = resolve(TrainConfig(model="smollm2", dtype="bfloat16", load_in_4bit=True), "peft", Machine(cuda=False))
    with mock.patch.dict(os.environ, {"ACCELERATE_USE_FSDP": str(fsdp).lower()}):
        from llama_lora import distributed

        assert distributed.fsdp_requested() is fsdp
        kwargs = load_script("lora_peft_finetuning.py").load_arguments(cfg, distributed.fsdp_requested(), "cuda:1")
    quantization = kwargs["quantization_config"]
    assert quantization.bnb_4bit_quant_storage == (torch.bfloat16 if fsdp else torch.uint8)
    assert kwargs["device_map"] == (None if fsdp else {"": "cuda:1"})
    assert kwargs["dtype"] == torch.bfloat16 and kwargs["use_safetensors"] is True


def test_unsloth_backend_stops_at_once_under_an_fsdp_launch(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "lora_unsloth_finetuning.py", "--output-dir", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "FSDP launches are not supported" in result.stderr and "configs/accelerate/fsdp_qlora.yaml" in result.stderr
    assert "Unsloth" not in result.stdout  # stopped before importing it (its banner) or loading anything
    assert list(tmp_path.iterdir()) == [] and time.perf_counter() - started < 60
