"""Write GGUF files for llama.cpp and Ollama from files on disk, without loading a model.

- a Hugging Face Llama model folder (config.json + *.safetensors + tokenizer) -> one model GGUF per type
  (f16, q8_0), with the full tokenizer metadata llama.cpp needs to load it on its own;
- a PEFT LoRA adapter folder + its base model's config.json -> one LoRA adapter GGUF
  (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, tensors `blk.N.<name>.weight.lora_a/_b`);
- an Ollama `Modelfile` (FROM the model GGUF, ADAPTER the LoRA GGUF, the chat template and stop tokens).

Layouts follow llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py) and the `gguf`
package's own tables (`TensorNameMap`, `MODEL_ARCH`, `Keys`), so names never come from a hand-written list.
Every file is written under a temporary name and renamed when complete; `export_gguf` reads each back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llama_lora.errors import UsageError
from llama_lora.options import remote_code
from llama_lora.run import files

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# The architectures above are transformers' own: a model's shipped code (auto_map) is never run here.
NO_MODEL_CODE = "The GGUF export never runs a model's own code; it writes models transformers implements itself (Llama)"
QUANT_TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# llama.cpp names each BPE pre-tokenizer (the regex split before BPE merges) in `tokenizer.ggml.pre`, and
# picks its own implementation from that name. We recognise a tokenizer by the ids it gives this text,
# which exercises what pre-tokenizers disagree on: digit runs, contractions, whitespace runs, symbols.
PRE_TOKENIZER_PROBE = "I'll pay 1234567 or 3.14, we've   said!\n\n\tIT'S 12:30?  ok... ¿qué? 日本語 🦙🦙"
KNOWN_PRE_TOKENIZERS = {
    # SmolLM2's tokenizer (the embedded one); llama.cpp's converter wrote "smollm" into the GGUF it ships in
    "a07ecc65e4422f78": "smollm",
    # the Llama 3 / 3.1 tokenizer (128k vocabulary); llama.cpp calls its pre-tokenizer "llama-bpe"
    "5b0dd8baaf5fd0c8": "llama-bpe",
}

# Ollama chat formats: Go-template TEMPLATE text, stop tokens, and the tokens that identify the format.
CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
# The project's Llama 3.1 prompt: the system header always carries the knowledge-cutoff and date lines
# (llama_lora/data/chat_template.py); BOS is not in the template because llama.cpp adds it (add_bos_token).
LLAMA31_TEMPLATE = """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ range .Messages }}{{ if eq .Role "system" }}{{ .Content }}{{ end }}{{ end }}<|eot_id|>
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str
    stops: tuple[str, ...]


CHAT_FORMATS = (
    ChatFormat("llama3.1", LLAMA31_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ChatFormat("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>")),
)


@dataclass(frozen=True)
class LlamaShape:
    """What the GGUF writer needs from a Llama config.json."""

    n_layers: int
    n_head: int
    n_kv_head: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    context_length: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_factors: np.ndarray | None  # Llama 3.1's per-frequency rope scaling, written as rope_freqs.weight


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output file: its name, how to load it, the stored type and shape."""

    name: str
    load: Callable[[], np.ndarray]
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order of the float data, before quantization


# --- config and names --------------------------------------------------------------------------------------

def read_llama_shape(folder: Path) -> LlamaShape:
    """The Llama hyper-parameters of a model folder; UsageError for anything llama.cpp's `llama` arch can't run."""
    from transformers import AutoConfig

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder}: no config.json, so this is not a Hugging Face model folder")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
        raise UsageError(f"{config_file}: architecture {architectures or 'missing'} is not supported; "
                         f"GGUF export handles {', '.join(SUPPORTED_ARCHITECTURES)}")
    with remote_code.explained(str(folder), NO_MODEL_CODE):
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UsageError(f"{config_file}: attention_bias/mlp_bias are not supported by this exporter")
    rope = dict(config.rope_parameters or {})
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LlamaShape(
        n_layers=config.num_hidden_layers, n_head=config.num_attention_heads,
        n_kv_head=config.num_key_value_heads or config.num_attention_heads, head_dim=head_dim,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        context_length=config.max_position_embeddings, vocab_size=config.vocab_size,
        rms_norm_eps=config.rms_norm_eps, rope_theta=float(rope.get("rope_theta", 10000.0)),
        rope_factors=llama3_rope_factors(config, head_dim) if rope.get("rope_type") == "llama3" else None,
    )


def llama3_rope_factors(config: Any, head_dim: int) -> np.ndarray:
    """Llama 3.1's rope scaling as llama.cpp wants it: the factor each frequency is divided by."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    theta = float(config.rope_parameters["rope_theta"])
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return (plain / scaled.double().numpy()).astype(np.float32)


