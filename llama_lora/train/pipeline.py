"""One training run, start to finish, identical for both backends except `backend.load`, in five phases:

    prepare data      read, format, tokenize and audit the data (bad rows reported) before any weight loads
    open run folder   a staging folder with the config, the audit and a "running" record (or the interrupted
                      run's, with the checkpoint --resume continues from)
    train             load and wrap the model, evaluate it, train
    record            evaluate the trained adapter, answer held-out prompts, save the adapter, build the record
    finish            tokenizer and plot beside it, the "completed" record last, the folder renamed into place

Each phase is one function taking what the earlier ones handed on, so a reader (or a new phase) sees exactly
what flows between them. The run folder appears only once everything in it is written.

Under `accelerate launch`/`torchrun` every process runs all of this (data, trainer, evaluations are
collective), but only the main process writes files or prints the audit and summary (see distributed.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, set_seed

from llama_lora import distributed, quiet
from llama_lora.atomic_files import replaced, saved_into, write_json, write_text
from llama_lora.backend import Backend
from llama_lora.data.audit import build_audit, metrics_data, print_audit, render_marked
from llama_lora.data.chat_template import ensure_chat_template
from llama_lora.data import token_cache
from llama_lora.data.prepare import Prepared, prepare
from llama_lora.errors import UsageError, describe_os_error, exit_status
from llama_lora.model import assets, quantization
from llama_lora.model.preflight import check_model, check_tokenizer_fits
from llama_lora.options import remote_code, tracking
from llama_lora.options.batching import padding_preview
from llama_lora.options.config import EMBEDDED_MODEL, RunOptions, TrainConfig, save_yaml, to_record, with_eval_steps
from llama_lora.run import checkpoints, files, forgetting, measure, owned, run_folder, run_lock, run_record
from llama_lora.run.plots import plot_loss
from llama_lora.train import outcome, samples
from llama_lora.train.preemption import (
    AFTER_TRAINING,
    BEFORE_TRAINING,
    SAVING,
    GracefulStop,
    Interrupted,
)
from llama_lora.train.trainer import (
    SealCheckpoints,
    StepLog,
    build_sft_config,
    effective_args,
    make_trainer,
    planned_training_done,
    restore_patience,
    to_dataset,
)

def load_tokenizer(path: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The tokenizer the data is formatted with (one object for both backends) and where its template is from."""
    with remote_code.explained(path):
        tokenizer = quiet.quiet_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
    template = ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        # Llama 3.1 ships no pad token; its reserved fine-tune pad token keeps padding distinct from <|eot_id|>.
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer, template


def train_adapter(cfg: TrainConfig, backend: Backend, options: RunOptions = RunOptions()) -> int:
    """Train, evaluate and save one adapter (or, for a dry run, only audit the data); returns the exit status."""
    return exit_status(lambda: _train_adapter(cfg, backend, options))


@dataclass(frozen=True)
class PreparedData:
    """What the "prepare data" phase hands on: the data tokenized and audited, before any model weight loads."""

    cfg: TrainConfig  # with the epoch-based default --eval-steps resolved from the data's size
    path: str  # the base model's folder or hub id
    tokenizer: Any
    prepared: Prepared
    audit: dict[str, Any]
    trust_remote_code: bool  # --trust-remote-code of this command: the model's own code may run

    @property
    def eval_rows(self) -> Sequence[dict[str, Any]]:
        return self.prepared.eval.rows if self.prepared.eval else []


@dataclass(frozen=True)
class OpenRun:
    """What the "open the run folder" phase hands on: where the run writes, and the checkpoint it resumes from."""

    output_dir: Path
    staging: Path
    checkpoint: Path | None


@dataclass
class Trained:
    """What the "train" phase hands on to the "record" phase."""

    model: Any
    trainer: Any
    result: Any  # the trainer's TrainOutput
    step_log: StepLog
    stop: GracefulStop
    load_s: float
    memory_after_load: dict[str, Any]
    memory_after_training: dict[str, Any]
    eval_before: float | None
    general_text: forgetting.Check  # the forgetting check's figure before training
    resume_step: int
    tokens_before: int


