"""Fine-tune a LoRA/QLoRA adapter with plain Hugging Face PEFT (+ bitsandbytes for 4-bit).

    python lora_peft_finetuning.py                 # GPU: Llama 3.1 8B Instruct, QLoRA; CPU: embedded SmolLM2
    python lora_peft_finetuning.py --r 16 --max-steps 30 --no-load-in-4bit
    accelerate launch --config_file configs/accelerate/ddp.yaml lora_peft_finetuning.py        # several GPUs (DDP)
    accelerate launch --config_file configs/accelerate/fsdp_qlora.yaml lora_peft_finetuning.py # 4-bit base sharded

Only `load` differs from lora_unsloth_finetuning.py; config, data, trainer and records are shared.
"""

from __future__ import annotations

from typing import Any

from llama_lora.backend import BACKENDS, Backend, lora_settings
from llama_lora.options.config import TrainConfig
from llama_lora.train.cli import build_cli


def load_arguments(cfg: TrainConfig, fsdp: bool, device: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """from_pretrained's keyword arguments: NF4 4-bit or 16-bit, on this process's device, or for FSDP-QLoRA none."""
    import torch

    from llama_lora.model.quantization import nf4_config

    dtype = getattr(torch, cfg.dtype)
    quantization = nf4_config(dtype, fsdp) if cfg.load_in_4bit else None
    return {
        "dtype": dtype,
        "quantization_config": quantization,
        # FSDP places (and, with fsdp_cpu_ram_efficient_loading, loads on rank 0 only) the weights itself;
        # DDP and single runs put the whole model on this process's device.
        "device_map": None if fsdp else {"": device},
        "use_safetensors": True,  # never unpickle .bin weights: pickle can run code
        "trust_remote_code": trust_remote_code,  # --trust-remote-code only
    }


def load(cfg: TrainConfig, path: str, trust_remote_code: bool = False) -> object:
    """Load the base model (NF4 4-bit or 16-bit) and wrap it with a PEFT LoRA adapter."""
    # Imported here, like Unsloth in the other script, so `--help` stays instant and both scripts' start-up match.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from llama_lora import distributed

    fsdp = distributed.fsdp_requested()
    model = AutoModelForCausalLM.from_pretrained(path, **load_arguments(cfg, fsdp, str(distributed.device()), trust_remote_code))
    # prepare_model_for_kbit_training upcasts every non-quantized weight to float32; FSDP needs one dtype per
    # flat parameter, so under FSDP the weights stay in the storage dtype and the trainer only enables checkpointing.
    if cfg.load_in_4bit and not fsdp:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_settings(cfg)))


BACKEND = Backend(BACKENDS["peft"], load=load)
main = build_cli(BACKEND)

if __name__ == "__main__":
    main()
