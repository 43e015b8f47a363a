"""A trained run of the embedded model, as the PEFT entry script leaves it, passes `verify` for every default target:
the merged model, the GGUF + LoRA pair, the merged GGUF at f16, q8_0 and q4_k_m in llama.cpp, and the Ollama template.

Costs one short training run (4 steps on 12 tiny dialogues, learning rate 1e-2: eval loss falls from about 2.4 to
0.25, so the adapter moves the logits as a trained one does) and one verify on 2 held-out prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, dialogue, read_metrics, write_jsonl

pytestmark = pytest.mark.slow

TARGETS = ["merged", "gguf-lora", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "ollama-template"]


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=1800,
                          check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    rows = [dialogue(f"What is {a} times 3?", f"Add three copies.\n1. {a} + {a} = {2 * a}.\n2. {2 * a} + {a} = "
                     f"{3 * a}.\nQuick check: What is {a + 1} times 3?") for a in range(2, 18)]
    write_jsonl(root / "train.jsonl", rows[4:])
    write_jsonl(root / "eval.jsonl", rows[:4])
    result = python("lora_peft_finetuning.py", "--dataset", str(root), "--output-dir", str(root / "peft"),
                    "--max-steps", "4", "--batch-size", "2", "--grad-accum", "2", "--learning-rate", "1e-2",
                    "--samples", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "peft"


def test_every_default_export_of_a_trained_run_passes_verify(trained):
    result = python("use_adapter.py", "verify", str(trained), "--count", "2", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads((trained / "verify.json").read_text())
    assert [(t["target"], t["status"]) for t in report["targets"]] == [(name, "passed") for name in TARGETS]
    assert len(report["prompts"]) == 2 and report["passed"]
    for number, name in enumerate(TARGETS, 1):
        assert f"[{number}/{len(TARGETS)}] {name}: PASSED" in result.stdout
    assert read_metrics(trained)["verify"] == {"passed": True, "when": report["when"],
                                               "targets": dict.fromkeys(TARGETS, "passed")}
    assert not list(trained.parent.glob(".verify-*")), "the temporary exports are gone"
