"""`use_adapter.py verify`: every export of a run is compared with the adapter itself, and broken exports fail.

The run here is the embedded SmolLM2 cut to two layers (real weights and tokenizer, exports in seconds) with a real
PEFT adapter whose A and B are random, so the adapter moves the logits a lot; the prompts come from the bundled
data's eval split. A trained run of the whole model is verified in tests/e2e/test_verify_trained_run.py.
Planted faults: a LoRA GGUF whose B is zero, a LoRA applied at scale 0 (a target declared by the test), a Modelfile
whose template differs from the training template, and a "merged" folder holding the base model alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO, load_script, make_run

from llama_lora.export import gguf, gguf_writer, targets, tolerances
from llama_lora.export.logit_agreement import Agreement, judge
from llama_lora.export.tolerances import TOLERANCES, Tolerance
from llama_lora.export.verify import verify
from llama_lora.use.inference import read_run

use_adapter = load_script("use_adapter.py")
COUNT, NEW_TOKENS = 2, 4


# --- the figures and the verdict ------------------------------------------------------------------------------------

def test_agreement_reads_exact_lost_and_doubled_adapters_apart():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, (5, 50))
    tuned = base + rng.normal(0, 1, (5, 50))
    for export, kept in [(tuned, 1.0), (base, 0.0), (base + 2 * (tuned - base), 2.0)]:
        agreement = Agreement()
        agreement.add(export, tuned, base)
        figures = agreement.figures()
        assert figures["effect_kept"] == pytest.approx(kept)
        assert figures["positions"] == 5
        assert figures["mean_abs_diff"] == pytest.approx(np.abs(export - tuned).mean())
        assert figures["max_abs_diff"] == pytest.approx(np.abs(export - tuned).max())
    assert figures["top1_agreement"] < 1  # doubling the adapter changes some top tokens
    noisy = Agreement()  # rounding noise of the export's own barely moves the effect kept
    noisy.add(tuned + rng.normal(0, 0.1, tuned.shape), tuned, base)
    assert noisy.figures()["effect_kept"] == pytest.approx(1, abs=0.05)


def test_judge_names_every_limit_an_export_breaks():
    limits = Tolerance("q8_0", mean_rel_diff=0.01, top1_agreement=0.95, effect_kept=0.1)
    good = {"positions": 1000, "mean_rel_diff": 0.005, "top1_agreement": 0.99, "effect_kept": 0.97}
    assert judge(good, limits).passed
    bad = judge({"positions": 1000, "mean_rel_diff": 0.02, "top1_agreement": 0.9, "effect_kept": 0.0}, limits)
    assert not bad.passed and len(bad.failures) == 3
    assert "keeps 0.00 of the adapter's effect" in bad.failures[2] and "q8_0" in bad.failures[2]
    assert not judge({**good, "effect_kept": float("nan")}, limits).passed


def test_top1_allows_the_limits_share_of_positions_rounded_up_to_a_whole_one():
    limits = Tolerance("f16", mean_rel_diff=0.01, top1_agreement=0.983, effect_kept=0.05)
    figures = {"mean_rel_diff": 0.001, "effect_kept": 1.0}
    # 1.7% of 76 positions is 1.3: two may differ, three may not
    assert judge({**figures, "positions": 76, "top1_agreement": 74 / 76}, limits).passed
    assert not judge({**figures, "positions": 76, "top1_agreement": 73 / 76}, limits).passed
    # over many positions the share is the limit itself
    assert judge({**figures, "positions": 1000, "top1_agreement": 0.983}, limits).passed
    assert not judge({**figures, "positions": 1000, "top1_agreement": 0.982}, limits).passed


def test_each_tolerance_is_the_rule_applied_to_the_committed_measurements():
    record = json.loads((REPO / tolerances.RECORD).read_text())
    measured: dict[str, list[dict]] = {}
    for model in record["models"].values():
        for row in model["targets"]:
            measured.setdefault(row["precision"], []).append(row["figures"])
    assert {p: tolerances.derive(p, spreads) for p, spreads in measured.items()} == TOLERANCES
    # the markdown beside it shows the same limits
    assert (REPO / tolerances.RECORD).with_suffix(".md").is_file()


def test_every_gguf_type_and_every_precision_a_target_produces_has_a_tolerance():
    from llama_lora.export.gguf_types import GGUF_TYPES

    assert set(GGUF_TYPES) | {"bf16", "f32"} <= set(TOLERANCES)
    assert all(0 < t.effect_kept < 1 for t in TOLERANCES.values())  # an adapter scaled by 0 always fails


# --- a run and its exports ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_2layers) -> Path:
    folder = tmp_path_factory.mktemp("verify") / "run"
    make_run(folder, str(smollm2_2layers), seed=3, dataset=str(REPO / "data" / "teacher_student"))
    return folder


@pytest.fixture(scope="module")
def verified(run):
    """verify over every default target, each built by verify itself."""
    lines: list[str] = []
    result = verify(read_run(run), targets.chosen(None, targets.Given()), targets.Given(), None, COUNT, NEW_TOKENS,
                    say=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def run_export(run, smollm2_2layers, tmp_path_factory) -> Path:
    """`gguf RUN --types f16`: base GGUF, LoRA GGUF, Modelfile."""
    out = tmp_path_factory.mktemp("run-export")
    gguf.export(run, out, ["f16"], smollm2_2layers, None, None)
    return out


def check(run: Path, names: str, given: targets.Given):
    return verify(read_run(run), targets.chosen(names, given), given, None, COUNT, NEW_TOKENS, say=lambda line: None)


def test_every_default_target_passes_on_the_adapter_it_was_built_from(verified):
    result, _ = verified
    assert [o.target for o in result.outcomes] == ["merged", "gguf-lora", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m",
                                                   "ollama-template"]
    assert {o.target: o.status for o in result.outcomes} == dict.fromkeys(
        [o.target for o in result.outcomes], "passed"), [o.failures for o in result.outcomes]
    by_name = {o.target: o for o in result.outcomes}
    assert by_name["gguf-lora"].precision == "f16" and by_name["gguf-q4_k_m"].precision == "q4_k_m"
    assert by_name["merged"].precision == "bf16"
    for outcome in result.outcomes[:-1]:
        assert outcome.figures["positions"] == sum(len(p.scored_ids) for p in result.prompts)
        assert abs(outcome.figures["effect_kept"] - 1) <= TOLERANCES[outcome.precision].effect_kept
        assert len(outcome.continuations) == COUNT
    assert by_name["ollama-template"].figures == {"prompts": COUNT, "identical": COUNT, "tool_prompts_left_out": 0}


def test_prompts_are_the_runs_held_out_rows_cut_where_training_supervised(verified):
    result, _ = verified
    assert [p.where.rsplit("/", 1)[-1] for p in result.prompts] == ["eval.jsonl:1", "eval.jsonl:18"]
    for prompt in result.prompts:
        assert prompt.messages[-1]["role"] == "user" and prompt.answer_ids
        assert prompt.scored_ids[:len(prompt.prompt_ids)] == prompt.prompt_ids


def test_each_target_gets_a_progress_line_before_and_a_verdict_line_after(verified):
    result, lines = verified
    for number, outcome in enumerate(result.outcomes, 1):
        ours = [line for line in lines if line.startswith(f"[{number}/{len(result.outcomes)}] {outcome.target}: ")]
        assert "building it (" in ours[0] and ours[1].split(": ", 1)[1].startswith("PASSED (")


def test_a_lora_gguf_whose_b_is_zero_fails_on_the_adapter_effect(run, run_export, smollm2_2layers, tmp_path):
    from safetensors.torch import load_file, save_file

    broken_run = tmp_path / "zero-b"
    shutil.copytree(run, broken_run)
    weights = load_file(broken_run / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()}, broken_run / "adapter_model.safetensors")
    export = tmp_path / "export"
    shutil.copytree(run_export, export)  # the same base GGUF and Modelfile, the LoRA GGUF written from the broken run
    lora = targets.read_modelfile(export / "Modelfile").adapter
    written = gguf_writer.export_adapter(broken_run, smollm2_2layers, tmp_path, "run")
    shutil.move(written, lora)
    result = check(run, "gguf-lora", targets.Given(gguf=(export,)))
    outcome = result.outcomes[0]
    assert outcome.status == "failed" and outcome.source == str(export / "Modelfile")
    assert abs(outcome.figures["effect_kept"]) < 0.01
    assert any("keeps 0.00 of the adapter's effect" in failure for failure in outcome.failures)


def test_a_template_that_differs_from_trainings_fails_at_the_first_different_token(run, run_export, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(run_export, broken)
    modelfile = (broken / "Modelfile").read_text()
    (broken / "Modelfile").write_text(modelfile.replace("<|im_start|>{{ .Role }}\n", "<|im_start|>{{ .Role }}: "))
    outcome = check(run, "ollama-template", targets.Given(gguf=(broken,))).outcomes[0]
    assert outcome.status == "failed" and outcome.figures["identical"] == 0
    # <|im_start|> system : ... where training had <|im_start|> system \n
    assert outcome.failures[0].endswith("eval.jsonl:1: token 2 is ':' where training had '\\n'")


def test_a_merged_folder_without_the_adapter_fails(run, smollm2_2layers, tmp_path):
    outcome = check(run, "merged", targets.Given(merged=smollm2_2layers)).outcomes[0]
    assert outcome.status == "failed" and outcome.precision == "f32"
    assert outcome.figures["effect_kept"] == pytest.approx(0, abs=1e-4)


def test_a_declared_target_is_found_checked_listed_and_documented(run, run_export, monkeypatch):
    """One declaration: here the run's GGUF + LoRA with the LoRA applied at scale 0, a planted fault."""
    from llama_lora.export import candidates

    def scaled_by_zero(modelfile: Path):
        parsed = targets.read_modelfile(modelfile)
        return candidates.GgufCandidate(parsed.model, parsed.adapter, targets.CONTEXT, lora_scale=0.0)

    planted = targets.Target("gguf-lora-off", "the LoRA GGUF applied at scale 0", "(a test)", "logits",
                             build=lambda workshop: workshop.run_gguf, find=targets._given_run_modelfile,
                             load=scaled_by_zero)
    monkeypatch.setattr(targets, "TARGETS", {**targets.TARGETS, planted.name: planted})
    assert planted in targets.chosen(None, targets.Given()) and targets.chosen("gguf-lora-off", targets.Given()) == [
        planted]
    assert "| `gguf-lora-off` | the LoRA GGUF applied at scale 0 |" in targets.docs_table()
    result = check(run, "gguf-lora,gguf-lora-off", targets.Given(gguf=(run_export,)))
    assert [(o.target, o.status) for o in result.outcomes] == [("gguf-lora", "passed"), ("gguf-lora-off", "failed")]
    assert abs(result.outcomes[1].figures["effect_kept"]) < 0.01