def _train_adapter(cfg: TrainConfig, backend: Backend, options: RunOptions) -> int:
    """A dry run, or a run: the run holds its output folder's lock from its first check to its end."""
    if options.dry_run:
        return _show_dry_run(prepare_data(cfg, options))
    output_dir = Path(cfg.output_dir)
    owned.check_not_protected(output_dir, "--output-dir")
    # under a launch the main process holds it; the others stop with it (the launcher ends them) if it cannot
    with run_lock.held(output_dir) if distributed.is_main() else nullcontext():
        return _run(cfg, backend, options, output_dir)


def _run(cfg: TrainConfig, backend: Backend, options: RunOptions, output_dir: Path) -> int:
    """The phases of a run, in order: prepare data, open the run folder, train, record, finish."""
    started = time.perf_counter()
    run_folder.check_destination(output_dir, options)
    data = prepare_data(cfg, options)
    stop = GracefulStop()  # from here a signal stops the run cleanly, whatever phase it is in
    stop.install()
    try:
        run = open_run_folder(data, backend, options, output_dir)
        try:
            trained = train(data, backend, run, stop)
            metrics = record(data, backend, run, trained)
            if distributed.is_main():
                finish(data, backend, run, metrics, started)
        except Interrupted as interruption:
            return outcome.interrupted(run.staging, interruption)
        except Exception as err:  # anything that ends the run: record it, keep the checkpoints, say what to do
            return outcome.failed(data.cfg, run.staging, err)
        if stop.received and distributed.is_main():
            print(f"{stop.received} arrived while the run was saving: it completed first.", file=sys.stderr)
        return 0
    finally:
        stop.release()


def prepare_data(cfg: TrainConfig, options: RunOptions) -> PreparedData:
    """Phase "prepare data": read, format, tokenize and audit the data (bad rows reported) before any model weight
    is loaded; the main process prints the audit."""
    set_seed(cfg.seed)
    path = assets.model_path(cfg.model)
    check_model(cfg, path, options.trust_remote_code)
    tokenizer, template = load_tokenizer(path, options.trust_remote_code)
    check_tokenizer_fits(cfg, tokenizer, path, options.trust_remote_code)
    try:
        prepared = prepare(cfg, tokenizer)
    except OSError as err:  # writing the tokenized-data cache; a library's error may not name the file
        raise UsageError(describe_os_error(err, token_cache.cache_dir(cfg.data_cache))) from err
    template = prepared.template or template  # tool-calling data may have needed the Llama 3.1 template
    # an epoch-based run's default --eval-steps depends on its step count, known now that the data is read
    cfg = with_eval_steps(cfg, len(prepared.train.rows), distributed.world_size())
    audit = build_audit(prepared, cfg.max_seq_length, cfg.overlength, cfg.loss_on, template)
    audit["batching"] = padding_preview(prepared.train.rows.kept_lengths(), cfg.batch_size, cfg.batching)
    if distributed.is_main():
        print_audit(audit)
    data = PreparedData(cfg, path, tokenizer, prepared, audit, options.trust_remote_code)
    if not options.dry_run and cfg.early_stopping_patience and not data.eval_rows:
        raise UsageError("--early-stopping-patience needs eval data: an eval split or --eval-fraction > 0")
    return data


def _show_dry_run(data: PreparedData) -> int:
    """--dry-run: after the audit, the first row (and the first tool-calling row) as the model sees it."""
    if not distributed.is_main():
        return 0
    # the first row, and the first tool-calling row too, so a tool call's trained spans can be checked
    shown = [data.prepared.train.rows[0], data.prepared.train.rows.first("tools")]
    for example in {row["where"]: row for row in shown if row}.values():
        print(f"\nExample: {example['where']} as the model sees it; text inside [[ ]] counts in the loss:\n")
        print(render_marked(data.tokenizer, example))
    print("\nDry run: no model weights loaded, no run folder written.")
    return 0


