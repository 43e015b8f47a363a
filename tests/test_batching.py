"""--batching padded | padding-free | packed: examples sharing a row never see each other, the loss and the
label masks stay what padded batches give, a mode that cannot run is refused before anything loads, and the
padding share is predicted from the data.

Tolerances (fp32 on CPU, SmolLM2-135M): a token's log-probability inside a padding-free or packed row and
alone may differ only by summation order in longer matmuls, so 1e-4 bounds it; erasing the boundaries lets
each example attend to the ones before it, and the same check must then see some token move by more than 0.1.
Per-step losses of padded and padding-free steps (the same examples) agree within 1e-5.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import REPO, batching_probe, dialogue, gpu_environment, load_script, read_metrics, write_jsonl

from llama_lora.errors import UsageError
from llama_lora.options.batching import check_effective, computed_tokens, expected_padding_share, padded_share
from llama_lora.options.config import ConfigError, Machine, TrainConfig, resolve
from llama_lora.train.cli import build_cli

CLEAN_TOLERANCE = 1e-4
CONTAMINATION_FLOOR = 0.1
LOSS_TOLERANCE = 1e-5
# A packed epoch (21 steps of about 3 examples) and a padded one (16 steps of 4) on the same data end at eval losses
# 0.0431 and 0.0307 after a drop of 1.169 from 1.200: 1.1% of the drop apart (fp32, CPU, 2026-11-27). Different step
# compositions move the end of the curve a little; 5% of the drop leaves room for that, not for an epoch that
# learned less (the same run at packed batch 4, 6 steps, ends 19% of the drop behind).
PACKED_EVAL_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def peft():
    return load_script("lora_peft_finetuning.py").BACKEND


@pytest.fixture(scope="module")
def peft_probe(peft, smollm2_path, peft_model):
    return batching_probe.probe(peft, smollm2_path, peft_model)


@pytest.mark.parametrize("mode", batching_probe.MODES)
def test_peft_examples_in_one_row_score_exactly_as_alone_and_erased_boundaries_are_caught(peft_probe, mode):
    result = peft_probe[mode]
    assert result["examples_in_batch"] == 4 and result["rows"] == 1  # all four flattened into one row
    assert "attention_mask" not in result["batch_keys"] and "position_ids" in result["batch_keys"]
    assert result["clean"] < CLEAN_TOLERANCE
    assert result["contaminated"] > CONTAMINATION_FLOOR  # the same check catches a leaking layout


@pytest.mark.gpu  # Unsloth runs padding-free and packing on CUDA only
def test_unsloth_examples_in_one_row_score_exactly_as_alone_on_gpu(tmp_path):
    out = tmp_path / "unsloth.json"
    subprocess.run([sys.executable, "tests/helpers/batching_probe.py", "unsloth", str(out)], cwd=REPO, check=True,
                   timeout=900, env=gpu_environment())
    import json

    result = json.loads(out.read_text())
    for mode in batching_probe.MODES:
        assert "packed_seq_lengths" in result[mode]["batch_keys"]
        assert result[mode]["clean"] < 1e-2  # bf16/fp16 kernels on GPU
        assert result[mode]["contaminated"] > CONTAMINATION_FLOOR


@pytest.mark.parametrize("mode", ["padding-free", "packed"])
def test_unsloth_on_cpu_refuses_non_padded_modes_before_anything_loads(tmp_path, mode):
    script = load_script("lora_unsloth_finetuning.py")
    cli = build_cli(script.BACKEND, train=lambda *args: pytest.fail("the run started"))
    out = tmp_path / "runs" / "unsloth"
    result = CliRunner().invoke(cli, ["--batching", mode, "--output-dir", str(out)])  # the tests' CPU machine
    assert result.exit_code == 2
    assert f"--batching {mode} needs a CUDA GPU with the Unsloth backend" in result.output
    assert "Use --batching padded" in result.output
    assert not (tmp_path / "runs").exists()


def test_default_is_padding_free_where_it_runs_and_the_same_for_both_backends_on_a_machine():
    gpu, cpu = Machine(cuda=True, cuda_bf16=True), Machine(cuda=False)
    assert {resolve(TrainConfig(), b, gpu).batching for b in ("peft", "unsloth")} == {"padding-free"}
    assert {resolve(TrainConfig(), b, cpu).batching for b in ("peft", "unsloth")} == {"padded"}


def test_remote_code_models_are_refused_a_flattened_layout():
    with pytest.raises(ConfigError, match="--trust-remote-code runs the model's own code"):
        resolve(TrainConfig(batching="packed"), "peft", Machine(cuda=False), trust_remote_code=True)


def test_a_library_switching_the_mode_off_stops_the_run():
    check_effective("packed", packing=True, padding_free=True)
    with pytest.raises(UsageError, match="--batching padding-free: the trainer ended up with packing=False, "
                                         "padding_free=False"):
        check_effective("padding-free", packing=False, padding_free=False)


def test_padding_share_counts_pad_tokens_over_all_computed():
    # batches [4, 2] and [3]: 8 + 3 computed, 2 of them padding
    assert padded_share([4, 2, 3], batch_size=2) == pytest.approx(2 / 11)
    lengths = [10, 200, 35, 400, 90, 64, 300, 12]
    assert 0.3 < expected_padding_share(lengths, 4, "padded") < 0.8
    assert expected_padding_share(lengths, 4, "padding-free") == expected_padding_share(lengths, 4, "packed") == 0.0
    padded = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2])}
    assert computed_tokens(padded) == (10, 8)
    assert computed_tokens({"input_ids": torch.zeros(1, 8, dtype=torch.long)}) == (8, 8)


@pytest.fixture(scope="module")
def peft_model(peft, smollm2_path):
    """One LoRA-wrapped SmolLM2 (fp32) for the trainer tests; each test that trains restores its LoRA weights."""
    torch.manual_seed(0)
    return peft.load(_cfg(smollm2_path, "padded"), smollm2_path)


def _cfg(smollm2_path: str, mode: str, **overrides) -> TrainConfig:
    return resolve(TrainConfig(model=smollm2_path, dtype="float32", r=8, batch_size=4, grad_accum=1, save_steps=0,
                               learning_rate=1e-3, batching=mode, **overrides), "peft", Machine(cuda=False))


def _trainer(model, smollm2_path: str, mode: str, rows: list, **overrides):
    from llama_lora.train.pipeline import load_tokenizer
    from llama_lora.train.trainer import build_sft_config, make_trainer, to_dataset

    tokenizer, _ = load_tokenizer(smollm2_path)
    args = build_sft_config(_cfg(smollm2_path, mode, **overrides), Path("/nonexistent"))
    return make_trainer(model, tokenizer, args, to_dataset(rows), None, [], False, batching=mode)


@pytest.fixture(scope="module")
def rows(smollm2_tokenizer):
    rows = batching_probe.probe_rows(smollm2_tokenizer)
    return [*rows, *reversed(rows)]  # 8 rows: two steps of 4


@pytest.mark.slow
def test_padded_and_padding_free_steps_have_the_same_losses(peft_model, smollm2_path, rows):
    initial = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    losses = {}
    for mode in ("padded", "padding-free"):
        with torch.no_grad():  # the same LoRA initialisation for both runs
            for name, p in peft_model.named_parameters():
                if name in initial:
                    p.copy_(initial[name])
        trainer = _trainer(peft_model, smollm2_path, mode, rows, max_steps=2)
        trainer.train()
        losses[mode] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["padded"]) == 2
    assert losses["padding-free"] == pytest.approx(losses["padded"], abs=LOSS_TOLERANCE)


def _epoch_targets(trainer) -> tuple[int, list]:
    """Supervised targets (labels[1:] of every example) and the boundary labels of one epoch of batches."""
    targets, boundary = [], []
    for batch in trainer.get_train_dataloader():
        for row, start, end in batching_probe.segments(batch):
            labels = batch["labels"][row, start:end]
            boundary.append(int(labels[0]))
            targets.append(tuple(labels[1:].tolist()))
    return targets, boundary


@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_packing_keeps_every_label_mask_token_by_token(peft_model, smollm2_path, smollm2_tokenizer, loss_on):
    from llama_lora.data.formats import Example
    from llama_lora.data.prepare import tokenize_examples

    examples = [Example(where=f"row {i}", messages=[{"role": "user", "content": f"Is {i} even?"},
                                                    {"role": "assistant", "content": "Yes." if i % 2 else "No."},
                                                    {"role": "user", "content": "Why?"},
                                                    {"role": "assistant", "content": f"{i} mod 2 = {i % 2}."}])
                for i in range(6)]
    rows = tokenize_examples(smollm2_tokenizer, examples, loss_on)
    padded = _trainer(peft_model, smollm2_path, "padded", rows, max_steps=1)
    packed = _trainer(peft_model, smollm2_path, "packed", rows, max_steps=1, max_seq_length=256)
    padded_targets, _ = _epoch_targets(padded)
    packed_targets, boundary = _epoch_targets(packed)
    # every example once, its targets unchanged token by token; an example's first token is never a target
    assert sorted(packed_targets) == sorted(padded_targets) == sorted(tuple(r["labels"][1:]) for r in rows)
    assert set(boundary) == {-100}
    assert len(packed.get_train_dataloader()) < len(padded.get_train_dataloader())  # fewer, fuller steps


def _epoch_run(data: Path, out: Path, mode: str, batch_size: int) -> dict:
    """One epoch of the data through the PEFT entry script in the given batching mode; its metrics.json."""
    result = subprocess.run(
        [sys.executable, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
         "--batching", mode, "--max-steps", "-1", "--epochs", "1", "--batch-size", str(batch_size), "--grad-accum", "1",
         "--learning-rate", "1e-3", "--r", "8", "--dtype", "float32", "--max-seq-length", "256",
         "--eval-fraction", "0.2", "--eval-steps", "0", "--save-steps", "0", "--samples", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read_metrics(out)


@pytest.mark.slow
def test_a_packed_epoch_trains_every_token_once_and_learns_what_a_padded_epoch_learns(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [dialogue(f"What is {a} times 3?", f"1. {a} + {a} = {2 * a}.\n"
                                                          f"2. {2 * a} + {a} = {3 * a}.") for a in range(2, 82)])
    # a packed row of 256 tokens holds about 3.6 of these 70-token examples: one packed row per step carries about
    # as many examples as a padded batch of 4, so both runs take about as many optimizer steps of about as much data
    padded = _epoch_run(data, tmp_path / "padded", "padded", batch_size=4)
    packed = _epoch_run(data, tmp_path / "packed", "packed", batch_size=1)
    # an epoch is one pass over the examples in both modes: the same tokens, each once (none cut, none repeated)
    assert packed["tokens"]["non_padding_seen"] == padded["tokens"]["non_padding_seen"]
    assert packed["data"]["train"] == padded["data"]["train"] and packed["data"]["hash"] == padded["data"]["hash"]
    assert packed["batching"]["padding_share"] == 0.0 < padded["batching"]["padding_share"]
    # packed, not merely padding-free: a step of one row held several whole examples (21 steps for 64 examples)
    assert packed["steps"] <= packed["data"]["train"]["rows"] / 2
    assert packed["batching"]["examples_kept_apart_by"] == "position_ids restarting per example"
    # learning what padded batches learn: eval loss after the epoch within PACKED_EVAL_TOLERANCE of the padded run's
    drop = padded["eval_loss"]["before"] - padded["eval_loss"]["after"]
    assert packed["eval_loss"]["before"] == pytest.approx(padded["eval_loss"]["before"], rel=1e-6)
    assert abs(packed["eval_loss"]["after"] - padded["eval_loss"]["after"]) <= PACKED_EVAL_TOLERANCE * drop
