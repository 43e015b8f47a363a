"""Use a finished run folder: load its base model plus adapter with plain PEFT and answer chat prompts.

Works for either backend's run folder: both save a PEFT adapter, the tokenizer with its chat template, and
the run record (config.yaml, metrics.json) that names the base model, 4-bit or not, and the dtype.
Never imports Unsloth (see lora_unsloth_finetuning.py), so a loaded adapter is plain PEFT's reading of it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from llama_lora.data.formats import CHAT_ROLES, Message, with_system  # noqa: F401 (with_system: use_adapter.py's)
from llama_lora.errors import UsageError
from llama_lora.options import remote_code
from llama_lora.run import files, run_record


@dataclass(frozen=True)
class TrainedRun:
    """What a run folder says about how to rebuild its model."""

    folder: Path
    base: str  # local folder or hub id of the base model
    load_in_4bit: bool
    dtype: str
    trust_remote_code: bool = False  # the command's --trust-remote-code, never the folder's own say
    backend: str | None = None


@dataclass(frozen=True)
class Sampling:
    """How to decode: greedy when temperature is 0."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Answer:
    """One generated answer, and whether the model ended it itself (an end-of-turn token) or ran out of room."""

    text: str
    tokens: int
    stopped: bool


def read_run(folder: str | Path, base: str | None = None, trust_remote_code: bool = False) -> TrainedRun:
    """The run folder's base model, precision and backend; `base` overrides the recorded base model.
    `trust_remote_code` is the command's flag: a folder whose config.yaml asks for it is refused without it."""
    folder = Path(folder)
    if not folder.is_dir():
        hint = " (a run that has not completed lives in .<name>.partial/)" if not folder.exists() else ""
        raise UsageError(f"{folder}: no such run folder{hint}")
    if not (folder / files.ADAPTER_CONFIG).exists():
        raise UsageError(f"{folder}: no {files.ADAPTER_CONFIG}, so no adapter to load; expected a finished run folder "
                         "(the one a training script prints at its end)")
    recorded = run_record.recorded_model(folder)
    if recorded.trust_remote_code and not trust_remote_code:
        raise UsageError(remote_code.saved_request_refused(str(folder / files.CONFIG)))
    if base is None:
        base = _recorded_base(recorded)
        if base is None:
            raise UsageError(f"{folder}: cannot tell the base model (no config.yaml, metrics.json or "
                             "base_model_name_or_path); pass --base-model")
    dtype = recorded.dtype or "bfloat16"
    if dtype == "float16" and not torch.cuda.is_available():
        dtype = "float32"  # fp16 matmuls are not supported well on CPU; the values are the same adapter
    return TrainedRun(folder, base, recorded.load_in_4bit, dtype, trust_remote_code, recorded.backend)


def _recorded_base(recorded: run_record.RecordedModel) -> str | None:
    """The base model the run trained on: its recorded path if that still exists, else --model resolved again
    (a hub id need not exist locally), else the adapter's base."""
    if recorded.path and Path(recorded.path).exists():
        return recorded.path
    if recorded.name:
        from llama_lora.model import assets  # converts the embedded model on first use a cache moved or wiped

        return assets.model_path(recorded.name)
    return next(iter(recorded.candidates()), None)


def device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_base(info: TrainedRun, load_in_4bit: bool | None = None, dtype: str | None = None) -> Any:
    """The base model as the run trained it (4-bit NF4 for a QLoRA run), in eval mode."""
    from transformers import AutoModelForCausalLM

    from llama_lora.model.quantization import nf4_config

    four_bit = info.load_in_4bit if load_in_4bit is None else load_in_4bit
    torch_dtype = getattr(torch, dtype or info.dtype)
    quantization = nf4_config(torch_dtype) if four_bit else None  # the NF4 settings QLoRA trains with
    with remote_code.explained(info.base):
        model = AutoModelForCausalLM.from_pretrained(
            info.base, dtype=torch_dtype, quantization_config=quantization, device_map={"": device()},
            use_safetensors=True,  # never unpickle .bin weights: pickle can run code
            trust_remote_code=info.trust_remote_code,
        )
    return model.eval()


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The run's tokenizer (with the chat template it trained with), padding on the left for generation."""
    from transformers import AutoTokenizer

    from llama_lora.quiet import quiet_tokenizer

    with remote_code.explained(str(folder)):
        tokenizer = quiet_tokenizer(AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code))
    tokenizer.padding_side = "left"  # generated tokens must follow each prompt directly
    return tokenizer


