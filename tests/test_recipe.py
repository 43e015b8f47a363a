"""Defaults that fit the model: the embedded model's demo recipe, the Llama recipe, and --eval-steps."""

from __future__ import annotations

import dataclasses

import pytest

from llama_lora.options import recipe
from llama_lora.options.config import ConfigError, Machine, TrainConfig, build, resolve, with_eval_steps

CPU = Machine(cuda=False, cpu_bf16=True)
GPU = Machine(cuda=True, cuda_bf16=True)


def _recipe_of(cfg: TrainConfig) -> tuple:
    return cfg.batch_size, cfg.grad_accum, cfg.learning_rate, cfg.max_steps


def test_the_embedded_model_gets_the_demo_recipe_on_any_machine():
    for machine in (CPU, GPU):
        cfg = resolve(build({"model": "smollm2"}), "peft", machine)
        assert _recipe_of(cfg) == (2, 1, 1e-3, 60)
        assert cfg.eval_steps == 20  # 3 evaluations during the 60 steps, plus the one before


def test_the_cpu_default_run_is_the_demo():
    cfg = resolve(TrainConfig(), "unsloth", CPU)
    assert cfg.model == "smollm2" and _recipe_of(cfg) == (2, 1, 1e-3, 60)


@pytest.mark.parametrize("model", ["llama-3.1-8b-instruct", "llama-3.1-8b", "llama-3.1-70b-instruct",
                                   "meta-llama/Llama-3.1-8B-Instruct", "/models/my-llama"])
def test_llama_sized_models_keep_the_standard_recipe(model: str):
    on_gpu = resolve(build({"model": model}), "peft", GPU)
    assert _recipe_of(on_gpu) == (4, 2, 2e-4, -1)
    assert on_gpu.eval_steps is None  # an epoch's step count needs the data: resolved once it is read
    assert _recipe_of(resolve(build({"model": model}), "peft", CPU)) == (4, 2, 2e-4, 10)


def test_the_gpu_default_model_gets_the_standard_recipe():
    cfg = resolve(TrainConfig(), "peft", GPU)
    assert cfg.model == "llama-3.1-8b-instruct" and _recipe_of(cfg) == (4, 2, 2e-4, -1)


def test_values_given_explicitly_win_over_the_recipe():
    cfg = resolve(build({"model": "smollm2", "batch_size": 8, "learning_rate": 5e-4, "max_steps": -1}), "peft", CPU)
    assert _recipe_of(cfg) == (8, 1, 5e-4, -1)
    assert resolve(build({"model": "llama-3.1-8b", "grad_accum": 4}), "peft", GPU).grad_accum == 4


def test_both_backends_get_the_same_resolved_values():
    for machine in (CPU, GPU):
        peft, unsloth = (resolve(TrainConfig(), backend, machine) for backend in ("peft", "unsloth"))
        # only the names that say which backend it is differ
        assert dataclasses.replace(peft, output_dir="", run_name="") == dataclasses.replace(unsloth, output_dir="",
                                                                                            run_name="")


def test_an_epoch_run_evaluates_three_times_once_the_row_count_is_known():
    cfg = resolve(build({"model": "llama-3.1-8b"}), "peft", GPU)
    # 301 rows, batch 4 -> 76 batches -> 38 optimizer steps at accumulation 2 -> every 13 steps
    assert with_eval_steps(cfg, rows=301).eval_steps == 13
    assert with_eval_steps(cfg, rows=301, processes=2).eval_steps == 7  # 38 batches per process -> 19 steps
    assert with_eval_steps(dataclasses.replace(cfg, epochs=3.0), rows=301).eval_steps == 38
    assert with_eval_steps(dataclasses.replace(cfg, eval_steps=5), rows=301).eval_steps == 5


def test_planned_steps_count_like_the_trainer():
    assert recipe.planned_steps(max_steps=60, epochs=1.0, rows=301, batch_size=2, grad_accum=1) == 60
    assert recipe.planned_steps(max_steps=-1, epochs=1.0, rows=301, batch_size=2, grad_accum=1) == 151
    assert recipe.planned_steps(max_steps=-1, epochs=1.0, rows=301, batch_size=4, grad_accum=3) == 26  # 76 / 3


def test_early_stopping_evaluates_at_every_checkpoint():
    cfg = resolve(build({"model": "smollm2", "early_stopping_patience": 2, "save_steps": 30}), "peft", CPU)
    assert cfg.eval_steps == 30
    assert resolve(build({"model": "smollm2", "early_stopping_patience": 2, "save_steps": 30, "eval_steps": 30}),
                   "peft", CPU).eval_steps == 30
    for eval_steps in (10, 20, 0):  # an evaluation between checkpoints could find a best step that was never saved
        with pytest.raises(ConfigError, match="--eval-steps must equal --save-steps"):
            resolve(build({"early_stopping_patience": 2, "save_steps": 30, "eval_steps": eval_steps}), "peft", CPU)


def test_eval_steps_zero_means_only_before_and_after_and_negative_is_refused():
    assert resolve(build({"eval_steps": 0}), "peft", CPU).eval_steps == 0
    with pytest.raises(ConfigError, match="--eval-steps must be 0"):
        resolve(build({"eval_steps": -1}), "peft", CPU)