def gguf_name(name_map: gguf.TensorNameMap, hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face tensor name (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`)."""
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise UsageError(f"tensor {hf_name!r} has no llama.cpp name for the {ARCH_NAME} architecture")
    return mapped


def permute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved pairs.

    HF keeps each head's two rotated halves as [x0..x(d/2-1), y0..y(d/2-1)]; llama.cpp's RoPE rotates
    adjacent rows (x0, y0, x1, y1, ...). Applied to q_proj/k_proj weights, and to LoRA B of q/k
    (B's rows are the output rows, so delta_W = B @ A is permuted the same way as W).
    """
    head_dim = rows.shape[0] // n_head
    return rows.reshape(n_head, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def unpermute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`: llama.cpp row order back to Hugging Face's."""
    head_dim = rows.shape[0] // n_head
    return rows.reshape(n_head, head_dim // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def qk_heads(hf_name: str, shape: LlamaShape) -> int | None:
    """Head count to permute a tensor by: n_head for q_proj, n_kv_head for k_proj, None for the rest."""
    if ".q_proj." in hf_name:
        return shape.n_head
    if ".k_proj." in hf_name:
        return shape.n_kv_head
    return None


def output_type(gguf_tensor: str, ndim: int, wanted: gguf.GGMLQuantizationType, row: int) -> gguf.GGMLQuantizationType:
    """Stored type: norms and vectors stay f32 (llama.cpp's kernels expect it), rows that don't fill whole blocks f16."""
    if ndim <= 1 or gguf_tensor.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if row % block == 0 else gguf.GGMLQuantizationType.F16


def file_name(name: str, size_label: str | None, qtype_name: str, lora: bool = False) -> str:
    """The GGUF naming convention llama.cpp's converters use: <Name>-<Size>-<Type>[-LoRA].gguf."""
    return gguf.naming_convention(None, name, None, None, size_label, qtype_name, "LoRA" if lora else None) + ".gguf"


# --- tokenizer ---------------------------------------------------------------------------------------------

def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, recognised by the ids it gives a probe text."""
    ids = tokenizer.encode(PRE_TOKENIZER_PROBE, add_special_tokens=False)
    fingerprint = hashlib.sha256(str(ids).encode()).hexdigest()[:16]
    if fingerprint not in KNOWN_PRE_TOKENIZERS:
        raise UsageError(f"unknown BPE pre-tokenizer (fingerprint {fingerprint}); known: "
                         + ", ".join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))
                         + ". Pass --pre-tokenizer NAME with llama.cpp's name for it")
    return KNOWN_PRE_TOKENIZERS[fingerprint]


def vocab_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every token string with its llama.cpp type; ids the tokenizer lacks (padding rows) become UNUSED."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            # special added tokens (<|im_end|>, <|eot_id|>) are CONTROL: llama.cpp never splits them, and
            # never prints them; other added tokens are user-defined words
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int, pre_tokenizer: str | None) -> Any:
    """Tokenizer metadata: BPE (gpt2) tokens, types, merges, special ids, add-BOS, chat template."""
    from transformers import AutoTokenizer

    with remote_code.explained(str(folder), NO_MODEL_CODE):
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.backend_tokenizer.model.__class__.__name__ != "BPE":
        raise UsageError(f"{folder}: only BPE tokenizers (Llama 3, SmolLM2) can be exported")
    tokens, types = vocab_tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer or pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise UsageError(f"{folder / 'tokenizer.json'}: no BPE merges found")
    # What the Hugging Face tokenizer really does decides whether llama.cpp prepends BOS / appends EOS.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file() and "add_prefix_space" in (tokenizer_config := json.loads(config_file.read_text())):
        writer.add_add_space_prefix(bool(tokenizer_config["add_prefix_space"]))
    if special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    return tokenizer


def chat_format(tokenizer: Any) -> ChatFormat:
    """The Ollama chat format matching the tokenizer's special tokens."""
    vocab = tokenizer.get_vocab()
    for fmt in CHAT_FORMATS:
        if all(stop in vocab for stop in fmt.stops):
            return fmt
    raise UsageError("no Ollama template for this tokenizer's chat format (known: "
                     + ", ".join(f.name for f in CHAT_FORMATS) + ")")


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt the chat template inserts when a conversation has none (SmolLM2 has one)."""
    if not tokenizer.chat_template:
        return None
    sentinel = "\x00user\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False)
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", text.split(sentinel)[0], re.DOTALL)
    return found.group(1) if found else None


def modelfile_text(model_file: str, adapter_file: str | None, fmt: ChatFormat, system: str | None) -> str:
    """An Ollama Modelfile: FROM the model GGUF, ADAPTER the LoRA GGUF, the chat template and its stop tokens."""
    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines.append(f'TEMPLATE """{fmt.template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in fmt.stops]
    return "\n".join(lines) + "\n"


# --- tensors -----------------------------------------------------------------------------------------------

def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{folder}: no *.safetensors weights (only safetensors are read; .bin files can run code)")
    return files


def model_tensors(folder: Path, shape: LlamaShape, wanted: gguf.GGMLQuantizationType) -> list[PlannedTensor]:
    """Every tensor of the model GGUF in writing order, with its name, type and a loader."""
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(ARCH, shape.n_layers)
    planned = []
    if shape.rope_factors is not None:
        factors = shape.rope_factors
        planned.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                     lambda: factors, gguf.GGMLQuantizationType.F32, factors.shape))
    for file in safetensors_files(folder):
        with safe_open(file, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp from the metadata
                    continue
                dims = tuple(handle.get_slice(hf_name).get_shape())
                name = gguf_name(name_map, hf_name)
                qtype = output_type(name, len(dims), wanted, dims[-1])
                planned.append(PlannedTensor(name, _loader(file, hf_name, qk_heads(hf_name, shape)), qtype, dims))
    return planned


def _loader(file: Path, hf_name: str, heads: int | None) -> Callable[[], np.ndarray]:
    """Load one tensor as float32 numpy (bf16 has no numpy type), with q/k rows in llama.cpp order."""
    def load() -> np.ndarray:
        from safetensors import safe_open

        with safe_open(file, framework="pt") as handle:
            data = handle.get_tensor(hf_name).float().numpy()
        return permute_qk(data, heads) if heads else data
    return load


def adapter_tensors(adapter: Path, shape: LlamaShape) -> list[PlannedTensor]:
    """The LoRA A/B pairs under llama.cpp's names; B of q/k gets the same row permutation as the base weight."""
    from safetensors import safe_open

    weights_file = adapter / files.ADAPTER_WEIGHTS
    with safe_open(weights_file, framework="pt") as handle:
        weights = {key: handle.get_tensor(key).float().numpy() for key in handle.keys()}
    name_map = gguf.get_tensor_name_map(ARCH, shape.n_layers)
    planned = []
    for key in sorted(weights):
        found = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not found:
            raise UsageError(f"{weights_file}: tensor {key!r} is not a LoRA A/B matrix; llama.cpp adapters hold "
                             "only those (no modules_to_save, DoRA magnitudes or embedding LoRA)")
        hf_name = found.group(1) + ".weight"
        data = weights[key]
        heads = qk_heads(hf_name, shape)
        if found.group(2) == "B" and heads:
            data = permute_qk(data, heads)
        name = gguf_name(name_map, hf_name) + (".lora_a" if found.group(2) == "A" else ".lora_b")
        planned.append(PlannedTensor(name, lambda data=data: data, gguf.GGMLQuantizationType.F32, data.shape))
    return planned


def lora_alpha(adapter_config: dict[str, Any], config_file: Path) -> float:
    """The alpha to store, so that llama.cpp's scale alpha / r equals the scale PEFT trained with."""
    if adapter_config.get("peft_type") != "LORA":
        raise UsageError(f"{config_file}: peft_type {adapter_config.get('peft_type')!r} is not LORA")
    for field in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if adapter_config.get(field):
            raise UsageError(f"{config_file}: {field} is set; llama.cpp LoRA adapters have one rank and alpha "
                             "for all modules and no DoRA or full-weight copies")
    alpha, rank = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    # rsLoRA scales by alpha / sqrt(r); llama.cpp always divides by r, so store alpha * sqrt(r)
    return alpha * math.sqrt(rank) if adapter_config.get("use_rslora") else alpha


# --- writing -----------------------------------------------------------------------------------------------

def stored_nbytes(tensor: PlannedTensor) -> int:
    """Bytes the tensor takes in the file after quantization."""
    if tensor.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return int(np.prod(tensor.shape)) * (4 if tensor.qtype == gguf.GGMLQuantizationType.F32 else 2)
    return int(np.prod(gguf.quant_shape_to_byte_shape(tensor.shape, tensor.qtype)))


def write_gguf(path: Path, writer: gguf.GGUFWriter, tensors: list[PlannedTensor], progress: bool = False) -> None:
    """Stream the tensors into `path` one at a time (an 8B model never sits in memory), atomically."""
    from tqdm import tqdm

    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), stored_nbytes(tensor),
                               raw_dtype=tensor.qtype)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    bar = tqdm(total=sum(stored_nbytes(t) for t in tensors), unit="B", unit_scale=True, desc=path.name,
               disable=not progress)
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            data = gguf.quants.quantize(tensor.load().astype(np.float32, copy=False), tensor.qtype)
            writer.write_tensor_data(data)
            bar.update(data.nbytes)
        writer.close()
        tmp.replace(path)
    finally:
        bar.close()
        writer.close()
        tmp.unlink(missing_ok=True)


