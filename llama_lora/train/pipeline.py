"""One training run, start to finish, identical for both backends except `backend.load`.

Order matters for the user: data is read and tokenized (and bad rows reported) before any model weight is
loaded, and the run folder appears only once everything in it is written.

Under `accelerate launch`/`torchrun` every process runs all of this (data, trainer, evaluations are
collective), but only the main process writes files or prints the audit and summary (see distributed.py).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, set_seed

from llama_lora import distributed, quiet
from llama_lora.atomic_files import write_json, write_text
from llama_lora.backend import Backend
from llama_lora.data.audit import build_audit, print_audit, render_marked
from llama_lora.data.chat_template import ensure_chat_template
from llama_lora.data.prepare import prepare
from llama_lora.errors import UsageError
from llama_lora.model import assets, quantization
from llama_lora.model.preflight import check_model, check_tokenizer_fits, oom_advice
from llama_lora.options import tracking
from llama_lora.options.batching import padding_preview
from llama_lora.options.config import EMBEDDED_MODEL, RunOptions, TrainConfig, save_yaml, to_record, with_eval_steps
from llama_lora.run import files, forgetting, measure, run_folder, run_record
from llama_lora.run.plots import plot_loss
from llama_lora.train import samples
from llama_lora.train.preemption import EXIT_INTERRUPTED, GracefulStop, Interrupted
from llama_lora.train.trainer import NonFiniteLoss, StepLog, build_sft_config, effective_args, make_trainer, to_dataset

EXIT_TRAINING_FAILED = 1
EXIT_BAD_INPUT = 2


def load_tokenizer(path: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The tokenizer the data is formatted with (one object for both backends) and where its template is from."""
    tokenizer = quiet.quiet_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
    template = ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        # Llama 3.1 ships no pad token; its reserved fine-tune pad token keeps padding distinct from <|eot_id|>.
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer, template


