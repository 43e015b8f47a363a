"""How far an export may sit from the reference (the adapter on its base, float32) and still pass `verify`, per
precision of the export's weights.

Every limit comes from measured spreads, with room to spare, within floors and a cap. `benchmarks/verify_spreads.py`
measures each precision on two models: the embedded SmolLM2 with the CPU demo's trained adapter (real weights, but
rows 576 wide, so k-quants fall back to other types for most tensors), and a model of Llama 3.1's architecture with
random weights and a random adapter (widths that are multiples of 256: k-quants apply to every weight). `derive`
turns the worst spread of the two into the limits below, and tests/test_verify.py checks that TOLERANCES is `derive`
applied to the committed record RECORD, so no limit can drift from its measurement:

- mean |logit difference| relative to the mean |reference logit|: MARGIN x the worst measured, at least MEAN_FLOOR
  (float32 against float32 still differs in summation order);
- top-1 agreement: 1 - MARGIN x the worst measured disagreement (leaving at least TOP1_GAP_FLOOR for near-ties
  that any rounding flips), at least TOP1_FLOOR. At 4 bits the floor decides: the random-weight model's nearly flat
  next-token distributions agree below it (47.7% at q4_k_m), a trained model's well above (87.5%);
- the adapter's effect kept: within MARGIN x the worst measured |kept - 1| of 1, at least EFFECT_FLOOR and at most
  EFFECT_CAP, so that an export which lost half of the adapter never passes, whatever its precision.

A planted fault sits outside every limit: an adapter scaled by 0 keeps none of its effect (|kept - 1| = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RECORD = "benchmarks/results/verify-spreads-cpu-2026-12-05.json"
MARGIN = 3.0
MEAN_FLOOR = 0.0005
TOP1_FLOOR = 0.5
TOP1_GAP_FLOOR = 0.01
EFFECT_FLOOR = 0.02
EFFECT_CAP = 0.5


@dataclass(frozen=True)
class Tolerance:
    """The limits one precision is held to (see logit_agreement.judge)."""

    precision: str
    mean_rel_diff: float  # mean |logit difference| / mean |reference logit|, at most
    top1_agreement: float  # share of positions with the reference's top token, at least
    effect_kept: float  # |share of the adapter's effect kept - 1|, at most


def _up(value: float) -> float:
    """Rounded up to two significant digits: a limit is never tighter than its rule."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(round(value / scale, 6)) * scale, 12)


def derive(precision: str, spreads: list[dict[str, Any]]) -> Tolerance:
    """The limits for one precision from the figures measured at it (logit_agreement.Agreement.figures)."""
    worst_mean = max(s["mean_rel_diff"] for s in spreads)
    worst_gap = max(1 - s["top1_agreement"] for s in spreads)
    worst_effect = max(abs(s["effect_kept"] - 1) for s in spreads)
    return Tolerance(
        precision,
        _up(max(MARGIN * worst_mean, MEAN_FLOOR)),
        max(TOP1_FLOOR, 1 - max(_up(MARGIN * worst_gap) if worst_gap else 0.0, TOP1_GAP_FLOOR)),
        min(EFFECT_CAP, _up(max(MARGIN * worst_effect, EFFECT_FLOOR))),
    )


TOLERANCES = {t.precision: t for t in (  # derive() over RECORD, written out so a reader sees each limit
    Tolerance("f32", 0.0005, 0.99, 0.02),
    Tolerance("bf16", 0.044, 0.89, 0.021),
    Tolerance("f16", 0.0036, 0.983, 0.02),
    Tolerance("q8_0", 0.085, 0.77, 0.02),
    Tolerance("q6_k", 0.21, 0.5, 0.026),
    Tolerance("q5_k_m", 0.39, 0.5, 0.42),
    Tolerance("q5_k_s", 0.41, 0.5, 0.37),
    Tolerance("q4_k_m", 0.7, 0.5, 0.22),
    Tolerance("q4_k_s", 0.68, 0.5, 0.5),
)}


def docs_table() -> str:
    """The markdown table of limits that docs/using-adapters.md shows."""
    rows = ["| precision | mean abs diff / mean abs logit, at most | top-1 agreement, at least | effect kept |",
            "|---|---|---|---|"]
    rows += [f"| {t.precision} | {t.mean_rel_diff:.3%} | {t.top1_agreement:.1%} | 1 +/- {t.effect_kept:g} |"
             for t in TOLERANCES.values()]
    return "\n".join(rows)