def test_the_docs_show_the_registrys_targets_and_the_tolerances_in_force():
    docs = (REPO / "docs" / "using-adapters.md").read_text()
    assert targets.docs_table() in docs
    assert tolerances.docs_table() in docs and tolerances.RECORD.rsplit("/", 1)[1].replace(".json", ".md") in docs


# --- the command ----------------------------------------------------------------------------------------------------

def invoke(*args) -> object:
    return CliRunner().invoke(use_adapter.cli, [str(a) for a in args])


def test_the_command_writes_its_reports_and_the_record_and_exits_1_on_a_failure(run, run_export, smollm2_2layers,
                                                                                tmp_path):
    from llama_lora.run import run_record

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    good = invoke("verify", folder, "--gguf", run_export, "--targets", "gguf-lora,ollama-template", "--count", COUNT,
                  "--max-new-tokens", NEW_TOKENS)
    assert good.exit_code == 0, good.output
    assert f"[1/2] gguf-lora: checking {run_export / 'Modelfile'}" in good.output and "PASSED: report in" in good.output
    report = json.loads((folder / "verify.json").read_text())
    assert report["passed"] and [t["status"] for t in report["targets"]] == ["passed", "passed"]
    assert "| `gguf-lora` | **passed** | f16 |" in (folder / "verify.md").read_text()
    assert run_record.read(folder).verify.targets == {"gguf-lora": "passed", "ollama-template": "passed"}

    failed = invoke("verify", folder, "--merged", smollm2_2layers, "--targets", "merged",
                    "--count", COUNT, "--max-new-tokens", NEW_TOKENS)
    assert failed.exit_code == 1, failed.output
    assert "[1/1] merged: FAILED" in failed.output and "FAILED: report in" in failed.output
    assert run_record.read(folder).verify.passed is False
    assert "## What failed" in (folder / "verify.md").read_text()


