"""Several processes, one run: which device each process loads onto, which process writes files, and the
figures gathered from all of them.

Under `accelerate launch` or `torchrun` every process runs the same script: each trains a full copy of the
adapter on its share of the batches (DDP) or a shard of the model (FSDP), and PyTorch averages the gradients.
With one process every function here answers as if alone, so single-GPU and CPU runs do not change.
accelerate's `PartialState` is the one source of truth: it is the same object the Trainer builds on.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object


def world_size() -> int:
    """Processes in this launch (1 without a launcher); read from the environment, so nothing is started."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or "1")
    except ValueError:
        return 1


def fsdp_requested() -> bool:
    """True when accelerate launches with an FSDP config (it exports ACCELERATE_USE_FSDP to every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def state() -> PartialState:
    """The process group (joined on first use under a launcher; gloo on CPU, NCCL on GPUs)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    """True for the one process that writes files and prints the summary."""
    return world_size() == 1 or state().is_main_process


def rank() -> int:
    return 0 if world_size() == 1 else state().process_index


def device() -> torch.device:
    """This process's own device: cuda:<LOCAL_RANK> under a launcher, cuda:0 or cpu alone."""
    if world_size() == 1:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return state().device


def wait_for_everyone() -> None:
    """Block until every process gets here (e.g. the main one has created the staging folder)."""
    if world_size() > 1:
        state().wait_for_everyone()


def gather(value: Any) -> list[Any]:
    """Every process's `value`, in rank order, on every process (a one-item list alone)."""
    if world_size() == 1:
        return [value]
    return gather_object([value])