def open_run_folder(data: PreparedData, backend: Backend, options: RunOptions, output_dir: Path) -> OpenRun:
    """Phase "open the run folder": a new staging folder with the config, the audit and a "running" record, or the
    interrupted run's, with the checkpoint --resume continues from."""
    cfg = data.cfg
    staging = run_folder.staging_dir(output_dir)
    is_main = distributed.is_main()
    checkpoint, passed_over = run_folder.resume_checkpoint(staging, options.resume) if options.resume else (None, [])
    if checkpoint:
        run_folder.check_same_config(staging, cfg)
        if is_main:
            run_folder.clear_failure_claim(staging)
            for line in passed_over:
                print(f"Passed over {line}", file=sys.stderr)
            print(f"Resuming from {checkpoint}")
    elif is_main:
        run_folder.reset_staging(staging)
        try:
            save_yaml(cfg, staging / files.CONFIG)
            write_json(staging / files.AUDIT, data.audit)
            run_record.write(staging, run_record.new("running", backend=backend.name, config=to_record(cfg)))
        except OSError:  # a full disk, say: the new folder holds nothing yet, so nothing is left saying "running"
            shutil.rmtree(staging, ignore_errors=True)
            raise
    distributed.wait_for_everyone()  # the other processes' trainers write into the staging folder too
    if is_main:
        print(_start_notice(cfg))
    return OpenRun(output_dir, staging, checkpoint)


def train(data: PreparedData, backend: Backend, run: OpenRun, stop: GracefulStop) -> Trained:
    """Phase "train": load and wrap the model, evaluate it, train (from the checkpoint when resuming)."""
    cfg, staging, checkpoint = data.cfg, run.staging, run.checkpoint
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    load_started = time.perf_counter()
    stop.enter(BEFORE_TRAINING, "loading the model")
    model = backend.load(cfg, data.path, data.trust_remote_code)
    quantization.keep_4bit_layers_trainable(model)  # an eval before training must not freeze 4-bit layers' input grads
    load_s = time.perf_counter() - load_started
    memory_after_load = measure.memory_snapshot()

    state = _checkpoint_state(checkpoint) if checkpoint else {}  # the trainer's state when the checkpoint was saved
    resume_step = state.get("global_step", 0)
    stop.step, stop.saved_step = resume_step, resume_step if checkpoint else None
    if stop.requested():
        raise Interrupted(resume_step, stop.received, checkpoint, BEFORE_TRAINING, stop.activity)
    is_main = distributed.is_main()
    # every process checks the (already gathered) loss for NaN; only the main one writes the log
    step_log = StepLog(staging / files.TRAIN_LOG, resume_step, write=is_main)
    if checkpoint:  # the evaluations before the interruption, from the checkpoint's own log
        step_log.evals = [{"step": e["step"], "eval_loss": e["eval_loss"], "seconds": e.get("eval_runtime")}
                          for e in state["log_history"] if "eval_loss" in e]
    report_to = tracking.set_up(cfg.report_to, staging, cfg.experiment)
    eval_rows = data.eval_rows
    trainer = make_trainer(
        model, data.tokenizer, build_sft_config(cfg, staging / files.CHECKPOINTS, report_to, bool(eval_rows)),
        to_dataset(data.prepared.train.rows), to_dataset(eval_rows) if eval_rows else None,
        [step_log, stop, SealCheckpoints(cfg.keep_checkpoints, write=is_main)], backend.own_cpu_loss,
        cfg.early_stopping_patience, cfg.batching,
    )
    trainer.stop_requested = stop.requested  # no batch is taken once a signal arrived
    tracking.adopt(trainer, to_record(cfg))  # each tracker gets the resolved config; its run stays open to the end
    if checkpoint:
        restore_patience(trainer, state)
        trainer.training_done = planned_training_done(state)
        if trainer.training_done and is_main:
            print(f"Training had finished at step {resume_step}: evaluating, sampling and saving without "
                  "training another step")
    running = run_record.read(staging) if checkpoint else None
    with stop.aborting(model, BEFORE_TRAINING, "evaluating the model before training", checkpoint):
        eval_before = running.value("eval_loss.before") if running else (
            trainer.evaluate()["eval_loss"] if eval_rows else None)
        general_text = forgetting.before(model, data.tokenizer, cfg.max_seq_length)  # a new LoRA adds nothing yet
    if is_main:
        run_record.write(staging, run_record.new("running", backend=backend.name, config=to_record(cfg),
                                                 eval_loss={"before": eval_before}))
    tokens_before = state.get("num_input_tokens_seen", 0)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.stopped_at is not None:
        raise Interrupted(stop.stopped_at, stop.received, _checkpoint_of(run, stop.stopped_at))
    return Trained(model, trainer, result, step_log, stop, load_s, memory_after_load, measure.memory_snapshot(),
                   eval_before, general_text, resume_step, tokens_before)


