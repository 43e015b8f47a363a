"""The tokenizer must not be larger than the model's embeddings: the H100 benchmark's Unsloth adapters carried
full embedding and LM-head matrices because the bundled Llama 3 tokenizer had one entry (Llama 3.2 Vision's
`<|image|>`) more than Llama 3.1's 128,256 rows. Reproduced here without a GPU on a tiny Llama 3.1-vocabulary
model: the resize Unsloth does is what makes PEFT save the matrices."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from llama_lora.backend import BACKENDS, Backend
from llama_lora.model.llama3_tokenizer import LLAMA31_VOCAB_SIZE, bundled_tokenizer_dir, llama31_tokenizer_dir
from llama_lora.train.cli import build_cli
from llama_lora.use.adapter_checks import vllm_warnings


@pytest.fixture(scope="module")
def tiny_llama31(tmp_path_factory) -> Path:
    """A 2-layer model with Llama 3.1's vocabulary (128,256 rows), saved with the bundled 128,257-entry tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama31")
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=LLAMA31_VOCAB_SIZE, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_tokenizer_dir()).save_pretrained(folder)
    return folder


def test_the_bundled_tokenizer_has_one_vision_token_more_than_llama31_and_the_cut_one_does_not():
    from transformers import AutoTokenizer

    bundled = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    cut = AutoTokenizer.from_pretrained(llama31_tokenizer_dir())
    assert len(bundled) == 128257 and bundled.convert_ids_to_tokens(128256) == "<|image|>"
    assert len(cut) == LLAMA31_VOCAB_SIZE == 128256
    text = "Why is the sky blue? <|eot_id|> 1. Rayleigh scattering, été."
    assert cut(text).input_ids == bundled(text).input_ids  # every other id is unchanged
    assert (cut.bos_token, cut.eos_token, cut.pad_token_id) == ("<|begin_of_text|>", "<|end_of_text|>", 128004)


def test_a_tokenizer_larger_than_the_embeddings_is_refused_before_anything_loads(tiny_llama31, tiny_dataset,
                                                                                 tmp_path):
    def load(cfg, path, trust_remote_code):
        raise AssertionError("weights must not load")

    out = tmp_path / "run"
    cli = build_cli(Backend(BACKENDS["peft"], load=load))
    result = CliRunner().invoke(cli, ["--model", str(tiny_llama31), "--dataset", str(tiny_dataset),
                                      "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert ("its tokenizer has 128,257 entries but the model's embeddings have 128,256 rows (vocab_size), so ids "
            "from 128,256 on (128256 '<|image|>') have no embedding") in result.stderr
    assert "Traceback" not in result.stderr and not out.exists() and not out.with_name(".run.partial").exists()


def _adapter_names(folder: Path) -> list[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        return list(f.keys())


@pytest.mark.parametrize("resized", [False, True])
def test_resized_embeddings_put_full_matrices_in_the_adapter_and_check_flags_them(tiny_llama31, tmp_path, resized):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama31)
    if resized:  # what Unsloth's loader does when len(tokenizer) > embedding rows
        model.resize_token_embeddings(128257)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "adapter"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model.save_pretrained(out)
    said = any("save_embedding_layers" in str(w.message) for w in caught)
    full = [n for n in _adapter_names(out) if "lora_" not in n]
    problems = vllm_warnings(out)
    if resized:
        assert said and sorted(n.rsplit(".", 2)[-2] for n in full) == ["embed_tokens", "lm_head"]
        assert any(p.startswith("holds the full ") and "the embeddings were resized in training" in p
                   for p in problems), problems
    else:
        assert not said and full == [] and problems == []
        assert json.loads((out / "adapter_config.json").read_text())["target_modules"]
