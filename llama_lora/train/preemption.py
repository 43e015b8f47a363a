"""Pre-emption: a SIGTERM (spot and pre-emptible GPUs, SLURM, Kubernetes) or Ctrl-C ends the run cleanly.

The first signal lets the optimizer step in flight finish, then the trainer writes a checkpoint at that step and
stops; the pipeline records status "interrupted" with the step and exits with EXIT_INTERRUPTED, and `--resume`
continues from that checkpoint. A signal after the last step skips the samples and lets the run finish saving.
A second signal stops the process at once (the default action of the signal). Before training starts nothing is
lost, so signals keep their default action until then.
Under a launch the processes agree, after every step, on whether any of them was signalled, so all of them stop
after the same step and the checkpoint is consistent.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import torch
from transformers import TrainerCallback

from llama_lora import distributed

# sysexits.h EX_TEMPFAIL: "a temporary failure, the user is invited to retry" (here: with --resume)
EXIT_INTERRUPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped on a signal after `step`, whose checkpoint was written."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped on {signal_name} after step {step}")
        self.step = step
        self.signal_name = signal_name


class GracefulStop(TrainerCallback):
    """Turns the first SIGTERM/SIGINT during training into "save a checkpoint after this step, then stop"."""

    def __init__(self) -> None:
        self.received: str | None = None  # the signal's name, once one arrived
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # the second one: no more grace
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: finishing the current step, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if agreed(self.received is not None):
            self.received = self.received or "a signal to another process of the launch"
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def after_training(self) -> bool:
        """True when a signal arrived after the last step (on any process of a launch): the pipeline then skips
        the samples, the one long thing left, saves the adapter and ends."""
        return agreed(self.received is not None)

    def release(self) -> None:
        """The signals' earlier handlers back (the run's work is saved)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def agreed(flag: bool) -> bool:
    """True on every process when any process of the launch says True (alone: the flag itself)."""
    if distributed.world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=distributed.device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
