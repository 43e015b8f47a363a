"""The demo recipe visibly teaches: a short run on the bundled data raises the style rate on held-out prompts.

The full demo (60 steps) is measured by benchmarks/learning.py over all 34 held-out prompts; this test runs a
third of it, so CI stays within its budget, and checks the direction on 4 held-out prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

BUNDLED = REPO / "data" / "teacher_student"
STEPS = 20


def test_a_short_demo_run_raises_the_style_rate_on_held_out_prompts(tmp_path: Path, smollm2_path: str):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text((BUNDLED / "train.jsonl").read_text())
    held_out = (BUNDLED / "eval.jsonl").read_text().splitlines()
    (data / "eval.jsonl").write_text("\n".join(held_out[::9]) + "\n")  # 4 rows spread over the subjects
    out = tmp_path / "run"
    # the demo recipe (batch 2, no accumulation, lr 1e-3) resolved by default; only the length is cut
    result = subprocess.run(
        [sys.executable, "lora_unsloth_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
         "--max-steps", str(STEPS), "--eval-steps", "0", "--samples", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=1200, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    args = metrics["training_args"]
    assert (args["learning_rate"], args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (
        1e-3, 2, 1)
    style = metrics["samples"]["style"]
    assert style["reference"] == {"quick_check": 1.0, "numbered_steps": 1.0, "stopped": 1.0}
    # the base model answers in its own way (at most 1 of 4 with numbered steps or a "Quick check" ending); a third
    # of the demo moves the tuned model towards the data's style
    assert style["before"]["numbered_steps"] <= 0.25 and style["before"]["quick_check"] <= 0.25
    assert style["after"]["numbered_steps"] > style["before"]["numbered_steps"]
    assert sum(style["after"].values()) > sum(style["before"].values())
    assert metrics["eval_loss"]["after"] < metrics["eval_loss"]["before"] - 0.1