def test_the_command_compares_on_a_prompt_file_when_given_one(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Why is the sky blue?\n\nName a colour.\n")
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    result = invoke("verify", folder, "--prompts", prompts, "--targets", "gguf-lora", "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output
    record = json.loads((folder / "verify.json").read_text())
    assert [p["where"] for p in record["prompts"]] == [f"{prompts} prompt 1", f"{prompts} prompt 2"]
    # a prompt file has no answers: each is scored on the reference's own continuation
    assert all(p["scored_tokens"] > p["prompt_tokens"] for p in record["prompts"])


@pytest.mark.parametrize("args, message", [
    (["verify", "no/such/run"], "no such run folder"),
    (["verify", "{run}", "--targets", "merged,nope"], "--targets 'merged,nope': expected a comma-separated list of "
                                                      "merged, gguf-lora"),
    (["verify", "{run}", "--prompts", "missing.txt", "--targets", "merged"], "cannot read it"),
])
def test_bad_input_is_a_usage_error_with_exit_2(run, args, message):
    result = invoke(*[a.format(run=run) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow  # a 128k-token vocabulary takes a while to write and to load
def test_the_llama31_modelfile_gives_the_training_prompt_tokens_in_llama_cpp(tmp_path, llama3_tokenizer):
    """Llama 3.1's prompt starts with <|begin_of_text|>, which the TEMPLATE leaves to llama.cpp (the GGUF says to add
    BOS): the tokens must still be training's, system prompt or not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_lora.data.chat_template import ensure_chat_template
    from llama_lora.export.candidates import TemplateCandidate
    from llama_lora.use.inference import chat_ids

    tokenizer = llama3_tokenizer.__class__.from_pretrained(llama3_tokenizer.name_or_path)
    ensure_chat_template(tokenizer)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer))
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    gguf.export(tmp_path / "model", tmp_path / "out", ["f16"], None, None, None)
    candidate = TemplateCandidate(tmp_path / "out" / "Modelfile")
    for messages in ([{"role": "user", "content": "Why does ice float?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Density."}, {"role": "user", "content": "And?"}]):
        trained = chat_ids(tokenizer, messages)
        assert trained[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        assert candidate.prompt_ids(messages) == trained
    candidate.close()
