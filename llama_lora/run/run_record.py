"""metrics.json as one typed record: the pipeline writes it, `compare`, `inference`, `gguf_command`, the
benchmark and the tests read it, so a renamed key is renamed for every reader at once. Also the one reading
of which base model, precision and dtype a run folder trained with (`recorded_model`).

Version 1 is every record written before the version field existed; it named its GiB figures `*_gb`, which
still read (into the `*_gib` fields). Keys this class does not know are kept as they are (a newer writer's).
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from llama_lora.atomic_files import write_json
from llama_lora.errors import UsageError
from llama_lora.run import files

RECORD_VERSION = 2


def _gib(name: str) -> Any:
    """A GiB figure, also read from the `*_gb` key records before version 2 used."""
    return Field(None, validation_alias=AliasChoices(f"{name}_gib", f"{name}_gb"))


class _Part(BaseModel):
    # extra="allow": a record written by a newer version keeps its unknown keys when read and written again
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Model(_Part):
    name: str | None = None  # --model as given (an alias, hub id or folder)
    path: str | None = None  # the folder or hub id it resolved to


class Device(_Part):
    type: str | None = None  # cuda or cpu
    name: str | None = None
    memory_gib: float | None = _gib("memory")
    cuda: str | None = None
    capability: str | None = None
    threads: int | None = None


class MemorySnapshot(_Part):
    """Peak memory so far: GPU counters with CUDA, the process's peak resident memory without."""

    gpu_allocated_gib: float | None = _gib("gpu_allocated")
    gpu_peak_allocated_gib: float | None = _gib("gpu_peak_allocated")
    gpu_peak_reserved_gib: float | None = _gib("gpu_peak_reserved")
    cpu_peak_rss_gib: float | None = _gib("cpu_peak_rss")


class ProcessMemory(_Part):
    after_load: MemorySnapshot | None = None
    after_training: MemorySnapshot | None = None


class Memory(ProcessMemory):
    per_process: list[ProcessMemory] | None = None  # under a launch: each process's, in rank order


class Processes(_Part):
    count: int = 1
    fsdp: bool = False


class Runtime(_Part):
    load: float | None = None
    train: float | None = None  # without the evaluations during training
    eval_during_training: float | None = None
    samples: float | None = None
    total: float | None = None


class Tokens(_Part):
    non_padding_seen: int | None = None
    per_second: float | None = None


class EvalLoss(_Part):
    before: float | None = None
    after: float | None = None
    during: list[dict[str, Any]] | None = None  # {step, eval_loss, seconds} every --eval-steps


class Forgetting(_Part):
    """Cross-entropy on the bundled general-text sample before and after training (llama_lora/run/forgetting.py)."""

    sample: str | None = None  # the sample file, relative to the repository
    tokens: int | None = None  # predicted tokens scored each way
    before: float | None = None  # nats per token, the model before training
    after: float | None = None  # the same, the adapter being saved
    perplexity_change: float | None = None  # exp(after - before) - 1
    reading: str | None = None  # one line on what the change means
    seconds: float | None = None  # both measurements together


class ExportVerdicts(_Part):
    """What `use_adapter.py verify` last found (verify.json holds its figures)."""

    passed: bool | None = None
    when: str | None = None
    targets: dict[str, str] | None = None  # target -> passed, failed or skipped