def train_adapter(cfg: TrainConfig, backend: Backend, options: RunOptions = RunOptions()) -> int:
    """Train, evaluate and save one adapter (or, for a dry run, only audit the data); returns the exit status."""
    try:
        return _train_adapter(cfg, backend, options)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _train_adapter(cfg: TrainConfig, backend: Backend, options: RunOptions) -> int:
    if options.plan:
        from llama_lora.model.memory_plan import parse_launch, plan, print_plan

        print_plan(cfg, plan(cfg, assets.model_path(cfg.model), parse_launch(options.plan)))
        return 0
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    staging = run_folder.staging_dir(output_dir)
    if not options.dry_run:
        run_folder.check_destination(output_dir, options)
    set_seed(cfg.seed)
    path = assets.model_path(cfg.model)
    check_model(cfg, path)
    tokenizer, template = load_tokenizer(path, cfg.trust_remote_code)
    check_tokenizer_fits(cfg, tokenizer, path)
    prepared = prepare(cfg, tokenizer)
    template = prepared.template or template  # tool-calling data may have needed the Llama 3.1 template
    # an epoch-based run's default --eval-steps depends on its step count, known now that the data is read
    cfg = with_eval_steps(cfg, len(prepared.train.rows), distributed.world_size())
    audit = build_audit(prepared, cfg.max_seq_length, cfg.overlength, cfg.loss_on, template)
    audit["batching"] = padding_preview(prepared.train.rows.kept_lengths(), cfg.batch_size, cfg.batching)
    is_main = distributed.is_main()
    if is_main:
        print_audit(audit)
    if options.dry_run and not is_main:
        return 0
    if options.dry_run:
        # the first row, and the first tool-calling row too, so a tool call's trained spans can be checked
        shown = [prepared.train.rows[0], prepared.train.rows.first("tools")]
        for example in {row["where"]: row for row in shown if row}.values():
            print(f"\nExample: {example['where']} as the model sees it; text inside [[ ]] counts in the loss:\n")
            print(render_marked(tokenizer, example))
        print("\nDry run: no model weights loaded, no run folder written.")
        return 0
    eval_rows = prepared.eval.rows if prepared.eval else []
    if cfg.early_stopping_patience and not eval_rows:
        raise UsageError("--early-stopping-patience needs eval data: an eval split or --eval-fraction > 0")
    checkpoint = run_folder.resume_checkpoint(staging, options.resume) if options.resume else None
    if checkpoint:
        run_folder.check_same_config(staging, cfg)
        if is_main:
            run_folder.clear_failure_claim(staging)
            print(f"Resuming from {checkpoint}")
    elif is_main:
        run_folder.reset_staging(staging)
        run_record.write(staging, run_record.new("running", backend=backend.name, config=to_record(cfg)))
        save_yaml(cfg, staging / files.CONFIG)
        write_json(staging / files.AUDIT, audit)
    distributed.wait_for_everyone()  # the other processes' trainers write into the staging folder too
    if is_main:
        print(_start_notice(cfg))
    data_record = {
        "format": audit["format"],
        "hash": audit["hash"],
        "labels": audit["labels"],
        "cache": audit["cache"],
        **{name: {"source": split["source"], "rows": split["rows_kept"], "tokens": split["tokens"],
                  "supervised_tokens": split["supervised_tokens"]} for name, split in audit["splits"].items()},
    }
    try:
        metrics = _load_train_measure(cfg, backend, path, tokenizer, prepared.train.rows, eval_rows, staging, checkpoint,
                         prepared.labels)
    except Interrupted as stop:
        return _interrupted(staging, stop)
    except Exception as err:  # anything that ends training: record it, keep the checkpoints, say what to do
        return _fail(cfg, staging, err)
    if not is_main:
        return 0
    metrics.data = data_record
    metrics.runtime_s.total = round(time.perf_counter() - started, 2)
    tokenizer.save_pretrained(staging)
    plot_loss(metrics.loss_history, metrics.eval_loss.model_dump(),
              f"{backend.title} LoRA r={cfg.r} on {cfg.model} ({'4-bit' if cfg.load_in_4bit else cfg.dtype})",
              staging / files.LOSS_PLOT)
    tracking.finish(cfg.report_to)  # before the rename: a completed run folder gets no more writes
    run_record.write(staging, metrics)  # the last file written says "completed"
    run_folder.finish(output_dir, staging)
    _print_summary(metrics, output_dir)
    return 0


def _interrupted(staging: Path, stop: Interrupted) -> int:
    """Record where a signalled run stopped (its checkpoint is that step's), and say how to continue."""
    checkpoint = staging / files.CHECKPOINTS / f"checkpoint-{stop.step}"
    if distributed.is_main():
        update = {"status": "interrupted", "interrupted_at_step": stop.step, "reason": str(stop),
                  "last_checkpoint": str(checkpoint)}
        running = run_record.read(staging)
        record = running.model_copy(update=update) if running else run_record.new(**update)
        record.model_fields_set.update(update)
        run_record.write(staging, record)
        print(f"Interrupted: {stop}; checkpoint {checkpoint}\nRun the same command with --resume to continue "
              f"(exit status {EXIT_INTERRUPTED}).", file=sys.stderr)
    return EXIT_INTERRUPTED


def _start_notice(cfg: TrainConfig) -> str:
    """One line saying what will be trained, where, and with which resolved recipe."""
    steps = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epoch(s)"
    model = "the embedded SmolLM2-135M-Instruct" if cfg.model == EMBEDDED_MODEL else cfg.model
    where = "on the GPU" if torch.cuda.is_available() else "on CPU (no CUDA GPU found)"
    evals = f", eval every {cfg.eval_steps} steps" if cfg.eval_steps else ""
    return (f"Training {model} {where} for {steps}: batch {cfg.batch_size} x {cfg.grad_accum} accumulation, "
            f"learning rate {cfg.learning_rate:g}{evals} (config.yaml records every value; flags change them).")


