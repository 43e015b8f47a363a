"""Checks against the model before any weight loads, and advice when memory runs out."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from llama_lora.errors import UsageError
from llama_lora.model.shape import linear_layers, meta_model
from llama_lora.options import remote_code
from llama_lora.options.config import TrainConfig


def check_model(cfg: TrainConfig, path: str, trust_remote_code: bool = False) -> None:
    """Reject a max length beyond the model's positions and LoRA targets the model does not have."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        refused = remote_code.needs_flag(err, f"--model {cfg.model}")
        raise UsageError(refused or f"--model {cfg.model}: cannot read its config ({err})") from err
    limit = getattr(config, "max_position_embeddings", None)
    if limit and cfg.max_seq_length > limit:
        raise UsageError(f"--max-seq-length {cfg.max_seq_length} is above {cfg.model}'s limit of {limit} positions")
    if "all-linear" in cfg.target_modules:
        return
    linear = linear_module_names(config, trust_remote_code)
    missing = [name for name in cfg.target_modules if name not in linear]
    if missing:
        raise UsageError(f"--target-modules: {', '.join(missing)} not found in {cfg.model}; its linear modules are "
                         f"{', '.join(sorted(linear))}")


def check_tokenizer_fits(cfg: TrainConfig, tokenizer: Any, path: str, trust_remote_code: bool = False) -> None:
    """Reject a tokenizer with more entries than the model has embedding rows, before anything loads.

    Its extra ids have no embedding; Unsloth would resize the embeddings to the tokenizer, and PEFT would then
    save the full embedding and LM-head matrices with the adapter (gigabytes for 8B; vLLM refuses them).
    """
    rows = getattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), "vocab_size", None)
    if rows and len(tokenizer) > rows:
        extra = ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in range(rows, len(tokenizer))[:3])
        raise UsageError(
            f"--model {cfg.model}: its tokenizer has {len(tokenizer):,} entries but the model's embeddings have "
            f"{rows:,} rows (vocab_size), so ids from {rows:,} on ({extra}) have no embedding. The tokenizer is not "
            "this model's: training would resize the embeddings and save the full embedding and LM-head matrices "
            "with the adapter. Put the model's own tokenizer in its folder.")


def linear_module_names(config: Any, trust_remote_code: bool = False) -> set[str]:
    """Short names of the model's linear layers, from an empty (meta-device) model: no weights, no memory."""
    return {name.rsplit(".", 1)[-1] for name in linear_layers(meta_model(config, trust_remote_code))}


def oom_advice(cfg: TrainConfig, peak_gib: float, total_gib: float) -> str:
    """What to change after a CUDA out-of-memory error, most effective first, as concrete flags."""
    steps = []
    if not cfg.load_in_4bit:
        steps.append("--load-in-4bit (QLoRA: the base weights take a quarter of the memory)")
    if cfg.batch_size > 1:
        steps.append(f"--batch-size {cfg.batch_size // 2} --grad-accum {cfg.grad_accum * 2} "
                     "(same effective batch, half the activations)")
    if not cfg.gradient_checkpointing:
        steps.append("--gradient-checkpointing (recompute activations instead of storing them)")
    if cfg.max_seq_length > 512:
        steps.append(f"--max-seq-length {cfg.max_seq_length // 2} (check the audit for how many rows that drops)")
    if "8bit" not in cfg.optim:
        steps.append("--optim paged_adamw_8bit (smaller optimizer state)")
    lines = [f"CUDA ran out of memory: peak {peak_gib:.1f} GiB allocated of {total_gib:.1f} GiB on the GPU.",
             "Try, in this order:"] + [f"  {step}" for step in steps]
    return "\n".join(lines)
