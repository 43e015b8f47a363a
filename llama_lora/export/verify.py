"""`verify`: does each export of a run compute what the adapter computed? The reference is the adapter on its base in
plain PEFT (float32 compute; NF4 base for a QLoRA run, as it trained); each export target (targets.py) is the user's
own when they name its folder, else built with the project's commands in a temporary folder beside the run.

On the run's held-out prompts every model target is compared position by position (logit_agreement.py) and judged
against its precision's tolerance (tolerances.py), with greedy continuations side by side; the Ollama template
target must give the training prompt's tokens exactly. verify.md and verify.json go into the run folder and the
run record gains the verdicts.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from llama_lora.errors import UsageError
from llama_lora.export import candidates, verify_prompts
from llama_lora.export.gguf_runtime import llama_cpp_module
from llama_lora.export.logit_agreement import Agreement, judge
from llama_lora.export.merge import free_memory
from llama_lora.export.targets import Given, Target, Workshop
from llama_lora.export.tolerances import TOLERANCES
from llama_lora.export.verify_prompts import Prompt
from llama_lora.use.inference import TrainedRun, load_tokenizer, load_tuned, stop_ids

REFERENCE = "the adapter on its base in plain PEFT, float32 compute"


@dataclass
class Reference:
    """The reference's logits (tuned, and base with the adapter disabled) in .npy files, and its continuations."""

    folder: Path
    stops: list[int]
    continuations: list[list[int]]

    def logits(self, kind: str, index: int) -> np.ndarray:
        return np.load(self.folder / f"{kind}-{index}.npy", mmap_mode="r")


@dataclass
class Outcome:
    """One target's result."""

    target: str
    status: str  # passed, failed, or skipped (with the reason in failures)
    source: str  # the user's file or folder, or "built by verify"
    precision: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tolerance: dict[str, Any] | None = None
    continuations: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Verification:
    run: str
    reference: str
    prompts: list[Prompt]
    reference_continuations: list[str]
    outcomes: list[Outcome]
    when: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(o.status != "failed" for o in self.outcomes)


def reference(run: TrainedRun, prompts: list[Prompt], folder: Path, max_new_tokens: int) -> tuple[list[Prompt], Reference]:
    """Run the reference once: its greedy continuation and both logit sets for every prompt, written to `folder`. A
    prompt without an answer (from a prompt file) is scored on the reference's own continuation."""
    model, _ = load_tuned(run, dtype="float32")
    stops = stop_ids(model, load_tokenizer(run.folder))
    continuations, scored = [], []
    for index, prompt in enumerate(prompts):
        continuation = candidates.hf_greedy(model, prompt.prompt_ids, max_new_tokens, stops)
        continuations.append(continuation)
        prompt = prompt if prompt.answer_ids else dataclasses.replace(prompt, answer_ids=continuation)
        scored.append(prompt)
        np.save(folder / f"tuned-{index}.npy", candidates.hf_logits(model, prompt.scored_ids))
        with model.disable_adapter():
            np.save(folder / f"base-{index}.npy", candidates.hf_logits(model, prompt.scored_ids))
    del model
    free_memory()
    return scored, Reference(folder, stops, continuations)


def compare_logits(candidate: Any, prompts: list[Prompt], ref: Reference, max_new_tokens: int
                   ) -> tuple[dict[str, Any], list[list[int]]]:
    """The agreement figures over every scored position, and the candidate's greedy continuations."""
    agreement = Agreement()
    continuations = []
    for index, prompt in enumerate(prompts):
        agreement.add(candidate.logits(prompt.scored_ids), ref.logits("tuned", index), ref.logits("base", index))
        continuations.append(candidate.greedy(prompt.prompt_ids, max_new_tokens, ref.stops))
    figures = agreement.figures()
    figures["same_continuations"] = sum(a == b for a, b in zip(continuations, ref.continuations))
    return figures, continuations


def compare_template(candidate: Any, prompts: list[Prompt], tokenizer: Any) -> tuple[dict[str, Any], list[str]]:
    """How many prompts the template renders to exactly the training prompt's tokens, and where the first
    mismatches are (position, the training token, the template's token)."""
    compared = [p for p in prompts if not p.tools]  # the Modelfile TEMPLATE renders no tool definitions
    mismatches = []
    for prompt in compared:
        ids = candidate.prompt_ids(prompt.messages)
        if ids != prompt.prompt_ids:
            at = next((i for i, (a, b) in enumerate(zip(ids, prompt.prompt_ids)) if a != b), min(len(ids),
                                                                                                  len(prompt.prompt_ids)))
            trained = tokenizer.decode(prompt.prompt_ids[at:at + 1]) if at < len(prompt.prompt_ids) else "(end)"
            rendered = tokenizer.decode(ids[at:at + 1]) if at < len(ids) else "(end)"
            mismatches.append(f"{prompt.where}: token {at} is {rendered!r} where training had {trained!r}")
    figures = {"prompts": len(compared), "identical": len(compared) - len(mismatches),
               "tool_prompts_left_out": len(prompts) - len(compared)}
    return figures, mismatches


