"""Fine-tune a LoRA/QLoRA adapter with Unsloth's FastLanguageModel.

    python lora_unsloth_finetuning.py --r 16       # GPU: Llama 3.1 8B Instruct, QLoRA; CPU: embedded SmolLM2
    accelerate launch --config_file configs/accelerate/ddp.yaml lora_unsloth_finetuning.py   # several GPUs (DDP only)

Only `load` differs from lora_peft_finetuning.py; config, data, trainer and records are shared.
Unsloth is imported here and nowhere else: it patches transformers, TRL and PEFT when imported.
"""

from __future__ import annotations

import os
import sys

from llama_lora.backend import BACKENDS, Backend, lora_settings
from llama_lora.options.config import TrainConfig
from llama_lora.train.cli import build_cli

FSDP_REFUSED = (
    "error: the Unsloth backend runs in one process or under DDP (accelerate launch --config_file "
    "configs/accelerate/ddp.yaml); FSDP launches are not supported with it here. For FSDP-QLoRA (a 4-bit base sharded "
    "across GPUs) use the PEFT backend: accelerate launch --config_file configs/accelerate/fsdp_qlora.yaml "
    "lora_peft_finetuning.py"
)


def refuse_fsdp() -> None:
    """Stop before anything loads under an FSDP launch: Unsloth 2026.10.9 shards models through its own FSDP2 path
    (UNSLOTH_FSDP2), not the FSDP1 + bnb quant-storage set-up configs/accelerate/fsdp_qlora.yaml describes, and this
    project has not verified it. DDP is supported: Unsloth puts each process's model on cuda:<LOCAL_RANK>."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        print(FSDP_REFUSED, file=sys.stderr)
        sys.exit(2)


def import_unsloth() -> None:
    """Unsloth must be imported before transformers and TRL so its patches apply."""
    refuse_fsdp()
    import unsloth  # noqa: F401


def load(cfg: TrainConfig, path: str, trust_remote_code: bool = False) -> object:
    """Load the base model with FastLanguageModel and wrap it with Unsloth's LoRA."""
    import torch
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=cfg.max_seq_length,
        dtype=getattr(torch, cfg.dtype),
        load_in_4bit=cfg.load_in_4bit,
        use_safetensors=True,  # never unpickle .bin weights: pickle can run code
        trust_remote_code=trust_remote_code,  # --trust-remote-code only
    )
    return FastLanguageModel.get_peft_model(
        model,
        **lora_settings(cfg),
        # Unsloth's own checkpointing (offloads activations to CPU RAM on GPU)
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
        max_seq_length=cfg.max_seq_length,
    )


BACKEND = Backend(
    BACKENDS["unsloth"],
    load=load,
    before_heavy_imports=import_unsloth,
    own_cpu_loss=True,  # Unsloth's CPU backend brings a chunked cross-entropy in place of TRL's Triton head
)
main = build_cli(BACKEND)

if __name__ == "__main__":
    main()