def record(data: PreparedData, backend: Backend, run: OpenRun, trained: Trained) -> run_record.RunRecord:
    """Phase "record": evaluate the trained adapter, answer the held-out prompts, save the adapter, and build the
    run record."""
    cfg, staging, model, trainer = data.cfg, run.staging, trained.model, trained.trainer
    eval_rows = data.eval_rows
    is_main = distributed.is_main()
    stop, last = trained.stop, _checkpoint_of(run, trainer.state.global_step)  # the last step is checkpointed
    with stop.aborting(model, AFTER_TRAINING, "evaluating the trained adapter", last):
        eval_after = _eval_after(trainer, trained.step_log, cfg, bool(eval_rows))
        forgotten = trained.general_text.after(model)
    # base (adapter disabled) vs tuned answers to held-out prompts -> samples.md; both after training, so a
    # resumed run samples the same way. Every process generates (under FSDP generation is collective); one writes.
    with stop.aborting(model, AFTER_TRAINING, "answering the sample prompts", last):
        sampled = samples.before_and_after(model, data.tokenizer, eval_rows, cfg.samples, cfg.sample_max_tokens,
                                           data.prepared.labels)
    stop.enter(SAVING, "saving the adapter and the run folder")
    if sampled and is_main:
        write_text(staging / files.SAMPLES, sampled[1])

    _save_adapter(trainer, model, staging, is_main)
    per_process = distributed.gather({"after_load": trained.memory_after_load,
                                      "after_training": trained.memory_after_training})
    # the trainer's runtime includes its evaluations: training time and tokens/s leave them out
    eval_s = sum(e["seconds"] or 0.0 for e in trained.step_log.evals if e["step"] > trained.resume_step)
    train_s = trained.result.metrics["train_runtime"] - eval_s
    # the trainer gathers the token count from every process: tokens/s is the whole launch's figure
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = run_record.new(
        "completed",
        backend=backend.name,
        model={"name": cfg.model, "path": data.path},
        load_in_4bit=cfg.load_in_4bit,
        dtype=cfg.dtype,
        device=measure.device_info(),
        libraries=measure.library_versions(backend.libraries),
        parameters=measure.parameter_counts(model),
        processes={"count": distributed.world_size(), "fsdp": distributed.fsdp_requested()},
        # the main process's own device, and (under a launch) each process's, in rank order
        memory={"after_load": trained.memory_after_load, "after_training": trained.memory_after_training,
                **({"per_process": per_process} if len(per_process) > 1 else {})},
        runtime_s={"load": round(trained.load_s, 2), "train": round(train_s, 2),
                   "eval_during_training": round(eval_s, 2), "samples": sampled[0]["seconds"] if sampled else None},
        steps=trainer.state.global_step,
        resumed_from_step=trained.resume_step or None,
        # tokens/s over this process's training only: a resumed run did not train the earlier steps here (and one
        # resumed from its last step's checkpoint trained none)
        tokens={"non_padding_seen": tokens, "per_second": round((tokens - trained.tokens_before) / train_s, 1)
                if tokens > trained.tokens_before and train_s > 0 else None},
        batching=_batching_record(cfg, model, trainer),
        final_train_loss=trained.step_log.history[-1]["loss"] if trained.step_log.history else None,
        eval_loss={"before": trained.eval_before, "after": eval_after, "during": trained.step_log.evals},
        forgetting=forgotten,
        samples=sampled[0] if sampled else None,
        early_stopping=_early_stopping_record(cfg, trainer, trained.step_log),
        loss_history=trained.step_log.history,
        training_args=effective_args(trainer),
        config=to_record(cfg),
        data=metrics_data(data.audit),
    )
    if is_main:
        tracking.report_figures(trainer, metrics.dump())  # peak memory by phase, tokens/s: the trackers get them too
    return metrics


