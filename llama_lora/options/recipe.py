"""Training defaults that fit the model: the embedded model's demo recipe, and the Llama recipe.

Resolved per model before anything loads (see config.resolve), so `config.yaml` records the values and both
backends get the same ones. Values the user gave explicitly always win.
"""

from __future__ import annotations

import math
from typing import Any

# The embedded SmolLM2-135M on a 2-core CPU: 60 steps of batch 2 at lr 1e-3 (120 dialogues, ~4 minutes of
# training) teach the bundled data's style on held-out prompts (numbered steps, a closing "Quick check"
# question, a clean end of turn); the Llama recipe below for 10 steps, or even a full epoch, did not
# (benchmarks/results/learning-cpu-*.md has the figures). A tiny model tolerates the higher rate, and small
# batches give it more optimizer steps for the same compute.
DEMO = {"batch_size": 2, "grad_accum": 1, "learning_rate": 1e-3, "max_steps": 60}

# Every other model (Llama 3.1 8B and up): lr 2e-4 is the QLoRA paper's rate for 7B-13B models (Dettmers et al.
# 2023, Table 9) and the one Unsloth's Llama 3.1 8B notebooks use; an effective batch of 8 matches those
# notebooks (2 x 4). One full epoch on a GPU; without one, a 10-step smoke run.
STANDARD = {"batch_size": 4, "grad_accum": 2, "learning_rate": 2e-4}
CPU_SMOKE_STEPS = 10

# Evaluations during training by default: this many, evenly spaced, plus the one before training.
EVAL_POINTS = 3


def recipe(model: str, embedded: str, cuda: bool) -> dict[str, Any]:
    """The default batch size, accumulation, learning rate and step count for this model and machine."""
    if model == embedded:
        return dict(DEMO)
    return {**STANDARD, "max_steps": -1 if cuda else CPU_SMOKE_STEPS}


def planned_steps(max_steps: int, epochs: float, rows: int, batch_size: int, grad_accum: int,
                  processes: int = 1) -> int:
    """Optimizer steps the trainer will run: --max-steps, else epochs x steps per epoch (as transformers
    counts them: batches per process, then accumulated)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(rows / (batch_size * processes))
    return max(1, math.ceil(epochs * math.ceil(batches / grad_accum)))


def default_eval_steps(steps: int, save_steps: int, early_stopping: bool) -> int:
    """Evaluate EVAL_POINTS times in a run; with early stopping at every checkpoint (it can keep only a
    checkpointed step, so it evaluates exactly where it saves)."""
    if early_stopping:
        return save_steps
    return max(1, math.ceil(steps / EVAL_POINTS))
