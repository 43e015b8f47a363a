"""GGUF export: every file read back with gguf.GGUFReader, values checked against their sources.

The reference for layout and permutation is llama.cpp's own converter output: the GGUF the embedded SmolLM2
ships in was written by convert_hf_to_gguf.py, so our f16 export of the same weights must match it.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TOKENIZER_FILES

from llama_lora.export import gguf_writer, ollama_template
from llama_lora.export.gguf import export_gguf

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@functools.lru_cache(maxsize=8)
def reader(path: Path) -> gguf.GGUFReader:
    """Parsing a 49k-token vocabulary takes seconds: read each file once."""
    return gguf.GGUFReader(path)


def tensors(path: Path) -> dict:
    return {t.name: t for t in reader(path).tensors}


def fields(path: Path) -> dict:
    return {key: field.contents() for key, field in reader(path).fields.items()}


def hf_weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(folder / "model.safetensors").items()}


@pytest.fixture(scope="module")
def exported(smollm2_2layers, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {t: gguf_writer.export_model(smollm2_2layers, out, t, "SmolLM2-test") for t in ("f16", "q8_0")}


def make_adapter(base: Path, folder: Path, use_rslora: bool = False):
    """A real PEFT LoRA adapter on `base`, with non-zero B so that it changes the model; returns the PEFT model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, use_rslora=use_rslora))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(folder)
    return peft_model


# --- the model GGUF -------------------------------------------------------------------------------------------

def test_f16_model_matches_llama_cpp_converter_output(exported, smollm2_2layers):
    """Same names, shapes, and values (to f16 precision) as llama.cpp's converter wrote for these weights."""
    from llama_lora.model.assets import SMOLLM2_GGUF, SMOLLM2_PACKAGE, package_dir

    reference = tensors(package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF)
    ours = tensors(exported["f16"])
    assert set(ours) == {n for n in reference if not n.startswith("blk.") or int(n.split(".")[1]) < 2}
    for name, tensor in ours.items():
        assert list(tensor.shape) == list(reference[name].shape), name
        expected_type = "F32" if name.endswith("norm.weight") else "F16"
        assert tensor.tensor_type.name == expected_type, name
    # q and k carry llama.cpp's RoPE row permutation; v and the norms do not
    for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.attn_v.weight", "output_norm.weight",
                 "token_embd.weight"]:
        want = gguf.quants.dequantize(reference[name].data, reference[name].tensor_type)
        got = np.asarray(ours[name].data, dtype=np.float32)
        # the reference is 4/8-bit, and our weights were dequantized from it: equal up to f16 rounding
        np.testing.assert_allclose(got, want, atol=np.abs(want).max() / 1024, err_msg=name)