def _fail(cfg: TrainConfig, staging: Path, err: BaseException) -> int:
    """Mark the staging folder failed, and tell the user why and how to go on.

    Under a launch, the first process to fail records it (it may not be the main one, which can be blocked in a
    collective); the launcher then ends the others, so no process waits forever.
    """
    where = f"[process {distributed.rank()} of {distributed.world_size()}] " if distributed.world_size() > 1 else ""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        message = oom_advice(cfg, *measure.gpu_peak_and_total_gib())
    elif isinstance(err, NonFiniteLoss):
        message = (f"Training stopped: {err}. Lower --learning-rate (now {cfg.learning_rate:g}) or check the data "
                   "for broken rows.")
    else:
        message = f"Training failed: {type(err).__name__}: {err}"
    saved = run_folder.checkpoints(staging)
    failure = {"status": "failed", "reason": where + message, "last_checkpoint": str(saved[-1]) if saved else None}
    try:
        running = run_record.read(staging)
    except UsageError:  # a half-written or foreign metrics.json: the failure record replaces it
        running = None
    record = running.model_copy(update=failure) if running else run_record.new(**failure)
    record.model_fields_set.update(failure)
    if distributed.world_size() == 1 or run_folder.claim_failure(staging):
        run_record.write(staging, record)
    resume = (f"The last good checkpoint is {saved[-1]}; after fixing the cause, --resume continues from it."
              if saved else "No checkpoint was saved (see --save-steps).")
    print(f"error: {where}{message}\n{resume}\nRun record: {staging / files.METRICS}", file=sys.stderr)
    if not isinstance(err, (torch.cuda.OutOfMemoryError, NonFiniteLoss)):
        traceback.print_exception(err, file=sys.stderr)
    return EXIT_TRAINING_FAILED


