"""Before/after samples: held-out prompts answered by the base model (adapter disabled) and by the tuned model,
a style check that measures what the bundled data teaches, and label accuracy for classification data.

Prompts come straight from the tokenized eval rows: everything before a row's first supervised token is the
prompt (system and user turns, ending with the assistant header), the supervised span is the reference
answer. So the samples use exactly the template and tokens the model trained with, for any data format.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from typing import Any, Callable

from llama_lora.data.prepare import IGNORE_INDEX
from llama_lora.use.inference import Answer, Sampling, generate, stop_ids

CLASSIFY_MAX_ROWS = 1000  # eval rows labelled before and after training; enough for a stable accuracy
CLASSIFY_BATCH = 16


@dataclass(frozen=True)
class HeldOut:
    """One eval row split into the prompt the model sees and the answer it was trained to give."""

    where: str
    prompt_ids: list[int]
    reference: Answer


def held_out(rows: list[dict[str, Any]], count: int, tokenizer: Any, stops: list[int]) -> list[HeldOut]:
    """Up to `count` eval rows spread evenly over the split (a fixed set: the split's order is fixed)."""
    usable = [row for row in rows if _first_supervised(row["labels"]) > 0]  # plain text has no prompt
    if count <= 0 or not usable:
        return []
    picks = sorted({round(i * len(usable) / count) for i in range(count)} & set(range(len(usable))))
    return [_split_row(usable[i], tokenizer, stops) for i in picks]


def _first_supervised(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0)


def _split_row(row: dict[str, Any], tokenizer: Any, stops: list[int]) -> HeldOut:
    """Prompt = tokens before the first supervised one; reference = that contiguous supervised span."""
    start = _first_supervised(row["labels"])
    end = start
    while end < len(row["labels"]) and row["labels"][end] != IGNORE_INDEX:
        end += 1
    span = row["input_ids"][start:end]
    stop_at = next((i for i, token in enumerate(span) if token in stops), None)
    kept = span if stop_at is None else span[:stop_at]
    reference = Answer(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), stop_at is not None)
    return HeldOut(row["where"], row["input_ids"][:start], reference)


# What the bundled teacher-student data teaches (data/teacher_student/README.md): numbered steps, a last line
# "Quick check: <question>?", and the model ending its turn by itself. Measured on the reference answers too,
# so the table shows what the data holds, what the base model does, and how far training moved it.
STYLE_CHECKS: dict[str, tuple[str, Callable[[Answer], bool]]] = {
    "quick_check": ('ends with a "Quick check: ...?" line',
                    lambda a: bool(a.text) and _last_line(a.text).startswith("Quick check:")
                    and _last_line(a.text).endswith("?")),
    "numbered_steps": ('has numbered steps ("1." and "2." lines)',
                       lambda a: bool(re.search(r"^\s*1\.", a.text, re.M) and re.search(r"^\s*2\.", a.text, re.M))),
    "stopped": ("ends its turn with the end-of-turn token (not cut off)", lambda a: a.stopped),
}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def style_shares(answers: list[Answer]) -> dict[str, float]:
    """Share of answers passing each style check."""
    return {name: round(sum(check(a) for a in answers) / len(answers), 4) for name, (_, check) in STYLE_CHECKS.items()}


def normalise_label(text: str, labels: list[str]) -> str | None:
    """The label a generated answer names: exact match ignoring case, quotes and end punctuation, or the one
    label it starts with; None when it names none."""
    cleaned = text.strip().strip(string.punctuation + " \"'`").lower()
    by_lower = {label.lower(): label for label in labels}
    if cleaned in by_lower:
        return by_lower[cleaned]
    starting = [label for low, label in by_lower.items() if re.match(re.escape(low) + r"\b", cleaned)]
    return max(starting, key=len) if starting else None


