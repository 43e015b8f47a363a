"""The prompts `verify` compares exports on: held-out rows of the run's own eval split, tokenized exactly as training
tokenized them, or the conversations of a prompt file.

Each prompt keeps its conversation (for the Ollama template, which renders messages), the token ids training fed the
model before the answer (what the template must reproduce), and the ids whose logits are compared: the prompt plus
the answer the run trained on (a prompt file has none: the reference model's own greedy answer is used instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_lora.data.formats import Message
from llama_lora.data.prepare import IGNORE_INDEX, example_chunks, plan_splits, tokenize_examples
from llama_lora.data.sources import Tally
from llama_lora.errors import UsageError
from llama_lora.options import config
from llama_lora.run import files

MAX_SCORED_TOKENS = 512  # logits compared per prompt at most: positions enough, memory bounded for a 128k vocabulary


@dataclass(frozen=True)
class Prompt:
    """One held-out prompt: where it comes from, its conversation, the training prompt's ids, the ids scored."""

    where: str
    messages: list[Message]  # the conversation up to the answer
    prompt_ids: list[int]  # ending with the assistant header, as training rendered it
    answer_ids: list[int]  # the answer scored after the prompt (empty until the reference supplies one)
    tools: bool = False  # the conversation defines or calls tools (the Modelfile TEMPLATE renders none)

    @property
    def scored_ids(self) -> list[int]:
        return (self.prompt_ids + self.answer_ids)[:MAX_SCORED_TOKENS]


def spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n) (all of them when n <= count)."""
    return sorted({round(i * n / count) for i in range(count)} & set(range(n))) if count > 0 else []


def held_out(run: Path, tokenizer: Any, count: int) -> list[Prompt]:
    """Up to `count` rows of the run's eval split, spread over it, each cut at its first supervised token."""
    config_file = run / files.CONFIG
    if not config_file.is_file():
        raise UsageError(f"{run}: no {files.CONFIG}, so the run's eval split is unknown; pass --prompts FILE")
    try:
        cfg = config.build(config.load_yaml(config_file))
        plan = plan_splits(cfg)
    except (config.ConfigError, UsageError, OSError) as err:
        raise UsageError(f"{config_file}: cannot read the run's eval split ({err}); pass --prompts FILE") from err
    held = plan.parts.get("eval")
    if held is None or plan.format == "text":
        raise UsageError(f"{run}: the run has no eval split with prompts ({plan.format} data"
                         f"{', no eval rows' if held is None else ''}); pass --prompts FILE")
    rows, indices = held
    picked = [indices[i] for i in spread(len(indices), count)]
    skipped = Tally()  # with --bad-rows skip, a row training left out is left out here too
    examples = [e for chunk in example_chunks(rows, picked, plan.format, plan.reading,
                                              skipped if cfg.bad_rows == "skip" else None) for e in chunk]
    tokenized = tokenize_examples(tokenizer, examples, cfg.loss_on, reasoning=cfg.reasoning, bad_rows=cfg.bad_rows,
                                  skipped=skipped.skipped)
    by_where = {example.where: example for example in examples}
    # the first supervised span is the first assistant turn, or the last one when only that one trains
    turn = -1 if cfg.loss_on == "last-assistant" else 0
    prompts = [_cut(by_where[row["where"]], row, turn) for row in tokenized
               if row["labels"][0] == IGNORE_INDEX and any(label != IGNORE_INDEX for label in row["labels"])]
    if not prompts:
        raise UsageError(f"{run}: no eval row has a prompt before its supervised tokens (--loss-on "
                         f"{cfg.loss_on}); pass --prompts FILE")
    return prompts


def _cut(example: Any, row: dict[str, Any], turn: int) -> Prompt:
    """A tokenized row as a Prompt: the ids before its first supervised token, then that supervised span, and the
    conversation before the assistant turn that span belongs to."""
    labels = row["labels"]
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
    assistants = [i for i, m in enumerate(example.messages) if m["role"] == "assistant"]
    return Prompt(example.where, example.messages[:assistants[turn]], row["input_ids"][:start],
                  row["input_ids"][start:end], example.calls_tools)


def from_file(path: Path, tokenizer: Any) -> list[Prompt]:
    """The conversations of a prompt file (as `generate --prompts-file` reads it), rendered with the run's template."""
    from llama_lora.use.inference import chat_ids, read_prompts

    return [Prompt(f"{path} prompt {number}", conversation, chat_ids(tokenizer, conversation), [])
            for number, conversation in enumerate(read_prompts(path), 1)]
