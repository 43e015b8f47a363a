"""After training: generate, merge, swap and check work on run folders, and bad input exits 2.

The run folders here are built in-process in seconds: the embedded SmolLM2 with a real PEFT LoRA adapter whose
B matrices are random (init_lora_weights=False), so the adapter visibly changes the model without training,
plus the records a training run writes (config.yaml, metrics.json, tokenizer). Trained adapters of both
backends are covered in test_end_to_end.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import load_script, make_run

use_adapter = load_script("use_adapter.py")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, smollm2_path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return make_run(root / "a", smollm2_path, seed=1), make_run(root / "b", smollm2_path, seed=2)


def invoke(*args: str):
    return CliRunner().invoke(use_adapter.cli, [str(a) for a in args], catch_exceptions=False)


def test_generate_answers_each_prompt_with_the_chat_template_and_says_why_it_stopped(two_runs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"What is 2 + 2?"\n{"messages": [{"role": "user", "content": "Name a colour."}]}\n')
    result = invoke("generate", two_runs[0], "-p", "Hello!", "--prompts-file", prompts, "--max-new-tokens", "5")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith(">>> ")] == [
        ">>> Hello!", ">>> What is 2 + 2?", ">>> Name a colour."]
    assert result.output.count("[5 tokens, cut off at --max-new-tokens]") + result.output.count("ended its turn") == 3


def test_greedy_generation_matches_a_plain_transformers_generate_of_base_plus_adapter(two_runs, smollm2_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_lora.use import inference

    model, tokenizer = inference.load_tuned(inference.read_run(two_runs[0]))
    ids = inference.chat_ids(tokenizer, [{"role": "user", "content": "Why is the sky blue?"}])
    ours = inference.generate(model, tokenizer, [ids], inference.Sampling(max_new_tokens=8))[0]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32),
                                      two_runs[0]).eval()
    out = plain.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    expected = AutoTokenizer.from_pretrained(two_runs[0]).decode(out[0, len(ids):], skip_special_tokens=True)
    assert ours.text == expected.strip() and ours.tokens == 8 and not ours.stopped


def test_sampling_is_reproducible_with_a_seed(two_runs):
    args = ("generate", two_runs[0], "-p", "Tell me a story.", "--temperature", "1.0", "--max-new-tokens", "6",
            "--no-stream", "--seed", "3")
    first, second = (invoke(*args).output for _ in range(2))
    answer = first[first.index(">>> "):]  # after the weight-loading progress bar
    assert answer == second[second.index(">>> "):] and "[" in answer


def test_chat_keeps_the_history_so_the_second_answer_sees_the_first_turn(two_runs, monkeypatch):
    from llama_lora.use import inference

    shown: list[str] = []  # every prompt the model was given, as rendered text
    real_generate = inference.generate

    def spy(model, tokenizer, prompts, *args, **kwargs):
        shown.append(tokenizer.decode(prompts[0]))
        return real_generate(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(inference, "generate", spy)
    typed = "My name is Ada.\nWhat is my name?\n/system Answer in French.\nHello!\n/reset\nBye.\n/exit\nNever read.\n"
    result = CliRunner().invoke(use_adapter.cli, ["chat", str(two_runs[0]), "--max-new-tokens", "3"], input=typed,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(shown) == 4  # four user turns before /exit; nothing after it
    first, second, after_system, after_reset = shown
    # the second prompt is the first one, its answer, and the new turn, in the run's chat template
    assert "My name is Ada." in second and second.index("My name is Ada.") < second.index("What is my name?")
    assert second.startswith(first) and second.count("<|im_start|>assistant") == 2
    # a new system prompt starts a new conversation with it; /reset keeps the system prompt and forgets the turns
    assert "Answer in French." in after_system and "Ada" not in after_system
    assert "Answer in French." in after_reset and "Hello!" not in after_reset and "Bye." in after_reset
    assert "[conversation reset]" in result.output


def test_temperature_reaches_the_sampler(two_runs):
    """Near zero, sampling picks the greedy tokens; very high, it leaves them. Were --temperature ignored (sampling
    at the default 1.0), the near-zero answer would not be the greedy one."""
    def answer(temperature: str) -> str:
        output = invoke("generate", two_runs[0], "-p", "Tell me a story.", "--max-new-tokens", "8", "--no-stream",
                        "--seed", "3", "--temperature", temperature).output
        return output[output.index(">>> "):]

    greedy = answer("0")
    assert answer("0.001") == greedy and answer("100") != greedy


def test_merged_model_matches_base_plus_adapter_within_the_bound(two_runs, tmp_path):
    from transformers import AutoTokenizer

    result = invoke("merge", two_runs[0], tmp_path / "merged", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "merge.json"} <= {
        p.name for p in merged.iterdir()}
    report = json.loads((merged / "merge.json").read_text())
    # float32 merge: W + scale * B @ A computed once instead of per forward; only float rounding differs
    assert report["max_abs_diff"] < 1e-3 and report["top1_agreement"] == 1.0
    assert AutoTokenizer.from_pretrained(merged).chat_template  # serves with the same template
    assert not list(tmp_path.glob(".merged*")), "no staging folder left behind"


def test_bf16_merge_stays_within_bf16_rounding_of_base_plus_adapter(two_runs, tmp_path):
    result = invoke("merge", two_runs[0], tmp_path / "merged16")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "merged16" / "merge.json").read_text())
    # bf16 keeps 8 significant bits (0.4% per value); compounded over 30 layers it moves logits of scale ~30 by
    # well under 5% of that scale, while the adapter itself moves them by far more (next test file's check)
    assert report["dtype"] == "bfloat16" and report["max_abs_diff"] < 0.05 * report["max_abs_logit"]
    assert report["top1_agreement"] > 0.9
    again = invoke("merge", two_runs[0], tmp_path / "merged16")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_two_adapters_switch_on_one_base_without_reloading_it(two_runs, smollm2_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llama_lora.use import inference
    from llama_lora.use.adapter_checks import logits, prompt_batch

    info = inference.read_run(two_runs[0])
    model = inference.load_adapters(info, {"a": two_runs[0], "b": two_runs[1]})
    prompts = prompt_batch(inference.load_tokenizer(two_runs[0]))[:1]
    embedding = model.get_base_model().get_input_embeddings().weight
    seen = {}
    for name in ("a", "b", None, "a"):
        with inference.active(model, name):
            seen[name] = logits(model, prompts)[0]
    assert model.get_base_model().get_input_embeddings().weight is embedding  # the base never reloaded
    for name, folder in (("a", two_runs[0]), ("b", two_runs[1])):
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32),
                                          folder).eval()
        assert torch.allclose(seen[name], logits(alone, prompts)[0], atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    assert torch.allclose(seen[None], logits(base, prompts)[0], atol=1e-4)
    assert (seen["a"] - seen["b"]).abs().max() > 0.1  # the two adapters really differ


def test_swap_command_answers_with_each_adapter_and_the_base(two_runs):
    result = invoke("swap", *two_runs, "-p", "Hi", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert "[a]" in result.output and "[b]" in result.output and "[base model, adapters disabled]" in result.output
    assert "Base weights loaded once and shared by all 2 adapters: yes" in result.output


def test_check_warns_about_what_vllm_will_not_load(tmp_path, smollm2_path):
    from llama_lora.use.adapter_checks import vllm_warnings

    plain = make_run(tmp_path / "plain", smollm2_path, seed=0)
    assert vllm_warnings(plain) == []
    big = make_run(tmp_path / "big", smollm2_path, seed=0, r=32, modules_to_save=["lm_head"])
    warnings = vllm_warnings(big)
    assert any("rank 32" in w and "--max-lora-rank" in w for w in warnings)
    assert any("modules_to_save" in w for w in warnings) and any("lm_head" in w for w in warnings)
    result = invoke("check", big)
    assert result.exit_code == 0 and "3 problem(s)" in result.output and "plain PEFT: loads" in result.output


@pytest.mark.parametrize("args, message", [
    (["generate", "no/such/run", "-p", "hi"], "no such run folder"),
    (["generate", "{empty}", "-p", "hi"], "no adapter_config.json"),
    (["generate", "{run}"], "give --prompt TEXT or --prompts-file FILE"),
    (["generate", "{run}", "--prompts-file", "{bad}"], "bad.jsonl:2: expected a string"),
    (["generate", "{run}", "--prompts-file", "{blank}"], "no prompt in it"),
    (["generate", "{run}", "--prompts-file", "missing.txt"], "cannot read it"),
    (["swap", "{run}", "{empty}"], "no adapter_config.json"),
])
def test_bad_folder_or_prompt_file_is_a_usage_error_with_exit_2(two_runs, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    (tmp_path / "blank.txt").write_text("\n  \n")
    names = {"run": two_runs[0], "empty": tmp_path / "empty", "bad": tmp_path / "bad.jsonl",
             "blank": tmp_path / "blank.txt"}
    result = CliRunner().invoke(use_adapter.cli, [a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_qlora_run_merges_into_the_dequantized_nf4_base_it_trained_against(two_runs, tmp_path):
    import shutil

    import yaml

    qlora = tmp_path / "qlora"
    shutil.copytree(two_runs[0], qlora)
    config = yaml.safe_load((qlora / "config.yaml").read_text())
    (qlora / "config.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))
    result = invoke("merge", qlora, tmp_path / "merged", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert report["from_4bit"] and report["compared_with"] == "base (NF4) + adapter in float32"
    # The merged weights are the dequantized NF4 values plus the LoRA delta. What remains is bitsandbytes' CPU
    # 4-bit kernel, which rounds its matmuls to bf16 even with a float32 compute dtype (measured: NF4 base vs its
    # dequantized copy, no adapter, differ by 0.76 in the logits; this merge by 1.2 of 37.5)
    assert report["max_abs_diff"] < 0.05 * report["max_abs_logit"] and report["top1_agreement"] > 0.95
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
