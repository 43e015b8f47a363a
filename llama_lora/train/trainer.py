"""The one TRL SFTTrainer set-up both backends train with.

Every setting that affects what is computed is written out here instead of left to a library default,
because the libraries disagree: TRL's SFTConfig.max_length defaults to 1024 while Unsloth copies the
model's max_seq_length into it, and Unsloth turns padding-free batching on unless told otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from llama_lora import distributed
from llama_lora.options.batching import batch_layout, check_effective, computed_tokens, sft_fields
from llama_lora.options.config import CONFIG_FIELDS, TrainConfig, recorded_path
from llama_lora.run import checkpoints

TRAINING_ARGS = "training_args."
# metrics.json records the trainer's effective value of every SFTConfig field an option declares as its recorded
# effect (config.py), and of these: the settings no option sets (compare.NOT_OPTIONS), and the fields that
# --epochs/--max-steps and --dtype set, whose effect is compared as the steps taken and the dtype.
OTHER_RECORDED_ARGS = ("max_length", "packing", "packing_strategy", "padding_free", "data_seed", "max_grad_norm",
                       "num_train_epochs", "max_steps", "bf16", "fp16")
RECORDED_ARGS = tuple(dict.fromkeys([
    *(recorded_path(name).removeprefix(TRAINING_ARGS) for name in CONFIG_FIELDS
      if recorded_path(name).startswith(TRAINING_ARGS)),
    *OTHER_RECORDED_ARGS,
]))


def build_sft_config(cfg: TrainConfig, output_dir: Path, report_to: list[str] | str = "none",
                     has_eval: bool = False) -> SFTConfig:
    """The SFTConfig for a run: the same object, field for field, for both backends."""
    early_stopping = cfg.early_stopping_patience > 0
    evaluate = has_eval and bool(cfg.eval_steps)
    return SFTConfig(
        output_dir=str(output_dir),
        # what is trained on; packing and padding_free explicit for every mode: Unsloth would otherwise
        # switch padding-free on, TRL leaves it off
        **sft_fields(cfg.batching, cfg.max_seq_length),
        # The rows arrive tokenized, within --max-seq-length (--overlength) and with supervised tokens (the audit
        # drops the others): TRL's own truncation and "fully masked" passes would only repeat that, and copy a
        # memory-mapped table of any size. Packing is done in that preparation (best-fit decreasing), so a packed
        # run keeps it.
        dataset_kwargs={"skip_prepare_dataset": cfg.batching != "packed"},
        # how
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # below 1: a share of the trainer's own step count (rounded up)
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_grad_norm=1.0,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # non-reentrant checkpointing gives gradients to LoRA weights even though the frozen embeddings'
        # outputs do not require grad
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # DDP: every LoRA weight gets a gradient each step, so DDP need not search the graph for unused ones
        # (transformers would turn the search on for any PEFT model, which is slower). No effect alone.
        ddp_find_unused_parameters=False,
        bf16=cfg.dtype == "bfloat16",
        fp16=cfg.dtype == "float16",
        seed=cfg.seed,
        data_seed=cfg.seed,
        # bookkeeping: log every step; evaluate before training ourselves, and every --eval-steps (early stopping
        # uses these); checkpoints every --save-steps hold optimizer, scheduler, RNG and data position for --resume
        logging_steps=1,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps if evaluate else None,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=max(cfg.save_steps, 1),
        # kept to --keep-checkpoints by SealCheckpoints, after a newer one is sealed: the trainer's own pruning runs
        # before a checkpoint is complete, so a kill then could leave none
        save_total_limit=None,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to=report_to,  # what the trackers see; never what is computed
        run_name=cfg.run_name,
        project=cfg.experiment,  # Trackio's project (the others take --experiment from the environment)
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )


def to_dataset(rows: Sequence[dict[str, Any]]) -> Dataset:
    """A pre-tokenized datasets.Dataset; TRL uses its `labels` column as is. Prepared data is already a memory-mapped
    Arrow table (data.prepare): the trainer reads that table, no copy."""
    if hasattr(rows, "dataset"):
        return rows.dataset.select_columns(["input_ids", "labels"])
    return Dataset.from_dict({
        "input_ids": [row["input_ids"] for row in rows],
        "labels": [row["labels"] for row in rows],
    })


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the run stops before saving a checkpoint of it."""


class StepLog(TrainerCallback):
    """Appends every logged step (loss, learning rate, grad norm, tokens) to a JSON-lines file, and stops the
    run at the first NaN or infinite loss or gradient norm.

    On resume the file is cut back to the checkpoint's step, so the log never holds a step twice.
    """

    def __init__(self, path: Path, resume_step: int = 0, write: bool = True):
        self.path = path
        self.write = write  # False on the other processes of a launch: one file, written by the main one
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        if resume_step and path.exists():
            kept = [entry for entry in map(_parsed, path.read_text().splitlines()) if entry]
            self.history = [entry for entry in kept if entry["step"] <= resume_step]
            if write:
                path.write_text("".join(json.dumps(entry) + "\n" for entry in self.history))
        self.started = time.perf_counter()
        self.training = False  # evaluations before and after training are not the trainer's own

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs and self.training:
            self.evals.append({"step": state.global_step, "eval_loss": logs["eval_loss"],
                               "seconds": logs.get("eval_runtime")})
        if not logs or "loss" not in logs:
            return
        bad = [name for name in ("loss", "grad_norm") if logs.get(name) is not None
               and not math.isfinite(float(logs[name]))]
        if bad:
            # Raised from the log hook, which runs before this step's checkpoint is saved: the checkpoints on
            # disk all predate the bad step.
            raise NonFiniteLoss(f"the {' and '.join(bad)} became {logs[bad[0]]} at step {state.global_step}")
        entry = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_seen": int(state.num_input_tokens_seen),
            "elapsed_s": round(time.perf_counter() - self.started, 3),
        }
        self.history.append(entry)
        if self.write:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