class RunRecord(_Part):
    """Everything metrics.json holds. A running or failed record has only some of it."""

    version: int = 1  # absent in records before version 2; the writer always sets it
    status: str  # running, failed, interrupted (a signal: exit 75) or completed
    reason: str | None = None  # failed or interrupted: why, and what to do
    last_checkpoint: str | None = None  # failed or interrupted: where --resume continues from
    interrupted_at_step: int | None = None  # interrupted: the step its checkpoint holds
    backend: str | None = None
    model: Model | None = None
    load_in_4bit: bool | None = None
    dtype: str | None = None
    device: Device | None = None
    libraries: dict[str, str | None] | None = None
    parameters: dict[str, Any] | None = None
    processes: Processes | None = None
    memory: Memory | None = None
    runtime_s: Runtime | None = None
    steps: int | None = None
    resumed_from_step: int | None = None
    tokens: Tokens | None = None
    batching: dict[str, Any] | None = None  # --batching: mode, attention path, padding share (pipeline._batching_record)
    final_train_loss: float | None = None
    eval_loss: EvalLoss | None = None
    forgetting: Forgetting | None = None
    samples: dict[str, Any] | None = None  # samples.py's figures
    samples_skipped: str | None = None  # why no samples were written although --samples asked for them
    early_stopping: dict[str, Any] | None = None
    loss_history: list[dict[str, Any]] | None = None  # train_log.jsonl's entries
    training_args: dict[str, Any] | None = None  # the trainer's effective values (training.RECORDED_ARGS)
    config: dict[str, Any] | None = None  # config.to_record
    data: dict[str, Any] | None = None  # format, hash, labels, and each split's source and counts
    verify: ExportVerdicts | None = None  # written after training by use_adapter.py verify

    def value(self, path: str) -> Any:
        """The value at a dotted path (`memory.after_training.cpu_peak_rss_gib`), None where the record has none."""
        node: Any = self
        for key in path.split("."):
            node = getattr(node, key, None) if isinstance(node, BaseModel) else (
                node.get(key) if isinstance(node, dict) else None)
        return node

    def dump(self) -> dict[str, Any]:
        """The JSON-able record: the fields set, in declaration order, under their current names."""
        return self.model_dump(mode="json", exclude_unset=True)


def has_path(path: str, model: type[BaseModel] = RunRecord) -> bool:
    """True when the dotted path names a field of the record (any key below a free-form mapping)."""
    key, _, rest = path.partition(".")
    if key not in model.model_fields:
        return False
    if not rest:
        return True
    hint = model.model_fields[key].annotation
    kinds = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for kind in kinds:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return has_path(rest, kind)
        if get_origin(kind) is dict:
            return True
    return False


def new(status: str, **fields: Any) -> RunRecord:
    """A record of the current version."""
    return RunRecord(version=RECORD_VERSION, status=status, **fields)


def parse(data: dict[str, Any], where: Path | str = files.METRICS) -> RunRecord:
    """A record from metrics.json's content, or a UsageError naming the file and the field."""
    try:
        return RunRecord.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise UsageError(f"{where}: field {field}: {first['msg']}") from err


def read(folder: Path) -> RunRecord | None:
    """A run folder's record; None when it has no metrics.json. Unreadable content is a UsageError."""
    path = Path(folder) / files.METRICS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read it: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return parse(data, path)


def write(folder: Path, record: RunRecord) -> None:
    """metrics.json, replaced whole so a reader never sees half a file."""
    write_json(Path(folder) / files.METRICS, record.dump())


@dataclass(frozen=True)
class RecordedModel:
    """What a run folder says about the model it trained, read one way for every reader: config.yaml first, then
    metrics.json, then the adapter's own config."""

    path: str | None  # the folder or hub id --model resolved to when it trained
    name: str | None  # --model as given (an alias, hub id or folder)
    adapter_base: str | None  # adapter_config.json's base_model_name_or_path
    load_in_4bit: bool
    dtype: str | None
    trust_remote_code: bool  # what config.yaml asks for (older runs saved it); only a command's flag grants it
    backend: str | None

    def candidates(self) -> list[str]:
        """Where the base model may be, most exact first: the recorded path, --model, the adapter's base."""
        return [c for c in (self.path, self.name, self.adapter_base) if c]


def recorded_model(folder: Path) -> RecordedModel:
    """The model a run folder trained, from config.yaml, metrics.json and adapter_config.json (any may be absent)."""
    folder = Path(folder)
    config = _read_mapping(folder / files.CONFIG, yaml.safe_load)
    record = read(folder) or RunRecord(status="unknown")
    adapter = _read_mapping(folder / files.ADAPTER_CONFIG, json.loads)
    return RecordedModel(
        path=record.value("model.path"),
        name=config.get("model") or record.value("model.name"),
        adapter_base=adapter.get("base_model_name_or_path"),
        load_in_4bit=bool(config.get("load_in_4bit", record.load_in_4bit or False)),
        dtype=config.get("dtype") or record.dtype,
        trust_remote_code=bool(config.get("trust_remote_code", False)),
        backend=record.backend,
    )


def _read_mapping(path: Path, parse: Any) -> dict[str, Any]:
    """A YAML/JSON mapping file, or {} when the file is absent."""
    if not path.exists():
        return {}
    try:
        data = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UsageError(f"{path}: cannot read it: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data
