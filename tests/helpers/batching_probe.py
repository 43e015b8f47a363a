"""Do the examples of a padding-free or packed batch stay apart? Per-token log-probabilities of every example
in a real training batch (built by the project's own trainer for a backend and --batching mode) against the
same example run alone, and the same check on a deliberately contaminated copy of the batch (position ids not
reset, Unsloth's sequence lengths merged into one), which must fail it.

    python tests/helpers/batching_probe.py unsloth OUT.json    # Unsloth must be imported first, in its own process

tests/test_batching.py runs the PEFT side in its own process by importing `probe`, and this script for Unsloth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # llama_lora, and the tests' helpers

MODES = ("padding-free", "packed")
# Four examples of different lengths in the tiny dataset's shape: one batch of 4 holds them all.
QUESTIONS = [(3, "Add three copies."), (7, "Multiplying by 3 means adding three copies of the number."),
             (11, "Three copies."), (19, "Multiplying by 3 means adding three copies; here is each step.")]


def probe_rows(tokenizer: Any) -> list[dict[str, Any]]:
    """Tokenized, assistant-masked rows, as the data step makes them."""
    from llama_lora.data.formats import Example
    from llama_lora.data.prepare import tokenize_examples

    examples = [Example(where=f"row {i}", messages=[
        {"role": "user", "content": f"What is {a} times 3?"},
        {"role": "assistant", "content": f"{intro}\n1. {a} + {a} = {2 * a}.\n2. {2 * a} + {a} = {3 * a}."}])
        for i, (a, intro) in enumerate(QUESTIONS)]
    return tokenize_examples(tokenizer, examples, "assistant")


def segments(batch: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in a batch: rows split where position ids restart, else by the mask."""
    spans = []
    for row in range(batch["input_ids"].shape[0]):
        if "attention_mask" in batch:
            spans.append((row, 0, int(batch["attention_mask"][row].sum())))
            continue
        starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist()
        spans += [(row, s, e) for s, e in zip(starts, [*starts[1:], batch["input_ids"].shape[1]])]
    return spans


def token_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """log p(token t+1 | the tokens the model let position t see), for every position of every row (fp32)."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def alone_logprobs(model: Any, batch: dict[str, Any], spans: list[tuple[int, int, int]]) -> list[Any]:
    """Per-token log-probs of every example of the batch run on its own."""
    import torch

    return [token_logprobs(model, {"input_ids": batch["input_ids"][row:row + 1, start:end],
                                   "position_ids": torch.arange(end - start)[None]})[0]
            for row, start, end in spans]


def largest_difference(model: Any, batch: dict[str, Any], spans: list[tuple[int, int, int]],
                       alone: list[Any]) -> float:
    """The largest per-token log-prob difference between an example inside the batch and the example alone."""
    together = token_logprobs(model, batch)
    return max(float((together[row, start:end - 1] - solo).abs().max())
               for (row, start, end), solo in zip(spans, alone))


def contaminated(batch: dict[str, Any]) -> dict[str, Any]:
    """The same tokens with the example boundaries erased: position ids counting on across examples and, for
    Unsloth, one sequence length for the whole row; every example then attends to the ones before it."""
    import torch

    bad = dict(batch)
    length = batch["input_ids"].shape[1]
    bad["position_ids"] = torch.arange(length)[None].expand(batch["input_ids"].shape[0], -1)
    if "packed_seq_lengths" in batch:
        bad["packed_seq_lengths"] = torch.tensor([length], dtype=batch["packed_seq_lengths"].dtype)
    return bad


def probe(backend: Any, model_path: str, model: Any = None) -> dict[str, Any]:
    """For each mode: the largest log-prob difference in the real batch and in its contaminated copy (with the
    backend's model for r=8, fp32, loaded here unless given)."""
    import torch

    from llama_lora.options.config import Machine, TrainConfig, resolve
    from llama_lora.train.pipeline import load_tokenizer
    from llama_lora.train.trainer import build_sft_config, make_trainer, to_dataset

    torch.manual_seed(0)
    cfg = resolve(TrainConfig(model=model_path, dtype="float32", r=8, batch_size=4, grad_accum=1, max_steps=1,
                              save_steps=0, max_seq_length=512), backend.name, Machine(cuda=False))
    tokenizer, _ = load_tokenizer(model_path)
    rows = probe_rows(tokenizer)
    model = model if model is not None else backend.load(cfg, model_path)
    model.train()  # the training forward path, without gradients
    result: dict[str, Any] = {"lengths": [len(r["input_ids"]) for r in rows]}
    for mode in MODES:
        args = build_sft_config(cfg.__class__(**{**cfg.__dict__, "batching": mode}), Path("/nonexistent"))
        trainer = make_trainer(model, tokenizer, args, to_dataset(rows), None, [], backend.own_cpu_loss,
                               batching=mode)
        batch = next(iter(trainer.get_train_dataloader()))
        spans = segments(batch)
        with torch.no_grad():
            alone = alone_logprobs(model, batch, spans)
            result[mode] = {
                "examples_in_batch": len(spans),
                "rows": int(batch["input_ids"].shape[0]),
                "batch_keys": sorted(batch),
                "clean": largest_difference(model, batch, spans, alone),
                "contaminated": largest_difference(model, contaminated(batch), spans, alone),
            }
    return result


def main() -> None:
    backend_name, out = sys.argv[1], Path(sys.argv[2])
    if backend_name == "unsloth":
        import unsloth  # noqa: F401  (before transformers and TRL)
    from helpers import load_script
    from llama_lora.backend import BACKENDS
    from llama_lora.model.assets import smollm2_dir

    script = load_script(BACKENDS[backend_name].script)
    out.write_text(json.dumps(probe(script.BACKEND, str(smollm2_dir())), indent=1))


if __name__ == "__main__":
    main()