def model_writer(shape: LlamaShape, name: str, file_type: gguf.LlamaFileType) -> gguf.GGUFWriter:
    """A writer holding the model's architecture metadata (the keys llama.cpp's llama loader reads)."""
    writer = gguf.GGUFWriter(None, ARCH_NAME)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(shape.n_layers)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_kv_head)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return writer


def adapter_writer(name: str, alpha: float, base_name: str) -> gguf.GGUFWriter:
    """A writer holding the LoRA adapter metadata llama.cpp checks before applying an adapter."""
    writer = gguf.GGUFWriter(None, ARCH_NAME)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base_name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return writer


def parameter_count(tensors: list[PlannedTensor]) -> int:
    return sum(int(np.prod(t.shape)) for t in tensors if not t.name.startswith("rope_freqs"))


def export_model(folder: Path, out_dir: Path, type_name: str, name: str, pre_tokenizer: str | None = None,
                 progress: bool = False, tokenizer_dir: Path | None = None) -> Path:
    """One model GGUF of `type_name` (f16 or q8_0) from a Hugging Face Llama folder; returns its path.

    `tokenizer_dir` (default: the model folder) supplies the tokenizer: a run folder's, whose chat template
    is the one the adapter was trained with.
    """
    qtype, file_type = QUANT_TYPES[type_name]
    shape = read_llama_shape(folder)
    tensors = model_tensors(folder, shape, qtype)
    size = gguf.size_label(parameter_count(tensors), 0, 0, 0)
    path = out_dir / file_name(name, size, qtype.name)
    writer = model_writer(shape, name, file_type)
    writer.add_size_label(size)
    add_tokenizer(writer, tokenizer_dir or folder, shape.vocab_size, pre_tokenizer)
    write_gguf(path, writer, tensors, progress)
    return path


def export_adapter(adapter: Path, base: Path, out_dir: Path, name: str) -> Path:
    """The LoRA adapter GGUF from a PEFT adapter folder and its base model's config.json; returns its path."""
    config_file = adapter / files.ADAPTER_CONFIG
    alpha = lora_alpha(json.loads(config_file.read_text()), config_file)
    tensors = adapter_tensors(adapter, read_llama_shape(base))
    if not tensors:
        raise UsageError(f"{adapter / files.ADAPTER_WEIGHTS}: no LoRA tensors")
    path = out_dir / file_name(name, None, "F32", lora=True)
    write_gguf(path, adapter_writer(name, alpha, base.name), tensors)
    return path
