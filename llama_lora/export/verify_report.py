"""verify.json, verify.md and the run record's verdicts, written into the run folder (each file whole)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llama_lora.atomic_files import write_json, write_text
from llama_lora.export.tolerances import RECORD
from llama_lora.export.verify import Outcome, Verification
from llama_lora.run import files, run_record


def as_record(verification: Verification) -> dict[str, Any]:
    """verify.json's content."""
    return {
        "run": verification.run, "when": verification.when, "passed": verification.passed,
        "reference": verification.reference, "tolerances_from": RECORD,
        "prompts": [{"where": p.where, "prompt_tokens": len(p.prompt_ids), "scored_tokens": len(p.scored_ids)}
                    for p in verification.prompts],
        "reference_continuations": verification.reference_continuations,
        "targets": [dataclasses.asdict(outcome) for outcome in verification.outcomes],
    }


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "<br>") or "(nothing)"


def _figures_row(outcome: Outcome) -> str:
    f, t = outcome.figures, outcome.tolerance
    if "identical" in f:
        return (f"| `{outcome.target}` | **{outcome.status}** | exact | {f['identical']}/{f['prompts']} prompts identical "
                f"token for token | | | | {_cell(outcome.source)} |")
    if "mean_rel_diff" not in f:
        return f"| `{outcome.target}` | **{outcome.status}** | {outcome.precision} | | | | | {_cell(outcome.source)} |"
    limits = (f" (at most {t['mean_rel_diff']:.2%})", f" (at least {t['top1_agreement']:.1%})",
              f" (1 +/- {t['effect_kept']:g})") if t else ("", "", "")
    return (f"| `{outcome.target}` | **{outcome.status}** | {outcome.precision} | {f['mean_abs_diff']:.3g} = "
            f"{f['mean_rel_diff']:.2%}{limits[0]} | {f['max_abs_diff']:.3g} | {f['top1_agreement']:.1%}{limits[1]} | "
            f"{f['effect_kept']:.3f}{limits[2]} | {_cell(outcome.source)} |")


def as_markdown(verification: Verification) -> str:
    """verify.md: the verdict table, what failed and why, then the greedy continuations side by side."""
    model_outcomes = [o for o in verification.outcomes if o.continuations]
    lines = [
        f"# Exports checked against the adapter: {'PASSED' if verification.passed else 'FAILED'}", "",
        f"Run `{verification.run}`, checked {verification.when}. Reference: {verification.reference}. "
        f"{len(verification.prompts)} held-out prompts, "
        f"{sum(len(p.scored_ids) for p in verification.prompts):,} positions compared per model "
        "(each prompt and the answer after it).", "",
        "Figures: mean and largest |logit difference| from the reference over every position and vocabulary entry; "
        "top-1: share of positions where both pick the same next token; effect kept: the share of the adapter's "
        "change to the logits the export reproduces (1 = all, 0 = the adapter is lost). Limits per precision: "
        f"llama_lora/export/tolerances.py, measured in {RECORD}.", "",
        "| target | verdict | precision | mean abs diff | max abs diff | top-1 | effect kept | source |",
        "|---|---|---|---|---|---|---|---|",
        *(_figures_row(o) for o in verification.outcomes),
    ]
    problems = [(o.target, reason) for o in verification.outcomes for reason in o.failures]
    if problems:
        lines += ["", "## What failed", "", *(f"- `{target}`: {_cell(reason)}" for target, reason in problems)]
    if model_outcomes:
        lines += ["", "## Greedy continuations", ""]
        for index, prompt in enumerate(verification.prompts):
            asked = prompt.messages[-1]["content"] if prompt.messages else ""
            lines += [f"### {prompt.where}", "", f"> {_cell(asked[:300])}", "", "| model | continuation |", "|---|---|",
                      f"| reference | {_cell(verification.reference_continuations[index])} |",
                      *(f"| `{o.target}` | {_cell(o.continuations[index])} |" for o in model_outcomes), ""]
    return "\n".join(lines).rstrip() + "\n"


def write(run: Path, verification: Verification) -> None:
    """verify.json and verify.md in the run folder, and the verdicts in its record (metrics.json), if it has one."""
    write_json(run / files.VERIFY_RECORD, as_record(verification))
    write_text(run / files.VERIFY_REPORT, as_markdown(verification))
    record = run_record.read(run)
    if record is not None:
        record.verify = run_record.ExportVerdicts(
            passed=verification.passed, when=verification.when,
            targets={o.target: o.status for o in verification.outcomes})
        run_record.write(run, record)