class SealCheckpoints(TrainerCallback):
    """Seals each checkpoint once every process has written its part (run/checkpoints.py: complete only then),
    then prunes the older ones to --keep-checkpoints (and the best one, which early stopping returns to)."""

    def __init__(self, keep: int, write: bool = True):
        self.keep = keep
        self.write = write  # the main process seals and prunes; the others only wait for it

    def on_save(self, args, state, control, **kwargs):
        distributed.wait_for_everyone()  # every process's shard of the checkpoint is on disk
        if self.write:
            folder = Path(args.output_dir)
            checkpoints.seal(folder / f"{checkpoints.PREFIX}{state.global_step}")
            checkpoints.prune(folder, self.keep, state.best_model_checkpoint)
        distributed.wait_for_everyone()  # none goes on to a step whose checkpoint could be pruned unsealed


def _parsed(line: str) -> dict[str, Any] | None:
    """One train_log.jsonl entry; None for a blank line or one a crash or a full disk cut short."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and "step" in entry else None


def make_trainer(
    model: Any,
    tokenizer: Any,
    args: SFTConfig,
    train: Dataset,
    eval: Dataset | None,
    callbacks: list[TrainerCallback],
    own_cpu_loss: bool,
    early_stopping_patience: int = 0,
    batching: str = "padded",
) -> SFTTrainer:
    """An SFTTrainer whose loss also works without CUDA (and that stops early when asked)."""
    if early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=early_stopping_patience)]
    # Subclass at call time: under Unsloth, trl.SFTTrainer is Unsloth's replacement by now.
    base = SFTTrainer

    class LoraSFTTrainer(base):
        # TRL 1.15 always computes the loss through a Triton LM-head kernel, which needs a CUDA driver.
        # Without one, fall back to transformers' own cross-entropy (same mean over supervised tokens),
        # unless the backend library brings its own CPU loss.
        _plain_loss = not torch.cuda.is_available() and not own_cpu_loss

        # tokens computed in training batches, and of them real (not padding): the run's padding share
        batch_tokens: ClassVar[dict[str, Any]] = {"computed": 0, "real": 0, "layout": None}  # replaced, never mutated

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if model.training:
                computed, real = computed_tokens(inputs)
                self.batch_tokens = {"computed": self.batch_tokens["computed"] + computed,
                                     "real": self.batch_tokens["real"] + real, "layout": batch_layout(inputs)}
            if self._plain_loss:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        # True when resuming from a checkpoint of the run's last step (planned_training_done): nothing is left to train
        training_done = False

        def stop_requested(self) -> bool:
            """Replaced by the run's signal handling (preemption.GracefulStop.requested)."""
            return False

        def get_batch_samples(self, epoch_iterator, num_batches, device):  # noqa: ANN001
            # The trainer stops at --max-steps only after a step: resumed from the last step's checkpoint it would
            # train one more. With no batches it takes no step, and still finishes (early stopping's best adapter,
            # the trackers' end of run) as after the last step. A signal that arrived after a step's last hook stops
            # the run here too, before another step (GracefulStop checkpoints that step at the epoch's end).
            if self.training_done or self.state.global_step >= self.state.max_steps or self.stop_requested():
                return [], None
            return super().get_batch_samples(epoch_iterator, num_batches, device)

    trainer = LoraSFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    check_effective(batching, bool(trainer.args.packing), bool(trainer.args.padding_free))
    return trainer


def planned_training_done(state: dict[str, Any]) -> bool:
    """True when a checkpoint's trainer state (trainer_state.json) is of the run's last step: every planned step
    trained, or early stopping had run out of patience."""
    patience, waited = _early_stopping_state(state)
    return state["global_step"] >= state["max_steps"] or 0 < patience <= waited


def restore_patience(trainer: SFTTrainer, state: dict[str, Any]) -> None:
    """Early stopping's count of evaluations without improvement, as the checkpoint recorded it (the trainer would
    start it again at 0), so a resumed run stops where the uninterrupted one would."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, EarlyStoppingCallback):
            callback.early_stopping_patience_counter = _early_stopping_state(state)[1]


def _early_stopping_state(state: dict[str, Any]) -> tuple[int, int]:
    """(patience, evaluations without improvement so far) as a checkpoint's trainer state records early stopping;
    (0, 0) for a run without it."""
    saved = state.get("stateful_callbacks", {}).get(EarlyStoppingCallback.__name__) or {}
    saved = saved[-1] if isinstance(saved, list) else saved
    return (saved.get("args", {}).get("early_stopping_patience") or 0,
            saved.get("attributes", {}).get("early_stopping_patience_counter", 0))


def effective_args(trainer: SFTTrainer) -> dict[str, Any]:
    """The training arguments as the trainer will really use them (a library may have changed some)."""
    return {name: _enum_value(getattr(trainer.args, name, None)) for name in RECORDED_ARGS}


def _enum_value(value: Any) -> Any:
    """An enum setting (lr_scheduler_type, optim) as its plain value, so metrics.json holds a string."""
    return getattr(value, "value", value)
