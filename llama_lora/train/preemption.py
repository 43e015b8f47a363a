"""Pre-emption: a SIGTERM (spot and pre-emptible GPUs, SLURM, Kubernetes) or Ctrl-C ends a run cleanly, whatever the
run is doing when it arrives, and the exit status is EXIT_INTERRUPTED whenever work was cut short.

    before training (opening the run folder, loading the model, the first evaluation): stops before training
        starts; the evaluation is aborted at its next batch. Nothing trained is lost.
    a training step: the step finishes, a checkpoint of it is written, the run stops.
    an evaluation during training: the evaluation finishes, a checkpoint of its step is written, the run stops
        without training another step.
    after training (the last evaluation, the sample prompts): stopped at the next batch or generated token; the
        last step's checkpoint (always written) holds the trained adapter, and --resume finishes the run without
        training.
    saving the finished run: it finishes saving (seconds) and completes.

The pipeline records status "interrupted" with the step and the checkpoint, and says how to continue. A second
signal stops the process at once (the default action of the signal). Under a launch the processes agree, at every
point where the run could stop, on whether any of them was signalled, so all of them stop at the same point and
the checkpoint is consistent.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from llama_lora import distributed

# sysexits.h EX_TEMPFAIL: "a temporary failure, the user is invited to retry" (here: with --resume)
EXIT_INTERRUPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

# what the run is doing, as far as a signal is concerned
BEFORE_TRAINING = "before training"
TRAINING = "training"
EVALUATING = "evaluating during training"
AFTER_TRAINING = "after training"
SAVING = "saving"


class Interrupted(Exception):
    """The run stopped on a signal; `checkpoint` (when there is one) holds everything trained so far."""

    def __init__(self, step: int, signal_name: str, checkpoint: Path | None, during: str = TRAINING,
                 activity: str = ""):
        where = {TRAINING: f"after step {step}", BEFORE_TRAINING: f"before training ({activity})",
                 AFTER_TRAINING: f"after training, while {activity}"}[during]
        super().__init__(f"stopped on {signal_name} {where}")
        self.step = step
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.during = during


class GracefulStop(TrainerCallback):
    """Turns the first SIGTERM/SIGINT into a clean stop at the next safe point of whatever phase the run is in."""

    def __init__(self) -> None:
        self.received: str | None = None  # the signal's name, once one arrived
        self.stopped_at: int | None = None  # the step whose checkpoint a stop during training wrote
        self.phase = BEFORE_TRAINING
        self.activity = "opening the run folder"  # what the run is doing, in the user's words
        self.step = 0  # the latest step trained
        self.saved_step: int | None = None  # the step of the newest checkpoint written (or resumed from)
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the signals from now on (before this, nothing is lost by their default action)."""
        self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}

    def release(self) -> None:
        """The signals' earlier handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def enter(self, phase: str, activity: str) -> None:
        """The run moves on to `phase`, doing `activity` (said in a signal's message)."""
        self.phase, self.activity = phase, activity

    def requested(self) -> bool:
        """True on every process once any process of the launch was signalled."""
        if agreed(self.received is not None):
            self.received = self.received or "a signal to another process of the launch"
            return True
        return False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # the second one: no more grace
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received{self._what_happens()} (send it again to stop at once)", file=sys.stderr,
              flush=True)

    def _what_happens(self) -> str:
        """What the run does now that a signal arrived, in the words of the phase it is in."""
        return {
            BEFORE_TRAINING: f" while {self.activity}: stopping before training starts (nothing trained is lost)",
            TRAINING: ": finishing the current step, then saving a checkpoint of it and stopping",
            EVALUATING: f" during the evaluation at step {self.step}: finishing it, then saving a checkpoint of step "
                        f"{self.step} and stopping, without training another step",
            AFTER_TRAINING: f" while {self.activity}: stopping that now; training is complete and checkpointed, and "
                            "--resume finishes the run without training",
            SAVING: f" while {self.activity}: finishing that first (seconds), then the run is complete",
        }[self.phase]

    @contextmanager
    def aborting(self, model: Any, phase: str, activity: str, checkpoint: Path | None) -> Iterator[None]:
        """Within the block, a signal aborts the model's work at its next forward pass (an evaluation batch, a
        generated token): Interrupted, naming the step and the checkpoint that holds it."""
        self.enter(phase, activity)

        def check(module: Any, args: Any) -> None:
            if self.requested():
                raise Interrupted(self.step, self.received, checkpoint, phase, activity)

        hook = model.get_input_embeddings().register_forward_pre_hook(check)  # called once per forward pass
        try:
            yield
        finally:
            hook.remove()

    # The trainer's hooks: each is a point where a stop can be agreed and the checkpoint still written at once.
    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signatures)
        self.enter(TRAINING, "training")

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.phase = TRAINING

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.step = state.global_step
        if state.global_step >= state.max_steps:
            control.should_save = True  # the last step is always checkpointed: a stop after training loses nothing
        if not self._stop_here(state, control) and control.should_evaluate:
            self.phase = EVALUATING
        return control

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.phase == EVALUATING and not self._stop_here(state, control):
            self.phase = TRAINING
        return control

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        self.saved_step = state.global_step
        if self.phase in (TRAINING, EVALUATING):
            self._stop_here(state, control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
        # a signal after a step's last hook: no batch was taken since (stop_requested), so save that step now
        if self.phase in (TRAINING, EVALUATING):
            self._stop_here(state, control)
        return control

    def _stop_here(self, state: Any, control: Any) -> bool:
        """When a signal arrived: checkpoint this step (unless it has one) and end training; True if so."""
        if self.stopped_at is not None or not self.requested():
            return self.stopped_at is not None
        self.stopped_at = state.global_step
        control.should_save = state.global_step != self.saved_step
        control.should_training_stop = True
        return True


def agreed(flag: bool) -> bool:
    """True on every process when any process of the launch says True (alone: the flag itself)."""
    if distributed.world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=distributed.device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
