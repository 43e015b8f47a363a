"""The evaluation-cost benchmark's report logic: what it reads from a run folder and eval.json, and its table."""

from __future__ import annotations

import json

import click
import pytest
from helpers import load_script

from llama_lora.run import run_record

bench = load_script("benchmarks/eval_cost.py")

FORGETTING = {"sample": "data/general_text/botchan.txt", "tokens": 680, "before": 3.83, "after": 3.82,
              "perplexity_change": -0.01, "reading": "unchanged", "seconds": 4.0}


def eval_json(n: int = 60) -> dict:
    """eval.json as use_adapter.py eval writes it, reduced to what the benchmark reads (its rows whole: the record
    shows eval's table)."""
    return {"settings": {"tasks": ["everyday_knowledge"], "limit": None}, "seconds": {"base": 20.0, "tuned": 25.0},
            "rows": [{"task": "everyday_knowledge", "metric": m, "filter": "none", "n": n,
                      "base": 0.6, "base_stderr": 0.06, "tuned": 0.65, "tuned_stderr": 0.06,
                      "delta": 0.05, "delta_stderr": 0.04, "reading": "no clear change (within 2 standard errors)"}
                     for m in ("acc", "acc_norm")]}


def write_metrics(folder, **fields) -> None:
    """A run's metrics.json as the pipeline writes it, holding `fields`."""
    (folder / "metrics.json").write_text(json.dumps(run_record.new("completed", **fields).model_dump(mode="json")))


def test_the_forgetting_cost_is_what_the_run_recorded(tmp_path):
    write_metrics(tmp_path, model={"name": "smollm2"}, backend="peft", steps=60, forgetting=FORGETTING,
                  runtime_s={"total": 200.0, "train": 150.0})
    cost = bench.forgetting_cost(tmp_path)
    assert cost["forgetting"]["seconds"] == 4.0 and cost["runtime_s"]["total"] == 200.0
    assert (cost["model"], cost["backend"], cost["steps"]) == ("smollm2", "peft", 60)


@pytest.mark.parametrize("metrics", [True, False])
def test_a_folder_without_a_forgetting_check_is_refused_naming_its_metrics_file(tmp_path, metrics):
    if metrics:
        write_metrics(tmp_path, backend="peft", runtime_s={"total": 200.0})
    with pytest.raises(click.UsageError, match="metrics.json: no forgetting check recorded"):
        bench.forgetting_cost(tmp_path)


def test_the_table_sets_the_check_against_its_run_and_each_pass_against_the_eval_command():
    result = {"commands": ["python benchmarks/eval_cost.py"], "date": "2026-12-05", "device": {"name": "CPU"},
              "cpus": 2, "loadavg": {"before": [0.1, 0.1, 0.1], "after": [1.0, 0.5, 0.2]}, "model": "smollm2",
              "backend": "peft", "steps": 60, "forgetting": FORGETTING, "runtime_s": {"total": 200.0},
              "eval": bench.eval_cost(None, eval_json(), wall=50.0), "train_wall_s": 210.0}
    table = bench.to_markdown(result)
    assert "| forgetting check, before + after (680 tokens each way) | 4.0 | 2.0% of the whole run (200.0 s) |" in table
    assert "| eval, base pass (everyday_knowledge 60 questions) | 20.0 | 40% of the command |" in table
    assert "| eval, tuned pass | 25.0 | 50% of the command |" in table
    assert "| training run, whole command | 210.0 |" in table
    # what the timed commands found, for the pages that quote it
    assert "Forgetting check: 3.8300 -> 3.8200 nats per token (-1.0% perplexity): unchanged." in table
    assert ("| everyday_knowledge | acc | 60 | 0.6000 ± 0.0600 | 0.6500 ± 0.0600 | +0.0500 ± 0.0400 | no clear change "
            "(within 2 standard errors) |") in table


def test_verify_is_timed_with_the_targets_and_prompts_its_report_names():
    from llama_lora.export.verify import Verification
    from llama_lora.export.verify_report import as_record

    record = as_record(Verification(run="run", reference="the adapter on its base", prompts=[],
                                    reference_continuations=[], outcomes=[]))
    record["targets"] = [{"target": "merged"}, {"target": "gguf-lora"}]
    record["prompts"] = [{"where": "eval.jsonl:1"}] * 8
    cost = bench.verify_cost(record, wall=120.0)
    assert cost == {"targets": ["merged", "gguf-lora"], "prompts": 8, "passed": True, "wall_s": 120.0}
    result = {"commands": [], "date": "2026-12-05", "device": {"name": "CPU"}, "cpus": 2,
              "loadavg": {"before": [0.1] * 3, "after": [0.1] * 3}, "model": "smollm2", "backend": "peft", "steps": 60,
              "forgetting": FORGETTING, "runtime_s": {"total": 200.0},
              "eval": bench.eval_cost(None, eval_json(), wall=50.0), "verify": cost}
    assert "| verify, whole command (merged, gguf-lora; built, then run on 8 prompts) | 120.0 | |" in \
        bench.to_markdown(result)