def load_tuned(info: TrainedRun, **base_options: Any) -> tuple[Any, Any]:
    """(base model + the run's adapter as a peft.PeftModel, tokenizer)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(info, **base_options), info.folder)
    return model.eval(), load_tokenizer(info.folder, info.trust_remote_code)


def load_adapters(info: TrainedRun, folders: dict[str, Path]) -> Any:
    """One base model with several adapters attached by name (the first one active)."""
    from peft import PeftModel

    names = list(folders)
    model = PeftModel.from_pretrained(load_base(info), folders[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folders[name], adapter_name=name)
    model.set_adapter(names[0])
    return model.eval()


@contextlib.contextmanager
def active(model: Any, adapter: str | None) -> Iterator[Any]:
    """Run the block with one named adapter active, or with every adapter disabled (None): the base model."""
    if adapter is None:
        with model.disable_adapter():
            yield model
        return
    model.set_adapter(adapter)
    yield model


def chat_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of a conversation rendered with the chat template, ending with the assistant header."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a turn: the model's own (Llama 3.1 lists three) and the tokenizer's eos."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    for token in (tokenizer.eos_token, "<|eot_id|>", "<|im_end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if token_id is not None:
            ids.add(token_id)
    return sorted(ids)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], sampling: Sampling = Sampling(),
             streamer: Any = None) -> list[Answer]:
    """Answer a batch of tokenized prompts (left-padded together); a streamer needs a batch of one."""
    model.eval()
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    stops = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    options: dict[str, Any] = {"do_sample": False}
    if sampling.temperature > 0:
        options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    else:  # say so, or a model's generation_config (Llama 3.1 Instruct: 0.6 / 0.9) makes transformers warn
        options.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(**batch, max_new_tokens=sampling.max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                         use_cache=True, streamer=streamer, **options)
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        ended = next((i for i, token in enumerate(row) if token in stops), None)
        kept = row if ended is None else row[:ended]
        answers.append(Answer(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), ended is not None))
    return answers


def read_prompts(path: str | Path) -> list[list[Message]]:
    """Conversations from a prompt file: .txt (one prompt a line) or .jsonl (a string, {"prompt": ...} or
    {"messages": [{role, content}, ...]} a line)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts-file {path}: cannot read it: {err}") from err
    if path.suffix == ".jsonl":
        conversations = [_jsonl_prompt(line, f"{path}:{number}")
                         for number, line in enumerate(lines, 1) if line.strip()]
    else:
        conversations = [[{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    if not conversations:
        raise UsageError(f"--prompts-file {path}: no prompt in it (expected one prompt a line)")
    return conversations


def _jsonl_prompt(line: str, where: str) -> list[Message]:
    """One .jsonl prompt line as a conversation, or a UsageError naming the line and what was expected."""
    try:
        value = json.loads(line)
    except ValueError as err:
        raise UsageError(f"{where}: not valid JSON: {err}") from err
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        value = value["prompt"]
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    messages = value.get("messages") if isinstance(value, dict) else None
    if (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in CHAT_ROLES
            and isinstance(m.get("content"), str) for m in messages)):
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    raise UsageError(f"{where}: expected a string, {{\"prompt\": string}} or {{\"messages\": [{{\"role\": "
                     "system|user|assistant, \"content\": string}, ...]}")


