"""A real classification run scores what it learned: accuracy and macro-F1 over the eval split, before and after.

The labels are made-up words ("zorp" for a red thing, "blick" for a blue one), so the base model cannot know them
and a tuned model that names them right, on sentences it was not trained on, has learned the mapping from the data. Two balanced labels make the figures
discriminating: answering one label every time scores accuracy 0.5 and macro-F1 1/3, naming none scores 0.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, read_metrics

pytestmark = pytest.mark.slow

NOUNS = "cat dog horse car bus truck house tree boat lamp chair kite".split()
TRAIN_SENTENCES = ["I saw a {} {} this morning.", "There is a {} {} near the house.", "My neighbour has a {} {}.",
                   "A {} {} went past us."]
EVAL_SENTENCES = ["Look, a {} {}!", "We talked about the {} {} all day."]  # sentences the training rows never used
COLOURS = {"red": "zorp", "blue": "blick"}  # the cue: the colour named in the text


def rows(sentences: list[str], count: int, rng: random.Random) -> list[dict[str, str]]:
    """Alternating labels, each row a random sentence about a red or a blue thing."""
    return [{"text": rng.choice(sentences).format(colour, rng.choice(NOUNS)), "label": COLOURS[colour]}
            for colour in (list(COLOURS)[i % 2] for i in range(count))]


@pytest.fixture(scope="module")
def classified(tmp_path_factory, smollm2_path) -> Path:
    root = tmp_path_factory.mktemp("classification")
    rng = random.Random(0)
    data = root / "data"
    data.mkdir()
    for split, sentences, count in (("train", TRAIN_SENTENCES, 80), ("eval", EVAL_SENTENCES, 16)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows(sentences, count, rng)))
    out = root / "run"
    result = subprocess.run(
        [sys.executable, "lora_peft_finetuning.py", "--dataset", str(data), "--output-dir", str(out),
         "--max-steps", "40", "--batch-size", "4", "--grad-accum", "1", "--learning-rate", "1e-3", "--r", "8",
         "--dtype", "float32", "--save-steps", "0", "--eval-steps", "0", "--samples", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_the_tuned_model_names_the_made_up_labels_the_base_model_cannot_know(classified: Path):
    scores = read_metrics(classified)["samples"]["classification"]
    assert scores["rows"] == 16 and scores["labels"] == ["blick", "zorp"]
    before, after = scores["before"], scores["after"]
    # the base model has never seen the labels: at best it guesses, mostly it names neither
    assert before["accuracy"] <= 0.75 and before["macro_f1"] <= 0.75
    # above what any one-label answer scores (accuracy 0.5, macro-F1 1/3): both labels named, and named right
    assert after["accuracy"] >= 0.875 and after["macro_f1"] >= 0.85 and after["unparsed"] == 0
    assert after["accuracy"] > before["accuracy"]


def test_samples_md_reports_the_recorded_classification_figures(classified: Path):
    scores = read_metrics(classified)["samples"]["classification"]
    report = (classified / "samples.md").read_text()
    assert "## Classification (16 eval rows, labels: blick, zorp)" in report
    assert (f"| accuracy | {scores['before']['accuracy']:.1%} | {scores['after']['accuracy']:.1%} |") in report
    assert (f"| macro-F1 | {scores['before']['macro_f1']:.3f} | {scores['after']['macro_f1']:.3f} |") in report
