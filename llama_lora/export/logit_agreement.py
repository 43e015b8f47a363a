"""How closely an export's logits follow the reference's (the adapter on its base), position by position, and whether
that is close enough for the export's precision.

Four figures over every compared position of every prompt:
- the largest and the mean absolute logit difference (the mean also relative to the mean absolute reference logit,
  which is what the tolerances bound: it carries over between models whose logits have different scales);
- top-1 agreement: the share of positions where both pick the same next token;
- the adapter's effect kept: how much of the adapter's change to the logits (reference minus the base model with
  the adapter disabled) the export reproduces, as the projection <export - base, tuned - base> / |tuned - base|^2.
  1 means all of it; an adapter lost in export gives about 0, a doubled one about 2. Rounding noise hardly moves it
  (it is not aligned with the adapter's direction), so it separates a quantized export from a broken one where the
  plain differences cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llama_lora.export.tolerances import Tolerance


@dataclass
class Agreement:
    """Running sums over the positions compared so far; `figures` reads them out."""

    positions: int = 0
    values: int = 0
    same_top1: int = 0
    max_abs_diff: float = 0.0
    abs_diff_sum: float = 0.0
    abs_reference_sum: float = 0.0
    effect_along: float = 0.0  # sum of (export - base) * (tuned - base)
    effect_squared: float = 0.0  # sum of (tuned - base)^2
    logit_scale: float = 0.0  # largest |reference logit|

    def add(self, export: np.ndarray, tuned: np.ndarray, base: np.ndarray) -> None:
        """One prompt's logits, [positions, vocabulary] each: the export's, the reference's, the base model's."""
        export, tuned, base = (np.asarray(a, dtype=np.float64) for a in (export, tuned, base))
        if export.shape != tuned.shape:
            raise ValueError(f"logits of shape {export.shape} compared with the reference's {tuned.shape}")
        diff = np.abs(export - tuned)
        effect = tuned - base
        self.positions += tuned.shape[0]
        self.values += tuned.size
        self.same_top1 += int((export.argmax(-1) == tuned.argmax(-1)).sum())
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.abs_diff_sum += float(diff.sum())
        self.abs_reference_sum += float(np.abs(tuned).sum())
        self.effect_along += float(((export - base) * effect).sum())
        self.effect_squared += float((effect * effect).sum())
        self.logit_scale = max(self.logit_scale, float(np.abs(tuned).max()))

    def figures(self) -> dict[str, float]:
        mean = self.abs_diff_sum / self.values
        return {
            "positions": self.positions,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": mean,
            "mean_rel_diff": mean / (self.abs_reference_sum / self.values),
            "top1_agreement": self.same_top1 / self.positions,
            "effect_kept": self.effect_along / self.effect_squared if self.effect_squared else float("nan"),
            "adapter_effect_rms": float(np.sqrt(self.effect_squared / self.values)),
            "logit_scale": self.logit_scale,
        }


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: list[str] = field(default_factory=list)  # each broken limit, with the figure and the limit


def _top1_within(agreement: float, positions: int, limit: float) -> bool:
    """Whether the positions that disagree are no more than the limit allows, rounded up to a whole position: over a
    few dozen positions the share moves in steps of 1/positions, and one near-tie flipped by rounding must not fail
    an export that the limit, measured over thousands of positions, would pass."""
    allowed = math.ceil(round((1 - limit) * positions, 9))
    return (1 - agreement) * positions <= allowed + 1e-9


def judge(figures: dict[str, float], tolerance: Tolerance) -> Verdict:
    """Pass when every figure is within the precision's tolerance; each failure names the figure and its limit."""
    failures = []
    if not figures["mean_rel_diff"] <= tolerance.mean_rel_diff:
        failures.append(f"mean |logit difference| is {figures['mean_rel_diff']:.2%} of the mean |logit|, "
                        f"above the {tolerance.mean_rel_diff:.2%} allowed at {tolerance.precision}")
    if not _top1_within(figures["top1_agreement"], int(figures["positions"]), tolerance.top1_agreement):
        failures.append(f"top-1 agreement {figures['top1_agreement']:.1%} is below the "
                        f"{tolerance.top1_agreement:.1%} required at {tolerance.precision}")
    if not abs(figures["effect_kept"] - 1) <= tolerance.effect_kept:
        failures.append(f"keeps {round(figures['effect_kept'], 2) + 0.0:.2f} of the adapter's effect, outside "
                        f"1 +/- {tolerance.effect_kept:g} allowed at {tolerance.precision}")
    return Verdict(not failures, failures)