def classification_scores(predicted: list[str | None], gold: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 (unweighted mean of per-label F1 over the labels present in gold or predictions)."""
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    present = [label for label in labels if label in gold or label in predicted]
    f1s = []
    for label in present:
        tp = sum(p == g == label for p, g in zip(predicted, gold))
        fp = sum(p == label != g for p, g in zip(predicted, gold))
        fn = sum(g == label != p for p, g in zip(predicted, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": round(accuracy, 4), "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
            "unparsed": sum(p is None for p in predicted)}


def classify(model: Any, tokenizer: Any, items: list[HeldOut], labels: list[str]) -> list[str | None]:
    """Greedy label for each prompt, normalised to one of the labels."""
    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    sampling = Sampling(max_new_tokens=longest + 2)  # a label, perhaps a full stop, then end of turn
    predicted: list[str | None] = []
    for i in range(0, len(items), CLASSIFY_BATCH):
        answers = generate(model, tokenizer, [item.prompt_ids for item in items[i:i + CLASSIFY_BATCH]], sampling)
        predicted += [normalise_label(answer.text, labels) for answer in answers]
    return predicted


def before_and_after(model: Any, tokenizer: Any, eval_rows: list[dict[str, Any]], count: int,
                     max_new_tokens: int, labels: list[str] | None) -> tuple[dict[str, Any], str] | None:
    """Answer held-out prompts with the adapter disabled (the base model) and enabled (the tuned model);
    returns (the metrics.json record, samples.md), or None when there is nothing to sample."""
    started = time.perf_counter()
    stops = stop_ids(model, tokenizer)
    chosen = held_out(eval_rows, count, tokenizer, stops)
    if not chosen:
        return None
    sampling = Sampling(max_new_tokens=max_new_tokens)
    prompts = [item.prompt_ids for item in chosen]
    scored = held_out(eval_rows, min(len(eval_rows), CLASSIFY_MAX_ROWS), tokenizer, stops) if labels else []
    with model.disable_adapter():
        before = generate(model, tokenizer, prompts, sampling)
        labels_before = classify(model, tokenizer, scored, labels) if labels else []
    after = generate(model, tokenizer, prompts, sampling)
    labels_after = classify(model, tokenizer, scored, labels) if labels else []
    record: dict[str, Any] = {
        "prompts": len(chosen),
        "max_new_tokens": max_new_tokens,
        "style": {"reference": style_shares([item.reference for item in chosen]),
                  "before": style_shares(before), "after": style_shares(after)},
        "classification": None,
    }
    if labels:
        gold = [normalise_label(item.reference.text, labels) or item.reference.text for item in scored]
        record["classification"] = {"rows": len(scored), "labels": labels,
                                    "before": classification_scores(labels_before, gold, labels),
                                    "after": classification_scores(labels_after, gold, labels)}
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record, render_markdown(record, chosen, before, after, tokenizer)


def _count(share: float, total: int) -> str:
    return f"{round(share * total)}/{total} ({share:.0%})"


def render_markdown(record: dict[str, Any], chosen: list[HeldOut], before: list[Answer], after: list[Answer],
                    tokenizer: Any) -> str:
    """samples.md: the style table, classification scores, then every prompt with its three answers."""
    n = record["prompts"]
    style = record["style"]
    lines = [
        "# Before and after training",
        "",
        f"{n} held-out prompts from the eval split, answered greedily (at most {record['max_new_tokens']} new "
        "tokens) by the base model (adapter disabled) and by the tuned model (adapter enabled). The reference is "
        "the answer in the data.",
        "",
        "## Style check",
        "",
        "| check | reference | before (base) | after (tuned) |",
        "|---|---|---|---|",
    ]
    for name, (title, _) in STYLE_CHECKS.items():
        lines.append(f"| {title} | {_count(style['reference'][name], n)} | {_count(style['before'][name], n)} | "
                     f"{_count(style['after'][name], n)} |")
    classification = record["classification"]
    if classification:
        b, a = classification["before"], classification["after"]
        lines += ["", f"## Classification ({classification['rows']} eval rows, labels: "
                      f"{', '.join(classification['labels'])})", "",
                  "| | before (base) | after (tuned) |", "|---|---|---|",
                  f"| accuracy | {b['accuracy']:.1%} | {a['accuracy']:.1%} |",
                  f"| macro-F1 | {b['macro_f1']:.3f} | {a['macro_f1']:.3f} |",
                  f"| answers naming no label | {b['unparsed']} | {a['unparsed']} |"]
    for i, (item, base, tuned) in enumerate(zip(chosen, before, after), 1):
        prompt = tokenizer.decode(item.prompt_ids, skip_special_tokens=False)
        lines += ["", f"## {i}. {item.where}", "", "Prompt, as the model sees it:", "", _fence(prompt)]
        for title, answer in (("Before (base)", base), ("After (tuned)", tuned), ("Reference", item.reference)):
            ending = "" if answer.stopped else f" (cut off at {answer.tokens} tokens)"
            lines += ["", f"**{title}**{ending}:", "", _fence(answer.text)]
    return "\n".join(lines) + "\n"


def _fence(text: str) -> str:
    """A fenced block that the text itself cannot close."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


