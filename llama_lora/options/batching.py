"""How examples become batches: padded rows, one padding-free row per batch, or packed rows (--batching).

What TRL 1.15 and transformers 5.17 really do (read in their installed sources):
- `padding_free=True`: TRL's collator concatenates the batch's examples into one row with no attention mask and
  position ids that restart at 0 for every example, and sets the label of each example's first token to -100
  (it would otherwise be predicted from the previous example's last token). TRL refuses it together with
  `max_length` (it would not truncate), so this project passes `max_length=None`: rows are already dropped or
  truncated to --max-seq-length by the data step.
- `packing=True` (strategy "bfd", best-fit decreasing): before training, examples are packed whole into rows
  of at most --max-seq-length tokens (a `seq_lengths` column keeps the boundaries) and the padding-free
  collator then flattens each batch of packed rows the same way. No example is split.
- Attention: with no attention mask, transformers' masking_utils detects the restarting position ids
  (`find_packed_sequence_indices`) and builds a block-diagonal causal mask for sdpa and eager, on CPU and on
  CUDA; flash_attention_2 turns the same position ids into variable-length kernels (it needs flash-attn).
  Unsloth 2026.10.9 adds `packed_seq_lengths` to the batch and runs its own variable-length attention; it
  switches both modes off silently for a custom collator (we pass none) or when eval logits are wanted, so
  the trainer's effective values are checked after it is built (`check_effective`).
The loss is the trainer's mean over the supervised tokens of the optimizer step in every mode (transformers
counts labels[..., 1:] once per step), so padded and padding-free runs of the same batches compute the same
loss; tests/test_batching.py measures it.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from llama_lora import backend as backends
from llama_lora.errors import UsageError

MODES = ("padded", "padding-free", "packed")
PADDING_ORDERS = 20  # random epoch orders averaged for the expected padding share


def sft_fields(mode: str, max_seq_length: int) -> dict[str, Any]:
    """The SFTConfig fields a batching mode sets."""
    if mode not in MODES:
        # an "auto" (None) mode means the config skipped config.resolve(); TRL would fail later and less clearly
        raise ValueError(f"batching mode {mode!r} is not one of {', '.join(MODES)}: resolve the config first")
    return {
        "packing": mode == "packed",
        "packing_strategy": "bfd",  # whole examples only: never cut one across rows
        # eval batches hold the same examples in every mode (padding-free when training packs), so the eval
        # loss, a mean of per-batch means, compares across modes
        "eval_packing": False,
        "padding_free": mode != "padded",
        # padding-free without packing: TRL refuses a max_length it would not enforce; our rows already fit
        "max_length": None if mode == "padding-free" else max_seq_length,
        # The trainer's "non_padding" counter compares input ids with the pad token when a batch has no
        # attention mask, and SmolLM2's pad token is its end-of-turn token: in a flattened batch (which holds
        # no padding) that would skip real tokens. "all" counts every token there.
        "include_num_input_tokens_seen": "non_padding" if mode == "padded" else "all",
    }


def default_batching(cuda: bool) -> str:
    """The default mode: padding-free with a CUDA GPU (no padding computed, the same examples per step and the
    same loss as padded; packed changes what a step holds, so it is asked for, not assumed). On CPU, padded: the
    one mode both backends run there (Unsloth's CPU backend refuses the others), so two backends run with the
    same flags still train the same batches."""
    return "padding-free" if cuda else "padded"


def refusal(mode: str, backend: str, cuda: bool, trust_remote_code: bool) -> str | None:
    """Why `mode` cannot run correctly for this backend and machine (checked before anything loads), or None."""
    if mode == "padded":
        return None
    spec = backends.BACKENDS[backend]
    if not cuda and spec.cpu_batching is not None and mode not in spec.cpu_batching:
        others = [o for o in backends.BACKENDS.values() if o.cpu_batching is None or mode in o.cpu_batching]
        instead = "".join(f", or the {o.title} backend ({o.script} --batching {mode}), which keeps examples apart on "
                          "CPU too" for o in others[:1])
        return (f"--batching {mode} needs a CUDA GPU with the {spec.title} backend: {spec.cpu_batching_limit}. "
                f"Use --batching padded{instead}")
    if trust_remote_code:
        # Block-diagonal attention comes from transformers' own masking code (or Unsloth's kernels); a model's
        # own modelling code may ignore the restarting position ids and let examples attend to each other.
        return (f"--batching {mode} relies on transformers' or Unsloth's attention code to keep the examples of "
                "a row apart, and --trust-remote-code runs the model's own code instead; use --batching padded")
    return None


def check_effective(mode: str, packing: bool, padding_free: bool) -> None:
    """Stop when the trainer (or a library patching it) did not keep the requested mode: no silent fallback."""
    wanted = sft_fields(mode, 1)
    if (packing, padding_free) != (wanted["packing"], wanted["padding_free"]):
        raise UsageError(f"--batching {mode}: the trainer ended up with packing={packing}, padding_free="
                         f"{padding_free}; a backend library switched the mode off. Use --batching padded")


def padded_share(lengths: list[int], batch_size: int) -> float:
    """Share of computed tokens that are padding when batches of `lengths` in this order pad to their longest."""
    computed = padding = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        computed += max(batch) * len(batch)
        padding += max(batch) * len(batch) - sum(batch)
    return padding / computed if computed else 0.0


def expected_padding_share(lengths: list[int], batch_size: int, mode: str, seed: int = 0) -> float:
    """The padding share a mode computes on these row lengths: padded batches averaged over random orders (the
    trainer shuffles every epoch); padding-free and packed rows are flattened, so they compute no padding."""
    if mode != "padded" or not lengths:
        return 0.0
    rng = random.Random(seed)
    shares = []
    for _ in range(PADDING_ORDERS):
        order = list(lengths)
        rng.shuffle(order)
        shares.append(padded_share(order, batch_size))
    return round(statistics.fmean(shares), 4)


def computed_tokens(inputs: dict[str, Any]) -> tuple[int, int]:
    """(tokens computed, of which real) for one collated batch: the attention mask marks padding in padded
    batches; flattened (padding-free / packed) batches carry no mask and no padding."""
    total = int(inputs["input_ids"].numel())
    mask = inputs.get("attention_mask")
    return total, int(mask.sum()) if mask is not None else total


def batch_layout(inputs: dict[str, Any]) -> str:
    """What keeps a batch's examples apart, as seen in the batch the model gets."""
    if "packed_seq_lengths" in inputs:
        return "packed_seq_lengths (Unsloth's variable-length attention)"
    if "attention_mask" not in inputs and "position_ids" in inputs:
        return "position_ids restarting per example"
    return "attention_mask (one example per row, padded)"


def padding_preview(lengths: list[int], batch_size: int, mode: str) -> dict[str, Any]:
    """What the audit and --dry-run show: the padding share the chosen mode computes, and padded's for scale."""
    return {"mode": mode, "batch_size": batch_size,
            "expected_padding_share": expected_padding_share(lengths, batch_size, mode),
            "padded_padding_share": expected_padding_share(lengths, batch_size, "padded")}