def check(target: Target, path: Path, source: str, prompts: list[Prompt], ref: Reference, tokenizer: Any,
          max_new_tokens: int) -> Outcome:
    """Open one export and judge it."""
    started = time.perf_counter()
    with candidates.opened(target.load(path)) as candidate:
        if target.kind == "template":
            figures, mismatches = compare_template(candidate, prompts, tokenizer)
            status = "skipped" if not figures["prompts"] else "failed" if mismatches else "passed"
            failures = mismatches or (["every prompt defines or calls tools"] if status == "skipped" else [])
            return Outcome(target.name, status, source, candidate.precision, figures, failures,
                           seconds=time.perf_counter() - started)
        figures, continuations = compare_logits(candidate, prompts, ref, max_new_tokens)
        precision = candidate.precision
    tolerance = TOLERANCES.get(precision)
    if tolerance is None:
        return Outcome(target.name, "failed", source, precision, figures, [f"no tolerance is known for {precision}"])
    verdict = judge(figures, tolerance)
    return Outcome(target.name, "passed" if verdict.passed else "failed", source, precision, figures, verdict.failures,
                   dataclasses.asdict(tolerance), [tokenizer.decode(c, skip_special_tokens=True) for c in continuations],
                   time.perf_counter() - started)


def check_target(target: Target, given: Given, workshop: Workshop, prompts: list[Prompt], ref: Reference,
                 tokenizer: Any, max_new_tokens: int, say: Callable[[str], None]) -> Outcome:
    """Find or build one export and judge it. An export the project cannot build for this run (a DoRA adapter has no
    LoRA GGUF) is skipped with the reason; one that cannot be loaded or run fails with it."""
    found = target.find(given)
    say(f"checking {found}" if found else f"building it ({target.command})")
    source = str(found) if found else "built by verify"
    try:
        path = found or target.build(workshop)
    except UsageError as err:
        return Outcome(target.name, "skipped", source, failures=[f"cannot be built for this run: {err}"])
    try:
        return check(target, path, source, prompts, ref, tokenizer, max_new_tokens)
    except (UsageError, RuntimeError, ValueError) as err:
        return Outcome(target.name, "failed", source, failures=[f"cannot be run: {err}"])


def verify(run: TrainedRun, targets: list[Target], given: Given, prompts_file: Path | None, count: int,
           max_new_tokens: int, say: Callable[[str], None] = print) -> Verification:
    """Compare every target with the reference; `say` gets one progress line per step."""
    if any(t.needs_llama_cpp for t in targets):
        llama_cpp_module()  # fail before any work when it is missing
    tokenizer = load_tokenizer(run.folder)
    prompts = (verify_prompts.from_file(prompts_file, tokenizer) if prompts_file
               else verify_prompts.held_out(run.folder, tokenizer, count))
    # beside the run: exports of an 8B model need the disk space a run folder's disk has, not a small /tmp
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=run.folder.parent) as tmp:
        folder = Path(tmp)
        say(f"reference: {REFERENCE}, {len(prompts)} prompts")
        prompts, ref = reference(run, prompts, folder, max_new_tokens)
        workshop = Workshop(run, folder, [t.merged_type for t in targets if t.merged_type])
        outcomes = []
        for number, target in enumerate(targets, 1):
            step = f"[{number}/{len(targets)}] {target.name}:"
            outcome = check_target(target, given, workshop, prompts, ref, tokenizer, max_new_tokens,
                                   lambda text: say(f"{step} {text}"))
            say(f"{step} {outcome.status.upper()} {summary(outcome)}")
            outcomes.append(outcome)
            free_memory()
    return Verification(str(run.folder), REFERENCE, prompts,
                        [tokenizer.decode(c, skip_special_tokens=True) for c in ref.continuations], outcomes)


def summary(outcome: Outcome) -> str:
    """One line of figures: the logit agreement, or the template's token match, or why there are none."""
    f = outcome.figures
    if not f:
        return f"({'; '.join(outcome.failures)})"
    if "identical" in f:
        return f"({f['identical']}/{f['prompts']} prompts token for token)"
    return (f"({outcome.precision}: mean |diff| {f['mean_abs_diff']:.3g} = {f['mean_rel_diff']:.2%} of mean |logit|, "
            f"max {f['max_abs_diff']:.3g}, top-1 {f['top1_agreement']:.1%}, adapter effect kept {f['effect_kept']:.3f})")
