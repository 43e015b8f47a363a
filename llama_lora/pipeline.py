"""One training run, start to finish, identical for both backends except `backend.load`.

Order matters for the user: data is read and tokenized (and bad rows reported) before any model weight is
loaded, and the run folder appears only once everything in it is written.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, set_seed

from llama_lora import assets, measure
from llama_lora.audit import build_audit, print_audit, render_marked
from llama_lora.backend import Backend
from llama_lora.chat_template import ensure_chat_template
from llama_lora.config import EMBEDDED_MODEL, MODEL_ALIASES, TrainConfig, save_yaml, to_record
from llama_lora.data import prepare
from llama_lora.errors import DataError
from llama_lora.records import plot_loss, write_json
from llama_lora.training import StepLog, build_sft_config, effective_args, make_trainer, to_dataset

EXIT_BAD_INPUT = 2


def model_path(model: str) -> str:
    """A hub id or local folder for --model, converting the embedded model on first use."""
    if model == EMBEDDED_MODEL:
        return str(assets.smollm2_dir())
    return MODEL_ALIASES.get(model, model)


def load_tokenizer(path: str) -> tuple[Any, str]:
    """The tokenizer the data is formatted with (one object for both backends) and where its template is from."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        # Llama 3.1 ships no pad token; its reserved fine-tune pad token keeps padding distinct from <|eot_id|>.
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer, template


def run(cfg: TrainConfig, backend: Backend, dry_run: bool = False) -> int:
    """Train, evaluate and save one adapter (or, for a dry run, only audit the data); returns the exit status."""
    try:
        return _run(cfg, backend, dry_run)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(cfg: TrainConfig, backend: Backend, dry_run: bool) -> int:
    started = time.perf_counter()
    set_seed(cfg.seed)
    path = model_path(cfg.model)
    tokenizer, template = load_tokenizer(path)
    prepared = prepare(cfg, tokenizer)
    audit = build_audit(prepared, cfg.max_seq_length, cfg.overlength, cfg.loss_on, template)
    print_audit(audit)
    if dry_run:
        example = prepared.train.rows[0]
        print(f"\nExample: {example['where']} as the model sees it; text inside [[ ]] counts in the loss:\n")
        print(render_marked(tokenizer, example))
        print("\nDry run: no model weights loaded, nothing written.")
        return 0
    if not torch.cuda.is_available():
        steps = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epoch(s)"
        model = "the embedded SmolLM2-135M-Instruct" if cfg.model == EMBEDDED_MODEL else cfg.model
        print(f"No CUDA GPU found: training {model} on CPU for {steps} (--model and --max-steps change this).")
    train_rows = prepared.train.rows
    eval_rows = prepared.eval.rows if prepared.eval else []
    data_record = {
        "format": audit["format"],
        "hash": audit["hash"],
        "labels": audit["labels"],
        **{name: {"source": split["source"], "rows": split["rows_kept"], "tokens": split["tokens"],
                  "supervised_tokens": split["supervised_tokens"]} for name, split in audit["splits"].items()},
    }

    output_dir = Path(cfg.output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written into a hidden staging folder first, so a crash never leaves a folder that
    # looks finished; the staging folder is removed on any failure.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a finished run folder should read like any other
    try:
        write_json(staging / "audit.json", audit)
        metrics = _train(cfg, backend, path, tokenizer, train_rows, eval_rows, staging)
        metrics["data"] = data_record
        metrics["runtime_s"]["total"] = round(time.perf_counter() - started, 2)
        tokenizer.save_pretrained(staging)
        save_yaml(cfg, staging / "config.yaml")
        write_json(staging / "metrics.json", metrics)
        plot_loss(metrics["loss_history"], metrics["eval_loss"],
                  f"{backend.title} LoRA r={cfg.r} on {cfg.model} ({'4-bit' if cfg.load_in_4bit else cfg.dtype})",
                  staging / "loss_curve.png")
        _replace(output_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_summary(metrics, output_dir)
    return 0


def _train(cfg: TrainConfig, backend: Backend, path: str, tokenizer: Any, train_rows: list[dict[str, Any]],
           eval_rows: list[dict[str, Any]], staging: Path) -> dict[str, Any]:
    """Load, wrap, evaluate, train, evaluate, save the adapter; return the metrics record."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    load_started = time.perf_counter()
    model = backend.load(cfg, path)
    load_s = time.perf_counter() - load_started
    memory_after_load = measure.memory_snapshot()

    step_log = StepLog(staging / "train_log.jsonl")
    trainer = make_trainer(
        model, tokenizer, build_sft_config(cfg, staging / "trainer"),
        to_dataset(train_rows), to_dataset(eval_rows) if eval_rows else None,
        [step_log], backend.own_cpu_loss,
    )
    eval_before = trainer.evaluate()["eval_loss"] if eval_rows else None
    result = trainer.train()
    memory_after_training = measure.memory_snapshot()
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None

    model.save_pretrained(staging)
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    train_s = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "status": "completed",
        "backend": backend.name,
        "model": {"name": cfg.model, "path": path},
        "load_in_4bit": cfg.load_in_4bit,
        "dtype": cfg.dtype,
        "device": measure.device_info(),
        "libraries": measure.library_versions(backend.libraries),
        "parameters": measure.parameter_counts(model),
        "memory": {"after_load": memory_after_load, "after_training": memory_after_training},
        "runtime_s": {"load": round(load_s, 2), "train": round(train_s, 2)},
        "steps": trainer.state.global_step,
        "tokens": {"non_padding_seen": tokens, "per_second": round(tokens / train_s, 1)},
        "final_train_loss": step_log.history[-1]["loss"] if step_log.history else None,
        "eval_loss": {"before": eval_before, "after": eval_after},
        "loss_history": step_log.history,
        "training_args": effective_args(trainer),
        "config": to_record(cfg),
    }


def _replace(target: Path, staging: Path) -> None:
    """Move the finished staging folder to `target`, replacing an earlier run there."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def _print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    """A few lines a user reads at the end of a run."""
    ev = metrics["eval_loss"]
    mem = metrics["memory"]["after_training"]
    peak = (f"{mem['gpu_peak_allocated_gb']} GB GPU allocated, {mem['gpu_peak_reserved_gb']} GB reserved"
            if "gpu_peak_allocated_gb" in mem else f"{mem['cpu_peak_rss_gb']} GB process RSS")
    print(f"\nSaved adapter and run record to {output_dir}/")
    if ev["before"] is not None:
        print(f"  eval loss   {ev['before']:.4f} -> {ev['after']:.4f}")
    print(f"  train loss  {metrics['final_train_loss']:.4f} after {metrics['steps']} steps")
    print(f"  speed       {metrics['tokens']['per_second']:.0f} non-padding tokens/s "
          f"({metrics['runtime_s']['train']:.0f} s training)")
    print(f"  peak memory {peak}")
