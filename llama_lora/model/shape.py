"""A model's structure without its weights: an empty (meta-device) model built from its config.json."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM


def meta_model(config: Any, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model with every tensor on the meta device: shapes and names, no memory. A config read with the model's
    own code needs that code again here (--trust-remote-code); an explicit value never prompts."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every linear layer, by its full module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