def _load_train_measure(cfg: TrainConfig, backend: Backend, path: str, tokenizer: Any,
                        train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], staging: Path,
                        checkpoint: Path | None, labels: list[str] | None = None) -> run_record.RunRecord:
    """Load, wrap, evaluate, train (from a checkpoint when resuming), evaluate, sample, save the adapter."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    load_started = time.perf_counter()
    model = backend.load(cfg, path)
    quantization.keep_4bit_layers_trainable(model)  # an eval before training must not freeze 4-bit layers' input grads
    load_s = time.perf_counter() - load_started
    memory_after_load = measure.memory_snapshot()

    resume_step = _checkpoint_state(checkpoint)["global_step"] if checkpoint else 0
    is_main = distributed.is_main()
    # every process checks the (already gathered) loss for NaN; only the main one writes the log
    step_log = StepLog(staging / files.TRAIN_LOG, resume_step, write=is_main)
    if checkpoint:  # the evaluations before the interruption, from the checkpoint's own log
        step_log.evals = [{"step": e["step"], "eval_loss": e["eval_loss"], "seconds": e.get("eval_runtime")}
                          for e in _checkpoint_state(checkpoint)["log_history"] if "eval_loss" in e]
    stop = GracefulStop()  # SIGTERM / Ctrl-C: finish the step, checkpoint it, stop
    report_to = tracking.set_up(cfg.report_to, staging)
    trainer = make_trainer(
        model, tokenizer, build_sft_config(cfg, staging / files.CHECKPOINTS, report_to, bool(eval_rows)),
        to_dataset(train_rows), to_dataset(eval_rows) if eval_rows else None,
        [step_log, stop], backend.own_cpu_loss, cfg.early_stopping_patience, cfg.batching,
    )
    if report_to != "none":
        trainer.add_callback(tracking.config_callback(to_record(cfg), trainer))
    running = run_record.read(staging) if checkpoint else None
    eval_before = running.value("eval_loss.before") if running else (
        trainer.evaluate()["eval_loss"] if eval_rows else None)
    general_text = forgetting.before(model, tokenizer, cfg.max_seq_length)  # the forgetting check's base figure
    if is_main:
        run_record.write(staging, run_record.new("running", backend=backend.name, config=to_record(cfg),
                                                 eval_loss={"before": eval_before}))
    tokens_before = _checkpoint_state(checkpoint).get("num_input_tokens_seen", 0) if checkpoint else 0
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.stopped_at is not None:
        raise Interrupted(stop.stopped_at, stop.received)
    memory_after_training = measure.memory_snapshot()
    eval_after = _eval_after(trainer, step_log, cfg, bool(eval_rows))
    forgotten = general_text.after(model)
    # base (adapter disabled) vs tuned answers to held-out prompts -> samples.md; both after training, so a
    # resumed run samples the same way. Every process generates (under FSDP generation is collective); one writes.
    signalled = stop.after_training()  # then the samples wait: save what was trained within the grace period
    sampled = None if signalled else samples.before_and_after(model, tokenizer, eval_rows, cfg.samples,
                                                                cfg.sample_max_tokens, labels)
    if sampled and is_main:
        write_text(staging / files.SAMPLES, sampled[1])

    _save_adapter(trainer, model, staging, is_main)
    stop.release()
    per_process = distributed.gather({"after_load": memory_after_load, "after_training": memory_after_training})
    # the trainer's runtime includes its evaluations: training time and tokens/s leave them out
    eval_s = sum(e["seconds"] or 0.0 for e in step_log.evals if e["step"] > resume_step)
    train_s = result.metrics["train_runtime"] - eval_s
    # the trainer gathers the token count from every process: tokens/s is the whole launch's figure
    tokens = int(trainer.state.num_input_tokens_seen)
    return run_record.new(
        "completed",
        backend=backend.name,
        model={"name": cfg.model, "path": path},
        load_in_4bit=cfg.load_in_4bit,
        dtype=cfg.dtype,
        device=measure.device_info(),
        libraries=measure.library_versions(backend.libraries),
        parameters=measure.parameter_counts(model),
        processes={"count": distributed.world_size(), "fsdp": distributed.fsdp_requested()},
        # the main process's own device, and (under a launch) each process's, in rank order
        memory={"after_load": memory_after_load, "after_training": memory_after_training,
                **({"per_process": per_process} if len(per_process) > 1 else {})},
        runtime_s={"load": round(load_s, 2), "train": round(train_s, 2), "eval_during_training": round(eval_s, 2),
                   "samples": sampled[0]["seconds"] if sampled else None},
        steps=trainer.state.global_step,
        resumed_from_step=resume_step or None,
        # tokens/s over this process's training only: a resumed run did not train the earlier steps here
        tokens={"non_padding_seen": tokens, "per_second": round((tokens - tokens_before) / train_s, 1)},
        batching=_batching_record(cfg, model, trainer),
        final_train_loss=step_log.history[-1]["loss"] if step_log.history else None,
        eval_loss={"before": eval_before, "after": eval_after, "during": step_log.evals},
        forgetting=forgotten,
        samples=sampled[0] if sampled else None,
        **({"samples_skipped": "a signal arrived after the last step"} if signalled and cfg.samples else {}),
        early_stopping=_early_stopping_record(cfg, trainer, step_log),
        loss_history=step_log.history,
        training_args=effective_args(trainer),
        config=to_record(cfg),
    )


def _batching_record(cfg: TrainConfig, model: Any, trainer: Any) -> dict[str, Any]:
    """The batch layout this process trained with, the attention implementation it ran, and the share of the
    tokens it computed that were padding (this process's training batches only)."""
    counted = trainer.batch_tokens
    computed = counted["computed"]
    return {
        "mode": cfg.batching,
        "attention_implementation": model.config._attn_implementation,
        "examples_kept_apart_by": counted["layout"],
        "computed_tokens": computed,
        "padding_share": round(1 - counted["real"] / computed, 4) if computed else None,
    }


def _eval_after(trainer: Any, step_log: StepLog, cfg: TrainConfig, has_eval: bool) -> float | None:
    """Eval loss of the adapter being saved: the trainer's own evaluation at the last step when it made one (the
    same weights), else a new one (also after early stopping, which reloads the best checkpoint)."""
    if not has_eval:
        return None
    last = step_log.evals[-1] if step_log.evals else None
    if last and last["step"] == trainer.state.global_step and not cfg.early_stopping_patience:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def _save_adapter(trainer: Any, model: Any, staging: Path, is_main: bool) -> None:
    """Write the adapter once, from the main process. Under FSDP each process holds only a shard, so all of them
    take part in gathering the full state dict (to the main process's CPU) first."""
    if distributed.fsdp_requested() and distributed.world_size() > 1:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        if is_main:
            model.save_pretrained(staging, state_dict=state_dict)
    elif is_main:
        model.save_pretrained(staging)


def _checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _early_stopping_record(cfg: TrainConfig, trainer: Any, step_log: StepLog) -> dict[str, Any] | None:
    """Which step's adapter was kept, and whether training stopped before its planned end."""
    if not cfg.early_stopping_patience:
        return None
    best = trainer.state.best_model_checkpoint
    return {
        "patience": cfg.early_stopping_patience,
        "evaluations": step_log.evals,
        "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
        "best_eval_loss": trainer.state.best_metric,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
    }


def _print_summary(metrics: run_record.RunRecord, output_dir: Path) -> None:
    """A few lines a user reads at the end of a run."""
    ev = metrics.eval_loss
    mem = metrics.memory.after_training
    peak = (f"{mem.gpu_peak_allocated_gib} GiB GPU allocated, {mem.gpu_peak_reserved_gib} GiB reserved"
            if mem.gpu_peak_allocated_gib is not None else f"{mem.cpu_peak_rss_gib} GiB process RSS")
    processes = metrics.processes.count
    if processes > 1:
        peak += f" on the main process's device (each of the {processes} processes: metrics.json memory.per_process)"
    print(f"\nSaved adapter and run record to {output_dir}/")
    if ev.before is not None:
        print(f"  eval loss   {ev.before:.4f} -> {ev.after:.4f}")
    print(f"  train loss  {metrics.final_train_loss:.4f} after {metrics.steps} steps")
    if metrics.forgetting:
        print(f"  forgetting  {forgetting.summary(metrics.forgetting)}")
    scope = " (all processes)" if processes > 1 else ""
    print(f"  speed       {metrics.tokens.per_second:.0f} non-padding tokens/s{scope} "
          f"({metrics.runtime_s.train:.0f} s training)")
    batching = metrics.batching or {}
    if batching.get("padding_share") is not None:
        print(f"  batching    {batching['mode']}: {batching['padding_share']:.1%} of the tokens computed were padding")
    print(f"  peak memory {peak}")
    cache = (metrics.data or {}).get("cache") or {}
    if cache.get("path", "off") != "off":
        print(f"  data cache  {cache['path']}")
    for command in tracking.look_at((metrics.config or {}).get("report_to", "none"), output_dir):
        print(f"  tracking    {command}")
    if metrics.samples:
        style, n = metrics.samples["style"], metrics.samples["prompts"]
        for i, (name, label) in enumerate((("quick_check", "'Quick check' endings"),
                                           ("numbered_steps", "numbered steps"), ("stopped", "ends its turn"))):
            before, after = (round(style[when][name] * n) for when in ("before", "after"))
            head = "  samples     " if i == 0 else "              "
            tail = " on held-out prompts (base -> tuned; samples.md)" if i == 0 else ""
            print(f"{head}{label} {before}/{n} -> {after}/{n}{tail}")
