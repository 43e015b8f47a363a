"""The learning benchmark's report logic: mean and spread per backend, and the agreement verdict."""

from __future__ import annotations

from helpers import load_script

bench = load_script("benchmarks/learning.py")


def _run(seed: int, quick: float, numbered: float, stopped: float, after: float) -> dict:
    return {"seed": seed, "style_after": {"quick_check": quick, "numbered_steps": numbered, "stopped": stopped},
            "eval_loss": {"before": 2.6, "after": after}, "eval_curve": [(20, 2.3), (60, after)],
            "train_s": 200.0 + seed, "eval_during_training_s": 30.0, "samples_s": 40.0, "wall_s": 300.0}


def test_spread_is_mean_sample_std_min_max():
    assert bench.spread([0.5, 0.7, 0.9]) == {"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9, "n": 3}
    assert bench.spread([0.5])["std"] == 0.0


def test_summary_holds_each_style_check_and_the_eval_loss_drop():
    summary = bench.summarise([_run(1, 0.8, 1.0, 0.9, 2.2), _run(2, 0.6, 1.0, 0.7, 2.0)])
    assert summary["style_after"]["quick_check"]["mean"] == 0.7
    assert summary["eval_loss_drop"]["mean"] == 0.5


def test_backends_agree_only_within_every_tolerance():
    peft = bench.summarise([_run(1, 0.80, 0.9, 0.9, 2.15), _run(2, 0.70, 0.9, 0.9, 2.15)])
    close = bench.summarise([_run(1, 0.70, 0.9, 0.8, 2.16), _run(2, 0.70, 0.9, 0.9, 2.16)])
    verdict = bench.verdict({"peft": peft, "unsloth": close})
    assert verdict["agree"] and verdict["style_gaps"]["quick_check"] == 0.05
    far_style = bench.summarise([_run(1, 0.50, 0.9, 0.9, 2.15), _run(2, 0.50, 0.9, 0.9, 2.15)])
    assert not bench.verdict({"peft": peft, "unsloth": far_style})["agree"]  # 0.25 apart on quick_check
    far_loss = bench.summarise([_run(1, 0.75, 0.9, 0.9, 2.25), _run(2, 0.75, 0.9, 0.9, 2.25)])
    assert not bench.verdict({"peft": peft, "unsloth": far_loss})["agree"]  # 0.1 apart on eval loss
    assert bench.verdict({"peft": peft}) is None


def test_report_shows_base_and_tuned_rates_and_the_verdict():
    runs = {"peft": [_run(42, 0.9, 1.0, 1.0, 2.1)], "unsloth": [_run(42, 0.9, 1.0, 1.0, 2.1)]}
    summary = {b: bench.summarise(r) for b, r in runs.items()}
    result = {"prompts": 34, "max_new_tokens": 256, "commands": ["python benchmarks/learning.py"], "date": "d",
              "environment": {"device": "CPU (x86_64)", "cpus": 2}, "model": "smollm2", "train_flags": "",
              "loadavg": {"before": [0.1, 0.1, 0.1], "after": [2.0, 2.0, 2.0]}, "shared": False,
              "reference": {"quick_check": 1.0, "numbered_steps": 1.0, "stopped": 1.0},
              "base": {"quick_check": 0.0, "numbered_steps": 0.0294, "stopped": 0.5},
              "runs": runs, "summary": summary, "verdict": bench.verdict(summary),
              "examples": {"where": "eval.jsonl:1", "base": "Sure.", "peft-seed42": "1. One.\nQuick check: Two?"}}
    text = bench.to_markdown(result)
    assert "| ends with a \"Quick check: ...?\" line | 100% (34/34) | 0% (0/34) | 90% ± 0% " in text
    assert "| has numbered steps (\"1.\" and \"2.\" lines) | 100% (34/34) | 3% (1/34) |" in text
    assert "Yes: the gaps between the backends' mean pass rates are quick_check 0%" in text
    assert "| peft | 42 | 31/34 | 34/34 | 34/34 | 2.600, 2.300, 2.100 | 242 | 30 | 40 | 300 |" in text
