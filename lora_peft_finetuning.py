"""Fine-tune a LoRA/QLoRA adapter with plain Hugging Face PEFT (+ bitsandbytes for 4-bit).

    python lora_peft_finetuning.py                 # GPU: Llama 3.1 8B Instruct, QLoRA; CPU: embedded SmolLM2
    python lora_peft_finetuning.py --r 16 --max-steps 30 --no-load-in-4bit

Only `load` differs from lora_unsloth_finetuning.py; config, data, trainer and records are shared.
"""

from __future__ import annotations

from llama_lora.backend import Backend, lora_settings
from llama_lora.cli import build_cli
from llama_lora.config import TrainConfig


def load(cfg: TrainConfig, path: str) -> object:
    """Load the base model (NF4 4-bit or 16-bit) and wrap it with a PEFT LoRA adapter."""
    # Imported here, like Unsloth in the other script, so `--help` stays instant and both scripts' start-up match.
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, cfg.dtype)
    quantization = None
    if cfg.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quantization,
        device_map={"": "cuda:0" if torch.cuda.is_available() else "cpu"},
        use_safetensors=True,  # never unpickle .bin weights: pickle can run code
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_settings(cfg)))


main = build_cli(Backend(name="peft", title="PEFT", load=load))

if __name__ == "__main__":
    main()