def test_unpermuting_the_written_q_and_k_gives_back_the_hf_tensors(exported, smollm2_2layers):
    hf = hf_weights(smollm2_2layers)
    ours = tensors(exported["f16"])
    config = json.loads((smollm2_2layers / "config.json").read_text())
    q = np.asarray(ours["blk.1.attn_q.weight"].data, dtype=np.float32)
    k = np.asarray(ours["blk.1.attn_k.weight"].data, dtype=np.float32)
    source_q = hf["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_allclose(gguf_writer.unpermute_qk(q, config["num_attention_heads"]), source_q, atol=4e-3)
    np.testing.assert_allclose(gguf_writer.unpermute_qk(k, config["num_key_value_heads"]),
                               hf["model.layers.1.self_attn.k_proj.weight"], atol=4e-3)
    assert not np.allclose(q, source_q, atol=4e-3)  # the permutation really moved rows


def test_q8_0_dequantizes_close_to_the_source(exported, smollm2_2layers):
    hf = hf_weights(smollm2_2layers)
    ours = tensors(exported["q8_0"])
    assert ours["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert ours["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name, hf_name in [("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                          ("token_embd.weight", "model.embed_tokens.weight")]:
        got = gguf.quants.dequantize(ours[name].data, ours[name].tensor_type)
        want = hf[hf_name]
        assert got.shape == want.shape
        # q8_0: one f16 scale per 32 values, 127 steps each side -> error about half a step of the block maximum
        # (plus the scale's own f16 rounding, up to 127 * 2^-11 of a step)
        step = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True) / 127
        error = np.abs(got - want).reshape(-1, 32)
        assert np.all(error <= 0.6 * step + 1e-7), (name, float((error / step).max()))
    assert exported["q8_0"].stat().st_size < 0.6 * exported["f16"].stat().st_size


def test_model_metadata_and_tokenizer_match_llama_cpp(exported):
    from llama_lora.model.assets import SMOLLM2_GGUF, SMOLLM2_PACKAGE, package_dir

    reference = fields(package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF)
    ours = fields(exported["f16"])
    assert ours["general.architecture"] == "llama" and ours["general.type"] == "model"
    assert ours["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields(exported["q8_0"])["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert ours["llama.block_count"] == 2
    same = ["llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"]
    for key in same:
        assert ours[key] == reference[key], key
    assert ours["tokenizer.ggml.pre"] == "smollm" and ours["tokenizer.ggml.eos_token_id"] == 2
    assert exported["f16"].name == "SmolLM2-test-35M-F16.gguf"  # llama.cpp's <Name>-<Size>-<Type> naming


@pytest.mark.slow  # a 128k-token vocabulary takes a while to write and parse
def test_llama31_architecture_gets_rope_factors_untied_output_and_llama3_tokenizer(tmp_path, llama3_tokenizer):
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llama_lora.data.chat_template import LLAMA31_CHAT_TEMPLATE, ensure_chat_template

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(llama3_tokenizer), max_position_embeddings=131072,
                         rope_parameters=rope, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer = llama3_tokenizer.__class__.from_pretrained(llama3_tokenizer.name_or_path)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(tmp_path / "model")

    path = gguf_writer.export_model(tmp_path / "model", tmp_path, "f16", "Llama-3.1-tiny")
    ours, meta = tensors(path), fields(path)
    assert {"rope_freqs.weight", "output.weight", "token_embd.weight"} <= set(ours)
    assert ours["rope_freqs.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    loaded = AutoConfig.from_pretrained(tmp_path / "model")
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](loaded, "cpu")
    plain = 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16)
    # llama.cpp divides each frequency by its factor: plain / factor must give Llama 3.1's scaled frequencies
    np.testing.assert_allclose(plain / np.asarray(ours["rope_freqs.weight"].data), scaled.numpy(), rtol=1e-5)
    assert meta["llama.rope.freq_base"] == 500000.0 and meta["llama.context_length"] == 131072
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.bos_token_id"] == 128000 and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.chat_template"] == LLAMA31_CHAT_TEMPLATE
    types = meta["tokenizer.ggml.token_type"]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert types[eot] == gguf.TokenType.CONTROL and types[1000] == gguf.TokenType.NORMAL


# --- k-quants through llama.cpp's quantizer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama31_shaped(tmp_path_factory, smollm2_path) -> Path:
    """Llama 3.1's architecture at a small size with random weights: every row 256 or 768 wide, so each weight can take
    a k-quant (SmolLM2's tokenizer keeps the vocabulary, and so the test, small)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, max_position_embeddings=131072, rope_parameters=rope,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama31-shaped")
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(smollm2_path) / name, folder / name)
    return folder


def test_q4_k_m_of_a_llama31_shaped_model_stores_every_weight_as_a_k_quant_and_answers(llama31_shaped, tmp_path):
    from transformers import AutoModelForCausalLM

    from llama_lora.export.gguf_runtime import GgufModel
    from llama_lora.export.logit_agreement import Agreement
    from llama_lora.export.tolerances import TOLERANCES

    result = run_command(llama31_shaped, "--out", tmp_path / "out", "--types", "q4_k_m", "--name", "Shaped")
    assert result.exit_code == 0, result.output
    assert "llama.cpp stored" not in result.output  # nothing fell back
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "Shaped-27M-Q4_K_M.gguf"]  # 2 x 12.6M embeddings
    path = tmp_path / "out" / "Shaped-27M-Q4_K_M.gguf"
    assert fields(path)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    stored = {t.name: t.tensor_type.name for t in reader(path).tensors}
    assert {kind for name, kind in stored.items() if not name.endswith("norm.weight")} - {"F32"} <= {"Q4_K", "Q6_K"}
    assert stored["blk.0.attn_q.weight"] == "Q4_K" and stored["output.weight"] == "Q6_K"

    ids = [1, 504, 3458, 314, 253, 1345, 30, 2]
    model = GgufModel(path)
    answer = model.greedy(ids, 6, stops=[])
    assert len(answer) == 6 and all(0 <= token < 49152 for token in answer)
    reference = AutoModelForCausalLM.from_pretrained(llama31_shaped, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
    agreement = Agreement()
    agreement.add(model.logits(ids), expected, expected)
    assert agreement.figures()["mean_rel_diff"] <= TOLERANCES["q4_k_m"].mean_rel_diff


def test_q4_k_m_of_smollm2_says_which_weights_fell_back_and_why(smollm2_2layers, tmp_path):
    from llama_lora.export import gguf_quantize

    f16 = gguf_writer.export_model(smollm2_2layers, tmp_path, "f16", "Smol")
    quantized = gguf_quantize.quantize(f16, tmp_path / "q.gguf", gguf.LlamaFileType.MOSTLY_Q4_K_M)
    # per layer, every weight that reads the 576-wide hidden state (q, k, v, o, gate, up); down_proj reads 1536
    assert len(quantized.fallbacks) == 2 * 6
    assert {(f.columns, f.block) for f in quantized.fallbacks} == {(576, 256)}
    assert {f.tensor.split(".")[2] for f in quantized.fallbacks} == {"attn_q", "attn_k", "attn_v", "attn_output",
                                                                    "ffn_gate", "ffn_up"}
    # q4_k_m keeps attn_v at q6_k in some layers (the last of two here), and a q6_k that cannot be falls back to q8_0
    assert {f.tensor for f in quantized.fallbacks if f.used == "q8_0"} == {"blk.1.attn_v.weight"}
    assert quantized.fallback_summary() == "12 weights (rows of 576 not a multiple of 256): q5_0 x11, q8_0 x1"
    stored = {t.name: t.tensor_type.name for t in reader(tmp_path / "q.gguf").tensors}
    assert stored["blk.0.attn_q.weight"] == "Q5_0" and stored["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")


# --- the LoRA adapter GGUF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_gguf_has_llama_cpp_names_shapes_alpha_and_the_same_update(smollm2_2layers, tmp_path, use_rslora):
    peft_model = make_adapter(smollm2_2layers, tmp_path / "adapter", use_rslora)
    path = gguf_writer.export_adapter(tmp_path / "adapter", smollm2_2layers, tmp_path, "tiny")
    assert path.name == "tiny-F32-LoRA.gguf"
    meta, ours = fields(path), tensors(path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    alpha, rank = meta["adapter.lora.alpha"], 8
    assert alpha == pytest.approx(16 * 8 ** 0.5 if use_rslora else 16)
    gguf_names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    assert set(ours) == {f"blk.{b}.{n}.weight.lora_{ab}" for b in (0, 1) for n in gguf_names for ab in "ab"}
    # ggml order: lora_a is [n_in, rank], lora_b [rank, n_out], the shapes llama.cpp checks against the base
    assert list(ours["blk.0.attn_k.weight.lora_a"].shape) == [576, rank]
    assert list(ours["blk.0.attn_k.weight.lora_b"].shape) == [rank, 192]
    assert list(ours["blk.0.ffn_down.weight.lora_a"].shape) == [1536, rank]

    # llama.cpp adds (alpha / rank) * B @ A to its (permuted) weight: undo the permutation, compare with PEFT
    layers = peft_model.base_model.model.model.layers
    for block, module, heads in [(0, "attn_q", 9), (1, "attn_k", 3), (0, "ffn_up", None)]:
        a = np.asarray(ours[f"blk.{block}.{module}.weight.lora_a"].data)
        b = np.asarray(ours[f"blk.{block}.{module}.weight.lora_b"].data)
        delta = alpha / rank * (b @ a)
        if heads:
            delta = gguf_writer.unpermute_qk(delta, heads)
        hf_module = {"attn_q": layers[block].self_attn.q_proj, "attn_k": layers[block].self_attn.k_proj,
                     "ffn_up": layers[block].mlp.up_proj}[module]
        np.testing.assert_allclose(delta, hf_module.get_delta_weight("default").detach().numpy(), atol=1e-6)


def test_adapter_with_dora_or_saved_modules_is_refused(tmp_path):
    config_file = tmp_path / "adapter_config.json"
    for field, value in [("use_dora", True), ("modules_to_save", ["lm_head"]), ("alpha_pattern", {"q_proj": 4})]:
        config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, field: value}
        with pytest.raises(gguf_writer.UsageError, match=field):
            gguf_writer.lora_alpha(config, config_file)


# --- the command and the Modelfile ---------------------------------------------------------------------------

def run_command(*args: str):
    return CliRunner().invoke(export_gguf, [str(a) for a in args])


def test_command_on_a_model_folder_writes_both_types_and_a_chatml_modelfile(smollm2_2layers, tmp_path):
    result = run_command(smollm2_2layers, "--out", tmp_path / "out", "--name", "Smol")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["Modelfile", "Smol-35M-F16.gguf", "Smol-35M-Q8_0.gguf"]  # no temporary files left
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./Smol-35M-F16.gguf\n") and "ADAPTER" not in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|im_start|>"' in modelfile
    assert "{{ .Content }}<|im_end|>" in modelfile
    # SmolLM2's template adds this system prompt when a conversation has none; Ollama does the same with SYSTEM
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert "tokenizer: gpt2/smollm, 49152 tokens, bos=1 eos=2" in result.output


def test_command_on_a_run_folder_writes_adapter_base_and_modelfile(smollm2_2layers, tmp_path):
    run = tmp_path / "run"
    make_adapter(smollm2_2layers, run)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_2layers / name, run / name)
    (run / "config.yaml").write_text(f"model: {smollm2_2layers}\n")
    result = run_command(run, "--out", tmp_path / "out", "--types", "f16")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    base = f"{smollm2_2layers.name}-35M-F16.gguf"
    assert names == sorted(["Modelfile", base, "run-F32-LoRA.gguf"])
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert f"FROM ./{base}\nADAPTER ./run-F32-LoRA.gguf\n" in modelfile
    assert "adapter.type=lora  adapter.lora.alpha=16" in result.output


@pytest.mark.parametrize("case, message", [
    ("empty", "neither a run folder"),
    ("unsupported", "architecture ['GPT2LMHeadModel'] is not supported"),
    ("no_base", "pass --base FOLDER"),
    ("bad_types", "--types 'f16,q4_k'"),
])
def test_command_refuses_what_it_cannot_export(smollm2_2layers, tmp_path, case, message):
    folder = tmp_path / case
    folder.mkdir()
    types = "f16"
    if case == "unsupported":
        config = json.loads((smollm2_2layers / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
        (folder / "model.safetensors").write_bytes(b"")
    if case == "no_base":
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "nobody/missing"}))
        (folder / "adapter_model.safetensors").write_bytes(b"")
    if case == "bad_types":
        types = "f16,q4_k"
    result = run_command(folder, "--out", tmp_path / "out", "--types", types)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- the Ollama chat template ----------------------------------------------------------------------------------
# Ollama cannot run here, so the tests render the Modelfile's TEMPLATE with llama_lora/export/ollama_template.py (a Go
# text/template reduced to what our templates use), and the prompt it gives must be what the tokenizer's own chat
# template renders, which is what the model was trained on.

def ollama_prompt(modelfile: str, messages: list[dict], tmp_path: Path) -> str:
    (tmp_path / "Modelfile").write_text(modelfile)
    return ollama_template.render(ollama_template.read_modelfile(tmp_path / "Modelfile"), messages)


CONVERSATIONS = [
    [{"role": "user", "content": "Why does ice float?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why does ice float?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why does ice float?"},
     {"role": "assistant", "content": "It is less dense than water."}, {"role": "user", "content": "Why?"}],
]


@pytest.fixture(scope="module")
def llama31_tokenizer(llama3_tokenizer):
    """The Llama 3 tokenizer with the project's Llama 3.1 template (a copy: the session's stays template-less)."""
    from llama_lora.data.chat_template import ensure_chat_template

    tokenizer = llama3_tokenizer.__class__.from_pretrained(llama3_tokenizer.name_or_path)
    ensure_chat_template(tokenizer)
    return tokenizer


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_llama31_modelfile_template_renders_the_prompt_the_model_was_trained_on(llama31_tokenizer, messages,
                                                                               tmp_path):
    tokenizer = llama31_tokenizer
    fmt = gguf_writer.chat_format(tokenizer)
    modelfile = gguf_writer.modelfile_text("m.gguf", "a.gguf", fmt, gguf_writer.default_system_prompt(tokenizer))
    assert fmt.name == "llama3.1" and 'PARAMETER stop "<|eot_id|>"' in modelfile and "SYSTEM" not in modelfile
    trained = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # llama.cpp adds <|begin_of_text|> itself (the GGUF says add_bos_token), so the template leaves it out
    assert ollama_prompt(modelfile, messages, tmp_path) == trained.removeprefix("<|begin_of_text|>")


@pytest.mark.parametrize("messages", CONVERSATIONS[1:], ids=["system", "multi-turn"])
def test_chatml_modelfile_template_renders_the_prompt_the_model_was_trained_on(smollm2_tokenizer, messages, tmp_path):
    fmt = gguf_writer.chat_format(smollm2_tokenizer)
    modelfile = gguf_writer.modelfile_text("m.gguf", None, fmt, None)
    trained = smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert fmt.name == "chatml" and ollama_prompt(modelfile, messages, tmp_path) == trained
