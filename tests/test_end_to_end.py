"""Each entry script, run as a user runs it, trains a few steps and writes a self-describing run folder
whose adapter loads in plain PEFT. Both scripts run once per session (in their own processes: Unsloth
patches libraries on import) and the tests read their folders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SCRIPTS = {"peft": "lora_peft_finetuning.py", "unsloth": "lora_unsloth_finetuning.py"}
EXPECTED_FILES = {
    "adapter_config.json", "adapter_model.safetensors", "README.md",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
    "config.yaml", "metrics.json", "train_log.jsonl", "loss_curve.png", "audit.json", "samples.md",
}
STEPS = 3


def train(backend: str, dataset: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, SCRIPTS[backend], "--dataset", str(dataset), "--output-dir", str(output_dir),
               "--max-steps", str(STEPS), "--batch-size", "2", "--grad-accum", "2", "--learning-rate", "1e-3",
               "--r", "8", "--samples", "2", "--sample-max-tokens", "24", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_path) -> dict[str, Path]:
    """Train both backends on the same tiny dataset; return their run folders."""
    root = tmp_path_factory.mktemp("runs")
    from conftest import dialogue, write_jsonl

    dataset = root / "data"
    dataset.mkdir()
    rows = [dialogue(f"What is {a} times 3?", f"Add three copies.\n1. {a} + {a} = {2 * a}.\n2. {2 * a} + {a} = "
                     f"{3 * a}.\nQuick check: What is {a + 1} times 3?") for a in range(2, 22)]
    write_jsonl(dataset / "train.jsonl", rows[4:])
    write_jsonl(dataset / "eval.jsonl", rows[:4])
    folders = {}
    for backend in SCRIPTS:
        result = train(backend, dataset, root / backend)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        folders[backend] = root / backend
    return folders


@pytest.mark.parametrize("backend", SCRIPTS)
def test_run_folder_holds_exactly_the_documented_files(runs, backend):
    assert {p.name for p in runs[backend].iterdir()} == EXPECTED_FILES


@pytest.mark.parametrize("backend", SCRIPTS)
def test_metrics_record_the_run_with_sane_values(runs, backend):
    m = json.loads((runs[backend] / "metrics.json").read_text())
    assert m["status"] == "completed" and m["backend"] == backend
    assert m["model"]["name"] == "smollm2" and m["load_in_4bit"] is False
    assert m["device"]["type"] == "cpu" and m["device"]["name"]
    assert m["libraries"]["torch"] and m["libraries"]["trl"] == "1.15.0"
    assert 0 < m["parameters"]["trainable"] < m["parameters"]["total"]
    assert m["memory"]["after_load"]["cpu_peak_rss_gb"] > 0.2
    assert m["memory"]["after_training"]["cpu_peak_rss_gb"] >= m["memory"]["after_load"]["cpu_peak_rss_gb"]
    assert m["steps"] == STEPS and [h["step"] for h in m["loss_history"]] == [1, 2, 3]
    assert all(0 < h["loss"] < 20 and math.isfinite(h["loss"]) for h in m["loss_history"])
    # the trainer's own non-padding token counter, as logged at the last step
    assert m["tokens"]["non_padding_seen"] == m["loss_history"][-1]["tokens_seen"] > 0
    assert m["tokens"]["per_second"] > 0 and m["runtime_s"]["train"] > 0
    assert m["eval_loss"]["after"] < m["eval_loss"]["before"]
    assert m["training_args"]["max_length"] == 2048 and m["training_args"]["padding_free"] is False
    assert len(m["data"]["hash"]) == 64 and m["data"]["train"]["rows"] == 16
    audit = json.loads((runs[backend] / "audit.json").read_text())
    assert audit["hash"] == m["data"]["hash"] and audit["format"] == "messages"
    assert audit["splits"]["eval"]["rows_kept"] == 4
    # CPU default: padded batches; the padding they computed is measured, and was predicted by the audit
    batching = m["batching"]
    assert batching["mode"] == "padded" and batching["attention_implementation"]
    assert batching["examples_kept_apart_by"].startswith("attention_mask")
    assert batching["computed_tokens"] >= m["tokens"]["non_padding_seen"]
    assert 0 <= batching["padding_share"] < 0.5
    assert audit["batching"]["mode"] == "padded" and audit["batching"]["batch_size"] == 2
    assert 0 <= audit["batching"]["expected_padding_share"] < 0.5


@pytest.mark.parametrize("backend", SCRIPTS)
def test_step_log_has_one_line_per_optimizer_step(runs, backend):
    lines = (runs[backend] / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("backend", SCRIPTS)
def test_samples_compare_base_and_tuned_answers_on_held_out_prompts(runs, backend):
    m = json.loads((runs[backend] / "metrics.json").read_text())
    sampled = m["samples"]
    assert sampled["prompts"] == 2 and sampled["max_new_tokens"] == 24 and m["runtime_s"]["samples"] > 0
    # every reference answer in the fixture ends with "Quick check: ...?" after numbered steps
    assert sampled["style"]["reference"] == {"quick_check": 1.0, "numbered_steps": 1.0, "stopped": 1.0}
    assert set(sampled["style"]["before"]) == set(sampled["style"]["after"]) == set(sampled["style"]["reference"])
    text = (runs[backend] / "samples.md").read_text()
    assert text.count("**Before (base)**") == text.count("**After (tuned)**") == 2
    assert "What is 2 times 3?" in text  # the first eval row's prompt, rendered with the chat template
    # the adapter was disabled for "before" (Unsloth's wrapped model too): after 3 steps at lr 1e-3 the tuned
    # model answers differently from the base on at least one prompt
    answers = text.split("**Before (base)**")[1:]
    assert any(a.split("**After (tuned)**")[0] != a.split("**After (tuned)**")[1].split("**Reference**")[0]
               for a in answers)


@pytest.mark.parametrize("backend", SCRIPTS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adapter_gives_the_same_logits_in_plain_peft_and_in_unsloths_loader(runs, backend, dtype, smollm2_path):
    """Portability: each backend's adapter, loaded by plain PEFT here and by Unsloth's FastLanguageModel in its
    own process, gives the same logits within llama_lora.portability.LOGIT_TOLERANCE of the logit scale."""
    from conftest import load_script
    from llama_lora import inference, portability

    model, tokenizer = inference.load_tuned(inference.read_run(runs[backend]), dtype=dtype)
    peft_logits = portability.logits(model, portability.prompt_batch(tokenizer))
    unsloth = load_script("use_adapter.py").unsloth_logits(runs[backend], dtype)
    same = portability.compare_logits(peft_logits, unsloth)
    assert portability.within_tolerance(same), same
    with model.disable_adapter():  # and the adapter matters far more than the tolerance
        base = portability.logits(model, portability.prompt_batch(tokenizer))
    assert not portability.within_tolerance(portability.compare_logits(peft_logits, base))


def test_both_backends_train_on_identical_tokens_with_the_same_settings(runs):
    peft, unsloth = (json.loads((runs[b] / "metrics.json").read_text()) for b in ("peft", "unsloth"))
    assert peft["data"]["hash"] == unsloth["data"]["hash"]
    assert peft["training_args"] == unsloth["training_args"]
    assert peft["parameters"] == unsloth["parameters"]


@pytest.mark.parametrize("backend", SCRIPTS)
def test_adapter_loads_in_plain_peft_and_changes_the_logits(runs, backend, smollm2_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(runs[backend])
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is 5 times 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    with torch.no_grad():
        before = base(**inputs).logits
        tuned = PeftModel.from_pretrained(base, runs[backend])
        after = tuned(**inputs).logits
    assert (after - before).abs().max().item() > 1e-3


@pytest.mark.parametrize("backend", SCRIPTS)
def test_qlora_4bit_trains_on_cpu_through_bitsandbytes(backend, tmp_path, tiny_dataset):
    result = train(backend, tiny_dataset, tmp_path / "qlora", "--load-in-4bit", "--max-steps", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = json.loads((tmp_path / "qlora" / "metrics.json").read_text())
    assert m["load_in_4bit"] is True and m["steps"] == 1
    assert math.isfinite(m["loss_history"][0]["loss"])


def test_bad_dataset_exits_2_naming_the_line_and_writes_nothing(tmp_path, smollm2_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "student", "content": "hi"}, {"role": "teacher", "content": "yo"}]}\n'
                   '{"messages": [{"role": "student", "content": "hi"}, {"role": "teacher"}]}\n')
    result = train("peft", bad, tmp_path / "out")
    assert result.returncode == 2
    assert "bad.jsonl:2: field 'messages[1].content'" in result.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_both_backends_losses_agree_within_the_parity_tolerance(runs):
    from llama_lora.compare import compare, load_run

    result = compare(load_run(runs["peft"]), load_run(runs["unsloth"]))
    assert result["fair"], result["mismatches"]
    assert result["loss_parity"]["steps"] == STEPS
    assert result["loss_parity"]["verdict"] == "consistent", result["loss_parity"]


def test_a_run_with_another_max_length_is_flagged_as_unfair(runs, tmp_path):
    short = tmp_path / "peft-short"
    result = train("peft", runs["peft"].parent / "data", short, "--max-seq-length", "512")  # the fixture's data
    assert result.returncode == 0, result.stderr[-3000:]
    compared = subprocess.run([sys.executable, "compare_backends.py", str(runs["unsloth"]), str(short),
                               "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True)
    assert compared.returncode == 3, compared.stdout + compared.stderr
    report = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert {"setting": "max length", "a": 2048, "b": 512} in report["mismatches"]
    assert report["verdict"].startswith("no winner declared")
