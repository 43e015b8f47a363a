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
from helpers import REPO, read_metrics

from llama_lora.backend import BACKENDS
from llama_lora.run import files

pytestmark = pytest.mark.slow

SCRIPTS = {name: spec.script for name, spec in BACKENDS.items()}
# the run folder's declared files (llama_lora/run/files.py) and the tokenizer's own
EXPECTED_FILES = {*files.COMPLETED, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
STEPS = 3
FLAGS = ["--max-steps", str(STEPS), "--batch-size", "2", "--grad-accum", "2", "--learning-rate", "1e-3", "--r", "8",
         "--samples", "2", "--sample-max-tokens", "24"]
TRAIN_ROWS = 12  # = STEPS x batch 2 x accumulation 2: the runs see every training row exactly once


def train(backend: str, dataset: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, SCRIPTS[backend], "--dataset", str(dataset), "--output-dir", str(output_dir),
               *FLAGS, *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_path) -> dict[str, Path]:
    """Train both backends on the same tiny dataset with compare_backends.py --run, as a user compares them;
    return their run folders (the comparison files sit beside them)."""
    root = tmp_path_factory.mktemp("runs")
    from helpers import dialogue, write_jsonl

    dataset = root / "data"
    dataset.mkdir()
    rows = [dialogue(f"What is {a} times 3?", f"Add three copies.\n1. {a} + {a} = {2 * a}.\n2. {2 * a} + {a} = "
                     f"{3 * a}.\nQuick check: What is {a + 1} times 3?") for a in range(2, 6 + TRAIN_ROWS)]
    write_jsonl(dataset / "train.jsonl", rows[4:])
    write_jsonl(dataset / "eval.jsonl", rows[:4])
    result = subprocess.run([sys.executable, "compare_backends.py", "--run", "--out", str(root),
                             "--dataset", str(dataset), *FLAGS], cwd=REPO, capture_output=True, text=True,
                            timeout=1800, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Fairness check: passed" in result.stdout and "Loss parity: consistent" in result.stdout
    (root / "output.txt").write_text(result.stdout)  # both runs' summaries and the comparison, as the user saw them
    return {backend: root / backend for backend in SCRIPTS}


@pytest.mark.parametrize("backend", SCRIPTS)
def test_run_folder_holds_exactly_the_documented_files(runs, backend):
    assert {p.name for p in runs[backend].iterdir()} == EXPECTED_FILES


@pytest.mark.parametrize("backend", SCRIPTS)
def test_metrics_record_the_run_with_sane_values(runs, backend):
    m = read_metrics(runs[backend])
    assert m["status"] == "completed" and m["backend"] == backend
    assert m["model"]["name"] == "smollm2" and m["load_in_4bit"] is False
    assert m["device"]["type"] == "cpu" and m["device"]["name"]
    assert m["libraries"]["torch"] and m["libraries"]["trl"] == "1.15.0"
    assert 0 < m["parameters"]["trainable"] < m["parameters"]["total"]
    assert m["memory"]["after_load"]["cpu_peak_rss_gib"] > 0.2
    assert m["memory"]["after_training"]["cpu_peak_rss_gib"] >= m["memory"]["after_load"]["cpu_peak_rss_gib"]
    assert m["steps"] == STEPS and [h["step"] for h in m["loss_history"]] == [1, 2, 3]
    assert all(0 < h["loss"] < 20 and math.isfinite(h["loss"]) for h in m["loss_history"])
    # the trainer's own non-padding token counter, as logged at the last step
    assert m["tokens"]["non_padding_seen"] == m["loss_history"][-1]["tokens_seen"] > 0
    assert m["tokens"]["per_second"] > 0 and m["runtime_s"]["train"] > 0
    assert m["eval_loss"]["after"] < m["eval_loss"]["before"]
    assert m["training_args"]["max_length"] == 2048 and m["training_args"]["padding_free"] is False
    assert len(m["data"]["hash"]) == 64 and m["data"]["train"]["rows"] == TRAIN_ROWS
    audit = json.loads((runs[backend] / "audit.json").read_text())
    assert audit["hash"] == m["data"]["hash"] and audit["format"] == "messages"
    # what reading left out reaches metrics.json through the pipeline, as the audit counted it
    assert {key: m["data"]["train"][key] for key in ("rows_skipped", "unused_fields", "reasoning_tokens")} == \
        {key: audit["splits"]["train"][key] for key in ("rows_skipped", "unused_fields", "reasoning_tokens")}
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
def test_every_run_records_and_prints_its_forgetting_check(runs, backend):
    from llama_lora.run import forgetting

    check = read_metrics(runs[backend])["forgetting"]
    assert check["sample"] == "data/general_text/botchan.txt" and check["tokens"] > 500 and check["seconds"] > 0
    assert 1 < check["before"] < 10 and 1 < check["after"] < 10 and check["after"] != check["before"]
    assert check["perplexity_change"] == pytest.approx(math.exp(check["after"] - check["before"]) - 1, abs=2e-5)
    assert check["reading"] == forgetting.reading(check["before"], check["after"])
    # in the run's summary and in the comparison report, one line each
    assert f"  forgetting  {forgetting.summary(check)}" in (runs[backend].parent / "output.txt").read_text()
    assert forgetting.summary(check) in (runs[backend].parent / "comparison.md").read_text()


@pytest.mark.parametrize("backend", SCRIPTS)
def test_tokens_per_second_counts_only_non_padding_tokens(runs, backend):
    m = json.loads((runs[backend] / "metrics.json").read_text())
    audit = json.loads((runs[backend] / "audit.json").read_text())
    # the rows differ in length, so batches of 2 carry padding; over exactly one epoch the trainer's count must be
    # the training rows' own tokens, which a count that included padding would exceed
    assert audit["splits"]["train"]["length_tokens"]["min"] < audit["splits"]["train"]["length_tokens"]["max"]
    assert m["tokens"]["non_padding_seen"] == m["data"]["train"]["tokens"]
    # runtime_s.train is rounded to 10 ms while tokens/s uses the unrounded time: at most 5 ms apart (plus the 0.1 of
    # tokens/s's own rounding)
    train_s = m["runtime_s"]["train"]
    assert m["tokens"]["per_second"] == pytest.approx(m["tokens"]["non_padding_seen"] / train_s,
                                                      rel=0.006 / train_s, abs=0.1)


@pytest.mark.parametrize("backend", SCRIPTS)
def test_every_setting_the_fairness_check_compares_is_in_a_real_record(runs, backend):
    from llama_lora.run.compare import FAIRNESS

    m = json.loads((runs[backend] / "metrics.json").read_text())

    def missing(path: str) -> bool:
        value = m
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                return True
            value = value[key]
        return False

    # a renamed key would compare None with None and pass silently
    assert [name for name, path in FAIRNESS.items() if missing(path)] == []


@pytest.mark.parametrize("backend", SCRIPTS)
def test_step_log_has_one_line_per_optimizer_step(runs, backend):
    lines = (runs[backend] / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("backend", SCRIPTS)
def test_samples_compare_base_and_tuned_answers_on_held_out_prompts(runs, backend):
    m = read_metrics(runs[backend])
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
    own process, gives the same logits within llama_lora.use.adapter_checks.LOGIT_TOLERANCE of the logit scale."""
    from helpers import load_script

    from llama_lora.use import adapter_checks, inference

    model, tokenizer = inference.load_tuned(inference.read_run(runs[backend]), dtype=dtype)
    peft_logits = adapter_checks.logits(model, adapter_checks.prompt_batch(tokenizer))
    unsloth = load_script("use_adapter.py").unsloth_logits(runs[backend], dtype)
    same = adapter_checks.compare_logits(peft_logits, unsloth)
    assert adapter_checks.within_tolerance(same), same
    with model.disable_adapter():  # and the adapter matters far more than the tolerance
        base = adapter_checks.logits(model, adapter_checks.prompt_batch(tokenizer))
    assert not adapter_checks.within_tolerance(adapter_checks.compare_logits(peft_logits, base))


def test_both_backends_train_on_identical_tokens_with_the_same_settings(runs):
    peft, unsloth = (read_metrics(runs[b]) for b in ("peft", "unsloth"))
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
def test_qlora_trains_lora_layers_on_a_4bit_base(runs, backend, tmp_path):
    from safetensors.torch import load_file

    # no warm-up: with it, the only step runs at learning rate 0 and nothing trains
    result = train(backend, runs[backend].parent / "data", tmp_path / "qlora", "--load-in-4bit", "--max-steps", "1",
                   "--warmup-ratio", "0", "--samples", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = read_metrics(tmp_path / "qlora")
    sixteen = read_metrics(runs[backend])
    assert m["load_in_4bit"] is True and m["steps"] == 1 and math.isfinite(m["loss_history"][0]["loss"])
    # counted on the model that trained, not echoed from the flag: all 7 projections of each of the 30 decoder
    # layers are bitsandbytes 4-bit layers (the 16-bit run has none)
    assert m["parameters"]["linear_4bit_layers"] == 30 * 7 and sixteen["parameters"]["linear_4bit_layers"] == 0
    # and every LoRA layer on the 4-bit base trained: B starts at zero, so after one step it is non-zero only where
    # a gradient reached it. q/k/v and gate/up get theirs only through the 4-bit o_proj and down_proj: this fails
    # when a 4-bit layer passes no input gradient (bitsandbytes' CPU inference layout, taken during the eval before
    # training, did that: only the 60 o_proj/down_proj B matrices moved; quantization.keep_4bit_layers_trainable)
    adapter = load_file(tmp_path / "qlora" / "adapter_model.safetensors")
    lora_b = [name for name in adapter if "lora_B" in name]
    assert len(lora_b) == 30 * 7 and [name for name in lora_b if adapter[name].abs().max() == 0] == []


def test_bad_dataset_exits_2_naming_the_line_and_writes_nothing(tmp_path, smollm2_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "student", "content": "hi"}, {"role": "teacher", "content": "yo"}]}\n'
                   '{"messages": [{"role": "student", "content": "hi"}, {"role": "teacher"}]}\n')
    result = train("peft", bad, tmp_path / "out")
    assert result.returncode == 2
    assert "bad.jsonl:2: field 'messages[1].content'" in result.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_both_backends_losses_agree_within_the_parity_tolerance(runs):
    from llama_lora.run.compare import compare, load_run

    result = compare(load_run(runs["peft"]), load_run(runs["unsloth"]))
    assert result["fair"], result["mismatches"]
    assert result["loss_parity"]["steps"] == STEPS
    assert result["loss_parity"]["verdict"] == "consistent", result["loss_parity"]


@pytest.fixture(scope="module")
def controls(runs) -> dict[str, Path]:
    """PEFT runs of the same length with one training setting wrong: what a backend with a bug would record."""
    folders = {}
    for setting, flags in {"--learning-rate": ("--learning-rate", "2e-3"), "--lora-alpha": ("--lora-alpha", "8")}.items():
        folders[setting] = runs["peft"].parent / f"peft-{flags[0][2:]}"
        result = train("peft", runs["peft"].parent / "data", folders[setting], *flags, "--samples", "0")
        assert result.returncode == 0, result.stderr[-3000:]
    return folders


@pytest.mark.parametrize("setting", ["--learning-rate", "--lora-alpha"])
def test_another_learning_rate_or_lora_alpha_is_flagged_diverged_by_loss_parity(runs, controls, setting):
    """Negative control: twice the learning rate, or half the LoRA scale (alpha 8 for r=8 instead of 16), changes
    the losses of a 3-step run beyond the 16-bit parity tolerance, so a backend with such a bug cannot pass."""
    from llama_lora.run.compare import fairness, load_run, loss_parity

    control, unsloth = load_run(controls[setting]), load_run(runs["unsloth"])
    assert [m["setting"] for m in fairness(control, unsloth)] == [setting]
    parity = loss_parity(control, unsloth)
    assert parity["precision"] == "16-bit" and parity["verdict"] == "diverged", parity
    assert parity["per_step"][0]["relative_difference"] < parity["tolerance"]["max"]  # step 1: adapter still B = 0


def test_a_run_with_another_max_length_is_flagged_as_unfair(runs, tmp_path):
    short = tmp_path / "peft-short"
    # the fixture's data; samples are not what this test is about
    result = train("peft", runs["peft"].parent / "data", short, "--max-seq-length", "512", "--samples", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    compared = subprocess.run([sys.executable, "compare_backends.py", str(runs["unsloth"]), str(short),
                               "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True,
                              check=False)
    assert compared.returncode == 3, compared.stdout + compared.stderr
    report = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert {"setting": "--max-seq-length", "a": 2048, "b": 512} in report["mismatches"]
    assert report["verdict"].startswith("no winner declared")
