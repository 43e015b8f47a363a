"""Will an adapter load elsewhere, and does it compute the same there? vLLM warnings and logit comparison.

vLLM facts the warnings rest on (checked 2026-11): its LoRAConfig defaults `max_lora_rank` to 16
(https://docs.vllm.ai/en/v0.11.0/api/vllm/config/lora.html), so a higher rank needs `--max-lora-rank`;
it refuses adapters with `modules_to_save` ("vLLM only supports modules_to_save being None",
hiyouga/LlamaFactory#9545, vLLM 0.10) and adapters holding lm_head or embed_tokens weights for Llama models
("... lm_head ... is unsupported LoRA weight", vllm-project/vllm#32599, 2026-01).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from llama_lora.run import files

VLLM_DEFAULT_MAX_LORA_RANK = 16
VOCAB_MODULES = ("embed_tokens", "lm_head")
# Two loaders of one adapter agree when no logit differs by more than this share of the largest logit. On CPU in
# float32 plain PEFT and Unsloth agree exactly (measured difference 0.0); on a GPU Unsloth's Triton kernels
# (RoPE, RMSNorm, SwiGLU) reorder float operations, which moves float32 logits by ~1e-5 relative per layer.
# 0.1% of the logit scale leaves room for that and is still far below what a missing or wrong adapter changes
# (a 3-step adapter already moves logits by ~18% of the scale).
LOGIT_TOLERANCE = 1e-3
# Fixed prompts for logit comparisons: short, different in kind, rendered with the run's chat template.
CHECK_PROMPTS = (
    "Why is the sky blue?",
    "What is 7 times 8? Explain the steps.",
    "Write one sentence about the sea.",
)


def vllm_warnings(folder: Path) -> list[str]:
    """Reasons the adapter in `folder` will not load in vLLM with default settings (empty: none found)."""
    config = json.loads((folder / files.ADAPTER_CONFIG).read_text())
    warnings = []
    saved = [m for m in config.get("modules_to_save") or [] if m]
    if saved:
        warnings.append(f"modules_to_save = {saved}: vLLM loads only LoRA A/B weights and refuses fully trained "
                        "modules; train without modules_to_save to serve with vLLM")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):  # a regex over module names
        targeted = [m for m in VOCAB_MODULES if re.search(targets, m)]
    else:
        targeted = [m for m in VOCAB_MODULES if m in targets]
    names = tensor_names(folder)
    full = full_vocab_matrices(names)
    targeted += [m for m in VOCAB_MODULES
                 if m not in targeted and any(m in key and key not in full for key in names)]
    if full:
        warnings.append(f"holds the full {', '.join(full)} matrices, not LoRA weights: the embeddings were resized "
                        "in training (a tokenizer with more entries than the model's vocab_size; PEFT then sets "
                        "save_embedding_layers). vLLM refuses such adapters; retrain with the model's own tokenizer")
    if targeted:
        warnings.append(f"trained {', '.join(targeted)}: vLLM does not load LoRA weights on the embeddings or the "
                        "LM head of Llama models")
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > VLLM_DEFAULT_MAX_LORA_RANK:
        warnings.append(f"rank {max(ranks)} is above vLLM's default max_lora_rank of {VLLM_DEFAULT_MAX_LORA_RANK}; "
                        f"start vLLM with --max-lora-rank of at least {max(ranks)}")
    return warnings


def full_vocab_matrices(names: list[str]) -> list[str]:
    """Whole embedding / LM-head weights in an adapter's tensor names (PEFT's save_embedding_layers), not LoRA."""
    return [name for name in names
            if name.rsplit(".", 2)[-2] in VOCAB_MODULES and name.endswith(".weight") and "lora_" not in name]


def tensor_names(folder: Path) -> list[str]:
    """Tensor names in the adapter file, read from its header without loading weights."""
    from safetensors import safe_open

    path = folder / files.ADAPTER_WEIGHTS
    if not path.exists():
        return []
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def prompt_batch(tokenizer: Any, prompts: tuple[str, ...] = CHECK_PROMPTS) -> list[list[int]]:
    """The fixed check prompts as chat-templated token ids."""
    from llama_lora.use.inference import chat_ids

    return [chat_ids(tokenizer, [{"role": "user", "content": prompt}]) for prompt in prompts]


@torch.no_grad()
def logits(model: Any, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Float32 logits at every position of each prompt, run one prompt at a time (no padding to differ on)."""
    return [model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu() for ids in prompts]


def compare_logits(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    """Largest absolute logit difference, the logits' own scale, and how often the top token agrees."""
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    scale = max(x.abs().max().item() for x in a)
    agree = sum((x.argmax(-1) == y.argmax(-1)).sum().item() for x, y in zip(a, b))
    positions = sum(x.shape[0] for x in a)
    return {"max_abs_diff": diff, "max_abs_logit": scale, "top1_agreement": agree / positions}


def within_tolerance(comparison: dict[str, float]) -> bool:
    """True when two loaders' logits agree within LOGIT_TOLERANCE of the logit scale."""
    return comparison["max_abs_diff"] <= LOGIT_TOLERANCE * comparison["max_abs_logit"]
