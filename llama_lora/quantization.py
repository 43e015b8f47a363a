"""The one NF4 4-bit setting: QLoRA training (the PEFT backend) and loading a run folder again use the same."""

from __future__ import annotations

from typing import Any


def nf4_config(dtype: Any, fsdp: bool = False) -> Any:
    """transformers' BitsAndBytesConfig for NF4 with double quantization, computing in `dtype` (a torch dtype)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # FSDP shards only floating-point tensors: pack the 4-bit weights into the compute dtype's storage
        # (same bytes) so they shard and all-gather like the 16-bit ones. uint8 otherwise (the default).
        bnb_4bit_quant_storage=dtype if fsdp else torch.uint8,
    )
