"""The one seam between the two entry scripts: how a backend loads the base model and wraps it with LoRA.

Everything else (config, CLI, data, trainer, saving, metrics) is shared, so any difference between two
runs with the same config comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from llama_lora.options.config import TrainConfig

# A peft.PeftModel around a causal LM. Tokenizers are loaded by the shared code, so both backends see
# identical token ids.
LoadedModel = Any


def _nothing() -> None:
    """No import hook."""


@dataclass(frozen=True)
class Backend:
    """A named way to load and LoRA-wrap a model; see lora_peft_finetuning.py and lora_unsloth_finetuning.py."""

    name: str  # "peft" or "unsloth": names the default output folder and the metrics
    title: str  # how --help names it
    load: Callable[["TrainConfig", str], LoadedModel]  # (config, model path or hub id) -> LoRA-wrapped model
    # Runs before transformers/TRL are imported (Unsloth must patch them first).
    before_heavy_imports: Callable[[], None] = field(default=_nothing)
    # True when the library supplies its own training loss on CPU (Unsloth's chunked cross-entropy);
    # otherwise the shared trainer replaces TRL's Triton-only fused LM head by transformers' loss on CPU.
    own_cpu_loss: bool = False
    # Import names whose versions go into metrics.json next to the shared libraries.
    libraries: tuple[str, ...] = ()


def lora_settings(cfg: "TrainConfig") -> dict[str, Any]:
    """The LoRA hyperparameters, as keyword arguments both peft.LoraConfig and Unsloth accept."""
    return {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.target_modules),
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "bias": "none",
    }