def finish(data: PreparedData, backend: Backend, run: OpenRun, metrics: run_record.RunRecord,
           started: float) -> None:
    """Phase "finish" (main process): the tokenizer and loss plot beside the adapter, the "completed" record written
    last, the staging folder renamed into place, and the summary printed."""
    cfg, staging = data.cfg, run.staging
    metrics.runtime_s.total = round(time.perf_counter() - started, 2)
    with saved_into(staging) as folder:
        data.tokenizer.save_pretrained(folder)
    with replaced(staging / files.LOSS_PLOT) as plot:
        plot_loss(metrics.loss_history, metrics.eval_loss.model_dump(),
                  f"{backend.title} LoRA r={cfg.r} on {cfg.model} ({'4-bit' if cfg.load_in_4bit else cfg.dtype})",
                  plot)
    tracking.finish(cfg.report_to)  # before the rename: a completed run folder gets no more writes
    run_record.write(staging, metrics)  # the last file written says "completed"
    run_folder.finish(run.output_dir, staging)
    _print_summary(metrics, run.output_dir)


def _checkpoint_of(run: OpenRun, step: int) -> Path:
    """The checkpoint holding `step`: the one resumed from when no step was trained since, else the step's own."""
    if run.checkpoint and checkpoints.step_of(run.checkpoint) == step:
        return run.checkpoint
    return run.staging / files.CHECKPOINTS / f"{checkpoints.PREFIX}{step}"


def _start_notice(cfg: TrainConfig) -> str:
    """One line saying what will be trained, where, and with which resolved recipe."""
    steps = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epoch(s)"
    model = "the embedded SmolLM2-135M-Instruct" if cfg.model == EMBEDDED_MODEL else cfg.model
    where = "on the GPU" if torch.cuda.is_available() else "on CPU (no CUDA GPU found)"
    evals = f", eval every {cfg.eval_steps} steps" if cfg.eval_steps else ""
    return (f"Training {model} {where} for {steps}: batch {cfg.batch_size} x {cfg.grad_accum} accumulation, "
            f"learning rate {cfg.learning_rate:g}{evals} (config.yaml records every value; flags change them).")


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
    state_dict = None
    if distributed.fsdp_requested() and distributed.world_size() > 1:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if is_main:
        with saved_into(staging) as folder:  # whole files only, even on a full disk
            model.save_pretrained(folder, state_dict=state_dict)


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
    if metrics.tokens.per_second is not None:
        print(f"  speed       {metrics.tokens.per_second:.0f} non-padding tokens/s{scope} "
              f"({metrics.runtime_s.train:.0f} s training)")
    batching = metrics.batching or {}
    if batching.get("padding_share") is not None:
        print(f"  batching    {batching['mode']}: {batching['padding_share']:.1%} of the tokens computed were padding")
    print(f"  peak memory {peak}")
    cache = (metrics.data or {}).get("cache") or {}
    if cache.get("path", "off") != "off":
        print(f"  data cache  {cache['path']}")
    config = metrics.config or {}
    for command in tracking.look_at(config.get("report_to", "none"), output_dir,
                                    config.get("experiment", tracking.DEFAULT_EXPERIMENT),
                                    run_folder.staging_dir(output_dir)):
        print(f"  tracking    {command}")
    if metrics.samples:
        style, n = metrics.samples["style"], metrics.samples["prompts"]
        for i, (name, label) in enumerate((("quick_check", "'Quick check' endings"),
                                           ("numbered_steps", "numbered steps"), ("stopped", "ends its turn"))):
            before, after = (round(style[when][name] * n) for when in ("before", "after"))
            head = "  samples     " if i == 0 else "              "
            tail = " on held-out prompts (base -> tuned; samples.md)" if i == 0 else ""
            print(f"{head}{label} {before}/{n} -> {after}/{n}{tail}")
