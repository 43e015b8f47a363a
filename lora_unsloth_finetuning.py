"""Fine-tune a LoRA/QLoRA adapter with Unsloth's FastLanguageModel.

    python lora_unsloth_finetuning.py --r 16       # GPU: Llama 3.1 8B Instruct, QLoRA; CPU: embedded SmolLM2

Only `load` differs from lora_peft_finetuning.py; config, data, trainer and records are shared.
Unsloth is imported here and nowhere else: it patches transformers, TRL and PEFT when imported.
"""

from __future__ import annotations

from llama_lora.backend import Backend, lora_settings
from llama_lora.cli import build_cli
from llama_lora.config import TrainConfig


def import_unsloth() -> None:
    """Unsloth must be imported before transformers and TRL so its patches apply."""
    import unsloth  # noqa: F401


def load(cfg: TrainConfig, path: str) -> object:
    """Load the base model with FastLanguageModel and wrap it with Unsloth's LoRA."""
    import torch
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=cfg.max_seq_length,
        dtype=getattr(torch, cfg.dtype),
        load_in_4bit=cfg.load_in_4bit,
        use_safetensors=True,  # never unpickle .bin weights: pickle can run code
        trust_remote_code=cfg.trust_remote_code,
    )
    return FastLanguageModel.get_peft_model(
        model,
        **lora_settings(cfg),
        # Unsloth's own checkpointing (offloads activations to CPU RAM on GPU)
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
        max_seq_length=cfg.max_seq_length,
    )


main = build_cli(
    Backend(
        name="unsloth",
        title="Unsloth",
        load=load,
        before_heavy_imports=import_unsloth,
        own_cpu_loss=True,  # Unsloth's CPU backend brings a chunked cross-entropy in place of TRL's Triton head
        libraries=("unsloth", "unsloth_zoo"),
    )
)

if __name__ == "__main__":
    main()
