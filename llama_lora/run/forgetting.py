"""The forgetting check every training run makes: the model's cross-entropy on a small bundled sample of ordinary
English prose (data/general_text/, public domain), measured before training and again on the adapter being saved.

The sample is far from any fine-tuning data, so its loss says whether the adapter changed how the model predicts
general text, which the run's own eval loss (on its own kind of data) cannot say. Both measurements run the model
as it trains (same precision, same 4-bit base, the adapter active), one passage at a time with no padding, so the
before and after figures differ only by what training changed. About 700 tokens each way (4 passages, one forward
pass each): small, so every run can afford it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_lora.options.config import REPO_ROOT

SAMPLE = REPO_ROOT / "data" / "general_text" / "botchan.txt"

# How a perplexity change reads (exp(after - before) - 1, upper bounds, first match wins). A LoRA that learned its
# data's format and little else moves general-text perplexity by a few percent; docs/evaluation.md gives the
# figures measured on the demo runs these bands were set against.
READINGS: tuple[tuple[float, str], ...] = (
    (-0.02, "fell: the model predicts general English better than before"),
    (0.02, "unchanged (within 2%): no sign of forgetting"),
    (0.10, "rose slightly: little forgetting of general English"),
    (0.30, "rose: some forgetting of general English; weigh it against the eval-loss gain"),
    (math.inf, "rose sharply: the adapter overwrites general ability; fewer steps, a lower learning rate or "
               "general data mixed in would keep it"),
)


def passages(path: Path = SAMPLE) -> list[str]:
    """The sample's passages (separated by blank lines)."""
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def tokenize(tokenizer: Any, max_length: int, path: Path = SAMPLE) -> list[list[int]]:
    """Each passage's token ids as the tokenizer encodes plain text (its BOS token included), cut to max_length."""
    return [list(tokenizer(p)["input_ids"])[:max_length] for p in passages(path)]


def cross_entropy(model: Any, sample: list[list[int]]) -> float:
    """Mean cross-entropy (nats per predicted token) of the model on the tokenized passages, in eval mode; the
    model's train/eval mode is restored after."""
    import torch  # here, not at the top: the comparison reads this module's summary without loading torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for ids in sample:
                inputs = torch.tensor([ids], device=model.device)
                out = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=inputs, use_cache=False)
                predicted = len(ids) - 1  # the loss is the mean over every token after the first
                total += out.loss.float().item() * predicted
                count += predicted
    finally:
        model.train(was_training)
    return total / count


def reading(before: float, after: float) -> str:
    """One line on what the change means, from the change in perplexity."""
    change = math.exp(after - before) - 1
    return next(text for bound, text in READINGS if change < bound)


@dataclass
class Check:
    """The before figure of one run's check, waiting for the after one."""

    sample: list[list[int]]
    before: float
    seconds: float = field(default=0.0)

    def after(self, model: Any) -> dict[str, Any]:
        """Measure the adapter being saved and return metrics.json's `forgetting` record."""
        started = time.perf_counter()
        after = cross_entropy(model, self.sample)
        seconds = self.seconds + time.perf_counter() - started
        return {
            "sample": str(SAMPLE.relative_to(REPO_ROOT)),
            "tokens": sum(len(ids) - 1 for ids in self.sample),
            "before": round(self.before, 5),
            "after": round(after, 5),
            "perplexity_change": round(math.exp(after - self.before) - 1, 5),
            "reading": reading(self.before, after),
            "seconds": round(seconds, 2),
        }


def before(model: Any, tokenizer: Any, max_length: int) -> Check:
    """Measure the model about to train (a new LoRA adds nothing yet: this is the base model)."""
    started = time.perf_counter()
    sample = tokenize(tokenizer, max_length)
    return Check(sample, cross_entropy(model, sample), time.perf_counter() - started)


def summary(record: dict[str, Any] | Any) -> str:
    """The run summary's and the comparison's line: before -> after, the perplexity change, and its reading."""
    get = record.get if isinstance(record, dict) else lambda key: getattr(record, key)
    return (f"{get('before'):.4f} -> {get('after'):.4f} on general text ({get('perplexity_change'):+.1%} perplexity): "
            f"{get('reading')}")
