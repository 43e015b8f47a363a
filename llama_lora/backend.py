"""The one seam between the two entry scripts: how a backend loads the base model and wraps it with LoRA.

Everything else (config, CLI, data, trainer, saving, metrics) is shared, so any difference between two
runs with the same config comes from here. `BACKENDS` declares each backend once, with what the rest of the
project needs to know about it without importing it (its script, its libraries, what it can run on CPU);
compare_backends.py, the benchmarks and the tests all read it. A new backend is one entry here plus its
entry script, which builds its `Backend` from that entry and its own `load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from llama_lora.options.config import TrainConfig

# A peft.PeftModel around a causal LM. Tokenizers are loaded by the shared code, so both backends see
# identical token ids.
LoadedModel = Any


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the rest of the project knows it, without importing its library."""

    name: str  # names the default output folder and the metrics
    title: str  # how --help and reports name it
    script: str  # its entry script, relative to the repository root
    # Import names whose versions go into metrics.json next to the shared libraries.
    libraries: tuple[str, ...] = ()
    # --batching modes that keep a batch's examples apart without a CUDA GPU, and why the others cannot
    cpu_batching: tuple[str, ...] | None = None  # None: every mode
    cpu_batching_limit: str = ""


BACKENDS = {spec.name: spec for spec in (
    BackendSpec("peft", "PEFT", "lora_peft_finetuning.py"),
    BackendSpec(
        "unsloth", "Unsloth", "lora_unsloth_finetuning.py", libraries=("unsloth", "unsloth_zoo"),
        # unsloth_zoo/cpu/trainer.py (normalize_cpu_training_arguments) sets padding_free and packing to False
        # on CPU, padding_free without a word: its CPU attention would let the examples of a row see each other.
        cpu_batching=("padded",),
        cpu_batching_limit="Unsloth 2026.10.9's CPU backend switches padding-free and packing off",
    ),
)}


def _nothing() -> None:
    """No import hook."""


@dataclass(frozen=True)
class Backend:
    """A declared backend with its way to load and LoRA-wrap a model; see lora_peft_finetuning.py and
    lora_unsloth_finetuning.py."""

    spec: BackendSpec
    # (config, model path or hub id, --trust-remote-code) -> LoRA-wrapped model
    load: Callable[["TrainConfig", str, bool], LoadedModel]
    # Runs before transformers/TRL are imported (Unsloth must patch them first).
    before_heavy_imports: Callable[[], None] = field(default=_nothing)
    # True when the library supplies its own training loss on CPU (Unsloth's chunked cross-entropy);
    # otherwise the shared trainer replaces TRL's Triton-only fused LM head by transformers' loss on CPU.
    own_cpu_loss: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def libraries(self) -> tuple[str, ...]:
        return self.spec.libraries


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
