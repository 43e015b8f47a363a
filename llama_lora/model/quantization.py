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


def keep_4bit_layers_trainable(model: Any) -> None:
    """Keep bitsandbytes' CPU inference layout off every 4-bit layer.

    bitsandbytes 0.50 moves a Linear4bit's weight into an AVX512-BF16 inference layout on its first forward in eval
    mode without gradients on such a CPU (the eval loss before training is one), and from then on that layer's
    matmul passes no gradient to its input: the LoRA layers before it (q/k/v before o_proj, gate/up before
    down_proj) then train on a partial gradient, or, while every LoRA B is still zero, on none. GPUs never take
    that path; the setting only costs CPU inference speed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
