"""`--plan`: GPU memory per process for a model, LoRA rank, sequence length and batch, before loading anything.

The model's shape comes from an empty (meta-device) model built from its config.json, so a folder holding only
config.json is enough. Weights, LoRA parameters, gradients and optimizer state are the exact byte counts of the
tensors the PEFT backend creates (tests/test_memory_plan.py checks them against a loaded model); activations are
an estimate from the formula below, to be checked against measured peaks (README).

Activations, bytes, for T = batch x sequence tokens, hidden h, intermediate I, n_h attention heads, a = 2 bytes
(bf16/fp16 autocast; 4 in float32), per decoder layer (what autograd keeps for the backward pass):
  2 RMSNorms       2 x (4·T·h + 4·T)   each upcasts its input to fp32 and keeps it and 1/rms (fp32)
  attention (SDPA) 4·a·T·h + 4·T·n_h   q, k and v (k, v repeated to n_h heads when a padding mask is given), the
                                       output, and the fp32 log-sum-exp; RoPE keeps only cos/sin
  MLP              3·a·T·I             gate output (SiLU input), SiLU output and up output (the product's inputs)
  LoRA, per target a·T·d_in + a·T·r    PEFT casts the input to the fp32 LoRA weight, autocast casts it back: a
                                       fresh copy of the input is kept for lora_A, plus lora_A's output for lora_B;
                                       the frozen base layer keeps nothing (no weight gradient)
With all 7 projections targeted: T·(28·h + 8·I + 14·r + 4·n_h + 8) bytes per layer at a = 2.
  no checkpointing:   layers x the per-layer figure
  checkpointing:      layers x s·T·h (each layer's saved input) + one layer's figure (recomputed during its
                      backward) + that layer's largest gradients (2·a·T·I + 2·a·T·h)
                      s is the residual stream's size: a, or 4 for QLoRA, where prepare_model_for_kbit_training
                      upcasts the embeddings and norms to fp32 (a norm returns weight x x, so fp32 from layer 0 on);
                      measured on an H100 (README): without this term the plan fell 14-33% short for QLoRA at
                      8k-64k tokens, with it 0-9%
  LM head and loss:   TRL's chunked log-prob head never materializes the T x vocab logits: it keeps the
                      supervised hidden states (s·T·h), a [4096 x 32768] logits tile and an fp32 gradient (4·T·h)
Not in torch's allocated-memory peak and so listed apart: the CUDA context and kernels (about 0.5 GB per GPU)
and the caching allocator's fragmentation (the gap between allocated and reserved).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig
from transformers.quantizers.base import get_keys_to_not_convert

from llama_lora.errors import UsageError
from llama_lora.model.shape import linear_layers, meta_model
from llama_lora.options import remote_code
from llama_lora.options.config import TrainConfig
from llama_lora.run.measure import GIB

NF4_BLOCK = 64  # bitsandbytes' 4-bit block: one absmax per 64 weights
NESTED_BLOCK = 256  # double quantization: the uint8 absmax values are quantized again in blocks of 256
NF4_CODE_BYTES = 16 * 4  # the 16 NF4 levels, fp32, one copy per quantized layer
NESTED_CODE_BYTES = 256 * 4  # the 8-bit dynamic map of the nested absmax, fp32, one copy per quantized layer
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep 32-bit optimizer state
BNB_8BIT_BLOCK = 256
BNB_QMAPS_BYTES = 2 * 256 * 4  # the signed and unsigned 8-bit maps, shared by all parameters
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768  # trl: TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE
CUDA_CONTEXT_GB = 0.5
LORA_BYTES = 4  # PEFT upcasts adapter weights to fp32 (get_peft_model's autocast_adapter_dtype=True)
ADAMW = ("adamw_torch", "adamw_torch_fused")
ADAMW_8BIT = ("adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit")


@dataclass(frozen=True)
class Launch:
    """How many processes share the work, and whether FSDP shards the weights."""

    processes: int = 1
    fsdp: bool = False


def parse_launch(text: str) -> Launch:
    """`--plan` values: N (processes, DDP when N > 1), ddp:N or fsdp:N."""
    kind, _, count = text.rpartition(":")
    if kind not in ("", "ddp", "fsdp") or not count.isdigit() or int(count) < 1:
        raise UsageError(f"--plan {text}: expected a process count such as 1, ddp:4 or fsdp:2")
    return Launch(int(count), kind == "fsdp")


def lora_targets(model: torch.nn.Module, target_modules: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    """The linear layers PEFT wraps: matched by last name part; "all-linear" means all but the output head."""
    head = model.get_output_embeddings()
    linears = linear_layers(model)
    if "all-linear" in target_modules:
        return {name: m for name, m in linears.items() if m is not head}
    return {name: m for name, m in linears.items() if name.rsplit(".", 1)[-1] in target_modules}


def nf4_bytes(numel: int, storage_bytes: int = 1) -> int:
    """One NF4 double-quantized weight as bitsandbytes stores it: packed 4-bit values, uint8 absmax per block,
    fp32 nested absmax, the two code tables and the fp32 offset."""
    packed = math.ceil(numel / 2 / storage_bytes) * storage_bytes
    blocks = math.ceil(numel / NF4_BLOCK)
    nested = math.ceil(blocks / NESTED_BLOCK)
    return packed + blocks + nested * 4 + NF4_CODE_BYTES + NESTED_CODE_BYTES + 4


def weight_bytes(model: torch.nn.Module, cfg: TrainConfig, launch: Launch) -> int:
    """The base model's tensors on one process (tied weights once; FSDP: this process's shard)."""
    dtype_bytes = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    params = dict(model.named_parameters())  # named_parameters lists a tied weight once
    if not cfg.load_in_4bit:
        total = sum(p.numel() for p in params.values()) * dtype_bytes
    else:
        skip = get_keys_to_not_convert(model)
        quantized = {name: m for name, m in linear_layers(model).items()
                     if not any(name == key or name.endswith("." + key) for key in skip)}
        quantized_weights = {f"{name}.weight" for name in quantized}
        # PEFT's prepare_model_for_kbit_training upcasts every 16-bit weight left (embeddings, norms, head) to
        # fp32; the FSDP path skips it so all weights keep one dtype.
        other_bytes = 4 if not launch.fsdp else dtype_bytes
        storage = dtype_bytes if launch.fsdp else 1  # bnb_4bit_quant_storage
        total = sum(nf4_bytes(m.weight.numel(), storage) for m in quantized.values())
        total += sum(p.numel() for name, p in params.items() if name not in quantized_weights) * other_bytes
    return math.ceil(total / launch.processes) if launch.fsdp else total


def lora_parameters(model: torch.nn.Module, cfg: TrainConfig) -> list[int]:
    """Element count of each LoRA tensor PEFT creates (A and B per target, plus DoRA's magnitude)."""
    sizes = []
    for module in lora_targets(model, cfg.target_modules).values():
        sizes += [cfg.r * module.in_features, module.out_features * cfg.r]
        if cfg.use_dora:
            sizes.append(module.out_features)
    return sizes


def optimizer_bytes(sizes: list[int], optim: str) -> int:
    """Optimizer state for the LoRA tensors, as torch's AdamW or bitsandbytes' 8-bit AdamW allocate it."""
    if optim in ADAMW:
        # exp_avg and exp_avg_sq in the parameters' fp32, and the fused kernel's fp32 step tensor per parameter
        return sum(2 * n * LORA_BYTES for n in sizes) + (4 * len(sizes) if optim == "adamw_torch_fused" else 0)
    if optim in ADAMW_8BIT:
        total = BNB_QMAPS_BYTES
        for n in sizes:
            if n < BNB_8BIT_MIN_SIZE:
                total += 2 * n * 4
            else:
                total += 2 * n + 2 * math.ceil(n / BNB_8BIT_BLOCK) * 4  # uint8 states + fp32 absmax per block
        return total
    raise UsageError(f"--plan knows the optimizers {', '.join(ADAMW + ADAMW_8BIT)}; got --optim {optim}")


def activation_bytes(model: torch.nn.Module, cfg: TrainConfig, fp32_stream: bool = False) -> dict[str, int]:
    """Activation memory of one process (the module docstring derives each term); `fp32_stream` when
    prepare_model_for_kbit_training has upcast the embeddings and norms, which makes the residual stream fp32."""
    config = model.config
    a = 4 if cfg.dtype == "float32" else 2
    stream = 4 if fp32_stream else a
    tokens = cfg.batch_size * cfg.max_seq_length
    h, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    layer_targets = [m for name, m in lora_targets(model, cfg.target_modules).items() if ".layers.0." in name]
    per_layer = tokens * (
        2 * (4 * h + 4)  # two RMSNorms
        + 4 * a * h + 4 * heads  # attention
        + 3 * a * inter  # MLP
        + sum(a * m.in_features + a * cfg.r for m in layer_targets)  # LoRA input copies and lora_A outputs
    )
    layers = config.num_hidden_layers
    if cfg.gradient_checkpointing:
        stack = layers * stream * tokens * h + per_layer + tokens * (2 * a * inter + 2 * a * h)
    else:
        stack = layers * per_layer
    head = stream * tokens * h + 4 * tokens * h + a * min(tokens, TRL_TOKEN_TILE) * min(config.vocab_size, TRL_VOCAB_TILE)
    return {"layers": stack, "head": head, "per_layer": per_layer}


def plan(cfg: TrainConfig, path: str, launch: Launch, trust_remote_code: bool = False) -> dict[str, Any]:
    """Bytes per process for each part of a training run's GPU memory."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        refused = remote_code.needs_flag(err, f"--model {cfg.model}")
        raise UsageError(refused or f"--model {cfg.model}: cannot read its config.json ({err})") from err
    model = meta_model(config, trust_remote_code)
    sizes = lora_parameters(model, cfg)
    # The PEFT backend calls prepare_model_for_kbit_training for QLoRA except under FSDP (lora_peft_finetuning.py)
    activations = activation_bytes(model, cfg, fp32_stream=cfg.load_in_4bit and not launch.fsdp)
    # FULL_SHARD splits LoRA weights, their gradients and optimizer state across processes like the base weights
    shard = launch.processes if launch.fsdp else 1
    parts = {
        "weights": weight_bytes(model, cfg, launch),
        "lora": math.ceil(sum(sizes) * LORA_BYTES / shard),
        "gradients": math.ceil(sum(sizes) * LORA_BYTES / shard),
        "optimizer": math.ceil(optimizer_bytes(sizes, cfg.optim) / shard),
        "activations": activations["layers"],
        "lm_head_and_loss": activations["head"],
    }
    return {
        "model": cfg.model, "processes": launch.processes, "fsdp": launch.fsdp,
        "lora_parameters": sum(sizes), "bytes": parts, "total_bytes": sum(parts.values()),
        "activation_per_layer_bytes": activations["per_layer"], "cuda_context_gb": CUDA_CONTEXT_GB,
    }


def print_plan(cfg: TrainConfig, result: dict[str, Any], console: Console | None = None) -> None:
    """The plan as a table, one row per part, GiB per process."""
    console = console or Console(highlight=False)
    launch = f"{result['processes']} process(es)" + (", FSDP (weights sharded)" if result["fsdp"] else "")
    console.print(f"Memory plan for {result['model']}: {'NF4 4-bit' if cfg.load_in_4bit else cfg.dtype} base, "
                  f"LoRA r={cfg.r} on {','.join(cfg.target_modules)}, batch {cfg.batch_size} x "
                  f"{cfg.max_seq_length} tokens, {cfg.optim}, gradient checkpointing "
                  f"{'on' if cfg.gradient_checkpointing else 'off'}, {launch}", soft_wrap=True)
    table = Table()
    table.add_column("per GPU")
    table.add_column("GiB", justify="right")
    table.add_column("what")
    notes = {
        "weights": "base model" + (" (NF4 + quant state; other weights fp32)" if cfg.load_in_4bit else "")
                   + (f", 1/{result['processes']} shard" if result["fsdp"] else ""),
        "lora": f"{result['lora_parameters']:,} LoRA parameters, fp32"
                + (f", 1/{result['processes']} shard" if result["fsdp"] else ""),
        "gradients": "LoRA gradients, fp32",
        "optimizer": cfg.optim + (" (paged: may spill to CPU RAM)" if cfg.optim.startswith("paged") else ""),
        "activations": "decoder layers" + (" (checkpointed)" if cfg.gradient_checkpointing else ""),
        "lm_head_and_loss": "TRL's chunked LM head and loss",
    }
    for name, value in result["bytes"].items():
        table.add_row(name.replace("_", " "), f"{value / GIB:.2f}", notes[name])
    table.add_row("total", f"{result['total_bytes'] / GIB:.2f}", "compare with torch's peak allocated", end_section=True)
    table.add_row("+ CUDA context", f"~{result['cuda_context_gb']:.1f}", "not in torch's counters; add for nvidia-smi")
    console.print(table)
