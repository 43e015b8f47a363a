"""Merge a run's adapter into its base model and save a standalone 16-bit model folder.

For a QLoRA run the base is loaded in NF4 exactly as trained and dequantized to 16-bit, so the adapter is
added to the very weights it was trained against (not to the original checkpoint, which NF4 only approximates).
The merged model is then reloaded from disk and its logits compared with base + adapter as trained, on fixed
prompts: the largest difference is the price of merging into 16-bit weights.
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from llama_lora.atomic_files import write_json
from llama_lora.errors import UsageError
from llama_lora.run import owned
from llama_lora.run.run_folder import replace_folder
from llama_lora.use.adapter_checks import compare_logits, logits, prompt_batch
from llama_lora.use.inference import TrainedRun, device, load_base, load_tuned

REPORT = "merge.json"


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing folder unless asked, and to ever replace one that is not a merged model this
    tool made."""
    owned.check_not_protected(out, "OUT")
    if overwrite or owned.kind_of(out) != owned.MERGED:
        owned.check_replaceable(out, owned.MERGED, "--overwrite")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} already exists; --overwrite replaces it (only once the new merge is complete)")


def merged_model(info: TrainedRun, dtype: str) -> Any:
    """Base (dequantized from NF4 for a QLoRA run) with the adapter merged in, as a plain transformers model."""
    from peft import PeftModel

    base = load_base(info, dtype=dtype)
    if info.load_in_4bit:
        base = base.dequantize()  # bitsandbytes NF4 -> the compute dtype, the weights the adapter trained with
        base.to(getattr(torch, dtype))
    # safe_merge checks the merged weights for NaN before replacing the originals
    return PeftModel.from_pretrained(base, info.folder).merge_and_unload(safe_merge=True)


def merge(info: TrainedRun, out: Path, dtype: str = "bfloat16", overwrite: bool = False) -> dict[str, Any]:
    """Write the merged model (safetensors, tokenizer, chat template, merge.json) to `out`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_destination(out, overwrite)
    # base + adapter as trained (NF4 for QLoRA), computing in the merged model's dtype: the difference is then
    # what merging itself costs, not the gap between two compute dtypes
    tuned, tokenizer = load_tuned(info, dtype=dtype)
    prompts = prompt_batch(tokenizer)
    reference = logits(tuned, prompts)
    del tuned
    free_memory()

    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)  # a new folder: the cleanup below removes only what this merge made
    try:
        owned.stamp(staging, owned.MERGED)
        model = merged_model(info, dtype)
        model.save_pretrained(staging)  # safetensors by default in transformers 5
        tokenizer = AutoTokenizer.from_pretrained(info.folder, trust_remote_code=info.trust_remote_code)
        tokenizer.save_pretrained(staging)  # with chat_template.jinja
        del model
        free_memory()
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=getattr(torch, dtype),
                                                        device_map={"": device()}, use_safetensors=True,
                                                        trust_remote_code=info.trust_remote_code)
        report = {"run": str(info.folder), "base": info.base, "dtype": dtype, "from_4bit": info.load_in_4bit,
                  "compared_with": f"base ({'NF4' if info.load_in_4bit else dtype}) + adapter in {dtype}",
                  "prompts": len(prompts), **compare_logits(reference, logits(reloaded.eval(), prompts))}
        del reloaded
        free_memory()
        write_json(staging / REPORT, report)
        replace_folder(out, staging, owned.MERGED)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def free_memory() -> None:
    """Release a dropped model's memory before the next one loads (two 8B models need not fit at once)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
