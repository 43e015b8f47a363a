"""The one training configuration: every field's default and help text lives here, once.

The CLI flags (`cli.py`), the `--config` YAML file and the `config.yaml` saved in each run folder are all
generated from `TrainConfig`. Fields whose right value depends on the machine default to "auto" (None)
and are fixed by `resolve()` before anything is loaded, so a saved config replays the same run.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from llama_lora.options import recipe, remote_code, trainer_names, tracking
from llama_lora.options.batching import MODES, default_batching
from llama_lora.options.batching import refusal as batching_refusal

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OUTPUT_ROOT = Path("llama-3.1-lora-finetuned")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATASET = "data/teacher_student"
EMBEDDED_MODEL = "smollm2"
MODEL_ALIASES = {
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b-instruct": "meta-llama/Llama-3.1-70B-Instruct",
}
GPU_DEFAULT_MODEL = "llama-3.1-8b-instruct"
DTYPES = ("bfloat16", "float16", "float32")
LOSS_ON = ("assistant", "last-assistant", "all")
OVERLENGTH = ("drop", "truncate", "error")
BAD_ROWS = ("error", "skip")
REASONING = ("train", "context", "drop")
TREE_PATHS = ("top-ranked", "all")
BATCHING = MODES  # llama_lora/options/batching.py says what each does


def _opt(default: Any, help: str, auto: str | None = None, choices: tuple[str, ...] | None = None,
         computes: bool = True, recorded: str | None = None, choices_from: str | None = None) -> Any:
    """A config field and everything the rest of the code needs to know about it, declared once.

    auto: what a None default resolves to (its type is the annotation's). computes: the option changes what is
    trained or measured, so `compare` checks it is equal in both runs and `--resume` refuses to change it (the
    default, the safe side). recorded: the dotted metrics.json path that shows its effect, which the fairness
    check compares (default `config.<name>`); a `training_args.<name>` path also records the trainer's value.
    choices_from: the registry in a higher layer that declares the option's values (this module cannot import it);
    the command line offers and checks them (train/cli.py `SUPPLIED_CHOICES`), and that layer checks them again.
    """
    meta = {"help": help, "auto": auto, "choices": choices, "computes": computes, "recorded": recorded,
            "choices_from": choices_from}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a LoRA/QLoRA run. Field order is the order of `--help`."""

    model: str | None = _opt(
        None,
        "Hub id, local folder, or alias (" + ", ".join([*MODEL_ALIASES, EMBEDDED_MODEL]) + ").",
        auto=f"{GPU_DEFAULT_MODEL} with a CUDA GPU, else the embedded {EMBEDDED_MODEL} (SmolLM2-135M-Instruct)",
        recorded="model.name"
    )
    dataset: str = _opt(
        BUNDLED_DATASET,
        "A .jsonl/.json/.csv/.parquet file; a folder with train.<ext> (and eval/validation/test.<ext>), "
        "saved with datasets' save_to_disk, or in hub layout; or a Hugging Face hub dataset name. "
        "Relative paths are tried from the working directory, then from the repository.", recorded="data.hash"
    )
    dataset_split: str = _opt("train", "Split of the dataset to train on.", recorded="data.hash")
    eval_dataset: str | None = _opt(
        None, "Evaluate on this dataset (any source --dataset takes; its eval/validation/test split, or the split "
        "named as SOURCE:SPLIT, e.g. ultrachat:test_sft).",
        auto="the dataset's own eval/validation/test split, else --eval-fraction of the training rows",
        recorded="data.hash"
    )
    format: str = _opt(
        "auto", "Row format (docs/data.md); auto detects it from the fields of the first row.",
        choices_from="llama_lora/data/formats (FORMATS)", recorded="data.hash"
    )
    columns: str = _opt(
        "", "Read a format's fields from other columns, as field=column pairs, e.g. "
        "'input=context,output=response' for Dolly (YAML: a mapping). Also renames keys inside turns "
        "('role=speaker').", recorded="data.hash"
    )
    role_map: str = _opt(
        "", "Extra role names as name=role pairs, e.g. 'bot=assistant,customer=user' (YAML: a mapping). "
        "Built in: teacher, gpt, model -> assistant; student, human -> user.", recorded="data.hash"
    )
    reasoning: str = _opt(
        "train", "Assistant reasoning (reasoning_content/thinking fields, or <think> in the answer): written as "
        "<think>...</think> before the answer and trained, kept there but out of the loss (context), or dropped.",
        choices=REASONING, recorded="data.hash"
    )
    tree_paths: str = _opt("top-ranked", "Message trees (OpenAssistant oasst1/oasst2 rows): one conversation per "
                           "tree following the best-ranked reply at each step, or every path from the root to a leaf.",
                           choices=TREE_PATHS, recorded="data.hash")
    bad_rows: str = _opt(
        "error", "A row that cannot be read or rendered: stop naming it, or skip it (counted, and the first few "
        "named with their reason, in the audit and metrics.json).", choices=BAD_ROWS, recorded="data.hash"
    )
    loss_on: str = _opt(
        "assistant", "Tokens that count in the loss: every assistant turn, the last one only, or all tokens. "
        "Assistant turns include their end-of-turn token. Plain text always trains on all tokens.",
        choices=LOSS_ON, recorded="data.hash"
    )
    overlength: str = _opt(
        "drop", "Rows longer than --max-seq-length: drop them (counted in the audit), truncate them, or stop "
        "with an error naming the first one.", choices=OVERLENGTH, recorded="data.hash"
    )
    data_workers: int = _opt(
        1, "Processes that render and tokenize the data. 1 was fastest where measured: the Rust tokenizer "
        "already encodes each batch on every core (benchmarks/results/data_throughput.md).", computes=False
    )
    data_cache: str = _opt(
        "auto", "Folder that keeps tokenized data (Arrow) for later runs and every process of a launch; 'off': "
        "tokenize into a temporary folder each run. auto: $LLAMA_LORA_DATA_CACHE, else ~/.cache/llama-lora/data. "
        "Clear it with: python -m llama_lora.data.token_cache clear.", computes=False,
    )
    r: int = _opt(16, "LoRA rank.")
    lora_alpha: int | None = _opt(None, "LoRA scaling numerator (the update is scaled by alpha/r).", auto="2 x r")
    lora_dropout: float = _opt(
        0.0, "Dropout on the LoRA input. 0 keeps Unsloth on its fast path and runs deterministic."
    )
    target_modules: tuple[str, ...] = _opt(
        ALL_LINEAR, "Comma-separated module names that get LoRA adapters (YAML: a list)."
    )
    use_rslora: bool = _opt(False, "Rank-stabilized LoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = _opt(False, "Weight-decomposed LoRA (DoRA).")
    load_in_4bit: bool | None = _opt(
        None, "QLoRA: load the base model in 4-bit NF4 (bitsandbytes; also works on CPU).",
        auto="4-bit with a CUDA GPU, 16-bit without", recorded="load_in_4bit"
    )
    dtype: str | None = _opt(
        None, "Compute dtype: " + ", ".join(DTYPES) + ".",
        auto="bfloat16 where the GPU/CPU has native bf16, else float16 on GPU / float32 on CPU", recorded="dtype"
    )
    # recorded as configured: with --batching padding-free the trainer's own max_length is None (rows already fit)
    max_seq_length: int = _opt(2048, "Tokens per example; see --overlength for longer rows.")
    batch_size: int | None = _opt(
        None, "Examples per device per forward pass (with --batching packed: packed rows).",
        auto=f"{recipe.DEMO['batch_size']} for the embedded model's demo, else {recipe.STANDARD['batch_size']}",
        recorded="training_args.per_device_train_batch_size",
    )
    batching: str | None = _opt(
        None, "How a batch is laid out. padded: each example in its own row, padded to the longest in the "
        "batch. padding-free: the batch's examples concatenated into one row with no padding, the same examples "
        "per step and the same loss as padded. packed: examples packed whole into rows of up to --max-seq-length "
        "tokens before training, so a step holds more examples and an epoch has fewer steps (the supervised "
        "tokens per epoch stay the same). Examples in one row never attend to each other.",
        auto="padding-free with a CUDA GPU (no padding computed; the same batches and loss as padded); padded on "
        "CPU, the one mode both backends run there",
        choices=BATCHING,
    )
    grad_accum: int | None = _opt(
        None, "Gradient accumulation steps (effective batch = batch-size x grad-accum).",
        auto=f"{recipe.DEMO['grad_accum']} for the embedded model's demo, else {recipe.STANDARD['grad_accum']}",
        recorded="training_args.gradient_accumulation_steps",
    )
    learning_rate: float | None = _opt(
        None, "Peak learning rate.",
        auto=f"{recipe.DEMO['learning_rate']:g} for the embedded model's demo, else "
             f"{recipe.STANDARD['learning_rate']:g} (the QLoRA paper's rate for 7B-13B models)",
        recorded="training_args.learning_rate",
    )
    lr_scheduler: str = _opt("linear", "Learning-rate schedule (any transformers scheduler name).",
                             recorded="training_args.lr_scheduler_type")
    warmup_ratio: float = _opt(0.05, "Share of the steps spent warming the learning rate up.",
                               recorded="training_args.warmup_steps")
    weight_decay: float = _opt(0.0, "AdamW weight decay on the LoRA weights.", recorded="training_args.weight_decay")
    optim: str = _opt(
        "adamw_torch_fused",
        "Optimizer (transformers name). adamw_8bit / paged_adamw_8bit save memory on GPU only.",
        recorded="training_args.optim"
    )
    gradient_checkpointing: bool = _opt(True, "Recompute activations in the backward pass to save memory.",
                                        recorded="training_args.gradient_checkpointing")
    epochs: float = _opt(1.0, "Passes over the training data (ignored when --max-steps > 0).", recorded="steps")
    max_steps: int | None = _opt(
        None, "Stop after this many optimizer steps (-1: run --epochs).",
        # A 2-core CPU trains the embedded model at about 100 tokens/s: one epoch of the bundled data would take
        # 20+ minutes; the demo's 60 small steps teach the style in about four (llama_lora/options/recipe.py).
        auto=f"{recipe.DEMO['max_steps']} for the embedded model's demo; else -1 with a CUDA GPU, "
             f"{recipe.CPU_SMOKE_STEPS} on CPU", recorded="steps"
    )
    seed: int = _opt(42, "Seed for LoRA init, data order and dropout.", recorded="training_args.seed")
    eval_fraction: float = _opt(
        0.1, "Share of the training rows held out for eval when the dataset has no eval split (0: no eval).",
        recorded="data.hash"
    )
    eval_steps: int | None = _opt(
        None, "Evaluate the eval loss every N optimizer steps during training (the loss plot and metrics.json show "
        "it next to the train loss); 0: only before and after training. Early stopping uses these evaluations, so with "
        "it on this must equal --save-steps.",
        auto=f"the planned steps / {recipe.EVAL_POINTS}, rounded up; with early stopping, --save-steps",
    )
    save_steps: int = _opt(
        100, "Save a checkpoint (adapter, optimizer, scheduler, RNG, data position) every N steps; 0: never. "
        "--resume continues from the latest.",
        # bookkeeping, like the other computes=False options; with --early-stopping-patience it also sets when
        # evaluations happen, which the resume check has never refused (a crash's fix may need another cadence)
        computes=False,
    )
    keep_checkpoints: int = _opt(2, "How many of the latest checkpoints to keep.", computes=False)
    early_stopping_patience: int = _opt(
        0, "Stop after this many evaluations (one every --eval-steps) without a better eval loss, and keep the "
        "best adapter; 0: off.",
    )
    samples: int = _opt(
        4, "After training, answer this many held-out eval prompts with the base model and the tuned one and "
        "write samples.md with a style check (and, for classification data, label accuracy and macro-F1 over the "
        "eval split); 0: off.", computes=False
    )
    sample_max_tokens: int = _opt(
        256, "New tokens each sample answer may use (the bundled data's first teacher turns are 115-235 tokens).",
        computes=False
    )
    report_to: str = _opt("none", tracking.help_text(), computes=False)
    experiment: str = _opt(
        tracking.DEFAULT_EXPERIMENT, "What the trackers file the run under: MLflow's experiment, W&B's and Trackio's "
        "project (compare_backends.py --run gives both backends' runs one).", computes=False
    )
    run_name: str | None = _opt(
        None, "The run's name in the trackers.", auto="the backend and its settings, e.g. 'peft smollm2 r16 alpha32 "
        "lr0.001 float32 batch 2x1 padded 60 steps'", computes=False
    )
    output_dir: str | None = _opt(
        None, "Where the run folder is written.", auto=f"{OUTPUT_ROOT}/<backend>", computes=False
    )


CONFIG_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = get_type_hints(TrainConfig)


def flag(name: str) -> str:
    """The command-line flag of a field."""
    return "--" + name.replace("_", "-")


def computes(name: str) -> bool:
    """True when the option changes what is trained or measured (fairness compares it, --resume refuses a change)."""
    return CONFIG_FIELDS[name].metadata["computes"]


def recorded_path(name: str) -> str:
    """The dotted metrics.json path that shows the option's effect."""
    return CONFIG_FIELDS[name].metadata["recorded"] or f"config.{name}"


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to train: command-line only, never saved in config.yaml."""

    dry_run: bool = False
    resume: str | None = None  # "latest", or a checkpoint folder
    overwrite: bool = False
    plan: str | None = None  # print the memory plan for this launch ("1", "ddp:4", "fsdp:2") and exit
    trust_remote_code: bool = False  # --trust-remote-code: only ever from the command line (options/remote_code.py)


class ConfigError(ValueError):
    """A config value or file that cannot be used; the message names the field and what was expected."""


def load_yaml(path: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read a `--config` YAML file into field values, each of its option's type; errors name the file and line.
    A `trust_remote_code: true` in it is refused unless the command line gave --trust-remote-code."""
    try:
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        lines = _key_lines(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        where = f"{path}:{lines[str(key)]}" if str(key) in lines else str(path)
        name = str(key).replace("-", "_")
        if name == remote_code.NAME:  # older run folders saved it; only the command line may turn it on
            if value and not trust_remote_code:
                raise ConfigError(remote_code.saved_request_refused(where))
            continue
        if name not in CONFIG_FIELDS:
            raise ConfigError(f"{where}: unknown option {str(key)!r}. Known options: {', '.join(CONFIG_FIELDS)}")
        try:
            values[name] = coerce(name, value, str(key))  # named as the file spells it
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
    return values


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: the file, line and column, and the problem."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or str(err)
    return f"{where}: not valid YAML: {' '.join(problem.split())}"


def _key_lines(text: str) -> dict[str, int]:
    """The line of each top-level key of a YAML mapping (1-based), for messages that point at it."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def coerce(name: str, value: Any, label: str | None = None) -> Any:
    """A YAML or CLI value as the field's type, or a ConfigError naming it as `label` (default: the field's name).
    The type must match: a float or a boolean is never turned into an integer (`r: 1.9`, `r: true`), nor a number
    into a string."""
    label = label or name
    if value is None:
        if CONFIG_FIELDS[name].default is None:
            return None  # "auto"
        raise ConfigError(f"{label}: expected a value, got null (only options whose default is auto take null)")
    if name in ("role_map", "columns") and isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if name == "report_to" and isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value) or "none"
    if name == "target_modules":
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else None
        if items is None or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{label}: expected module names (a comma-separated string or a list of strings), "
                              f"got {value!r}")
        modules = tuple(item.strip() for item in items if item.strip())
        if not modules:
            raise ConfigError(f"{label}: expected at least one module name")
        return modules
    kind = value_type(name)
    if not _is_a(value, kind):
        raise ConfigError(f"{label}: expected {TYPE_NAMES[kind]}, got {value!r}")
    return float(value) if kind is float else value


def _is_a(value: Any, kind: type) -> bool:
    """True when `value` is of the option's type (bool is not an int here, though Python says it is)."""
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float and isinstance(value, str):
        return _number_text(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _number_text(text: str) -> bool:
    """True for text Python reads as a float (1e-4, 2.0E-5)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def value_type(name: str) -> type:
    """Type of a field's values, from its annotation (`int | None` -> int): also what an "auto" field resolves to."""
    hint = _TYPES[name]
    kinds = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kind = next(kind for kind in kinds if kind is not type(None))
    return get_origin(kind) or kind


def build(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from field values (unset fields keep their defaults)."""
    return TrainConfig(**{name: coerce(name, value) for name, value in values.items()})


@dataclass(frozen=True)
class Machine:
    """What resolve() needs to know about the hardware."""

    cuda: bool
    cuda_bf16: bool = False
    cpu_bf16: bool = False


def detect_machine() -> Machine:
    """Probe CUDA and native bf16 support (torch is imported here, never transformers or unsloth)."""
    import torch

    cuda = torch.cuda.is_available()
    return Machine(
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cpu_bf16=cpu_has_native_bf16(),
    )


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware; emulated bf16 trains several times slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve(cfg: TrainConfig, backend: str, machine: Machine, trust_remote_code: bool = False) -> TrainConfig:
    """Replace every "auto" field by its concrete value for this backend and machine, and validate."""
    model = cfg.model if cfg.model is not None else (GPU_DEFAULT_MODEL if machine.cuda else EMBEDDED_MODEL)
    if machine.cuda:
        dtype = cfg.dtype if cfg.dtype is not None else ("bfloat16" if machine.cuda_bf16 else "float16")
    else:
        dtype = cfg.dtype if cfg.dtype is not None else ("bfloat16" if machine.cpu_bf16 else "float32")
    # batch size, accumulation, learning rate and steps come from the model's recipe unless given
    defaults = recipe.recipe(model, EMBEDDED_MODEL, machine.cuda)
    resolved = dataclasses.replace(
        cfg,
        model=model,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.r,
        load_in_4bit=cfg.load_in_4bit if cfg.load_in_4bit is not None else machine.cuda,
        **{name: getattr(cfg, name) if getattr(cfg, name) is not None else value for name, value in defaults.items()},
        batching=cfg.batching if cfg.batching is not None else default_batching(machine.cuda),
        dtype=dtype,
        output_dir=cfg.output_dir if cfg.output_dir is not None else str(OUTPUT_ROOT / backend),
    )
    validate(resolved, machine)  # first: the step arithmetic below needs finite, positive numbers
    if resolved.eval_steps is None and (resolved.max_steps > 0 or resolved.early_stopping_patience):
        # an epoch-based run's step count needs the data: with_eval_steps() resolves it once that is read
        resolved = with_eval_steps(resolved, rows=0)
    resolved = dataclasses.replace(resolved, run_name=resolved.run_name or tracking.default_run_name(backend, resolved))
    refused = batching_refusal(resolved.batching, backend, machine.cuda, trust_remote_code)
    if refused:
        raise ConfigError(refused)
    return resolved


def with_eval_steps(cfg: TrainConfig, rows: int, processes: int = 1) -> TrainConfig:
    """The config with an "auto" --eval-steps resolved for `rows` training rows (unchanged when already set)."""
    if cfg.eval_steps is not None:
        return cfg
    steps = recipe.planned_steps(cfg.max_steps, cfg.epochs, rows, cfg.batch_size, cfg.grad_accum, processes)
    return dataclasses.replace(
        cfg, eval_steps=recipe.default_eval_steps(steps, cfg.save_steps, cfg.early_stopping_patience > 0))


MAX_SEED = 2**32 - 1
# an option whose default is "" (no extra role names, no renamed columns) takes it; any other empty text is a
# mistake, never "the default"
CAN_BE_EMPTY = tuple(name for name, field in CONFIG_FIELDS.items() if field.default == "")


def _form_checks(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """Checks every value of a kind gets: finite numbers, no empty text, names the installed transformers knows.
    They come first, so the range checks after them compare real numbers."""
    checks = []
    for name in CONFIG_FIELDS:
        value, kind = getattr(cfg, name), value_type(name)
        if kind is float and value is not None:
            checks.append((math.isfinite(value), f"{flag(name)} must be a finite number, got {value!r}"))
        if kind is str and name not in CAN_BE_EMPTY and value is not None:
            checks.append((value.strip() != "", f"{flag(name)} must not be empty"))
    for name, known in (("lr_scheduler", trainer_names.schedulers()), ("optim", trainer_names.optimizers())):
        checks.append((not known or getattr(cfg, name) in known, f"{flag(name)} {getattr(cfg, name)!r} is not a name "
                       f"the installed transformers knows; expected one of {', '.join(known)}"))
    return checks


def validate(cfg: TrainConfig, machine: Machine) -> None:
    """Reject values no run could use, naming the flag and the accepted range (after resolve: no auto left)."""
    checks = [
        (cfg.r > 0, "--r must be a positive integer"),
        (cfg.lora_alpha > 0, "--lora-alpha must be positive"),
        (0.0 <= cfg.lora_dropout < 1.0, "--lora-dropout must be in [0, 1)"),
        (cfg.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
        (cfg.max_seq_length > 0, "--max-seq-length must be positive"),
        (cfg.batch_size > 0, "--batch-size must be positive"),
        (cfg.grad_accum > 0, "--grad-accum must be positive"),
        (cfg.learning_rate > 0, "--learning-rate must be positive"),
        (0.0 <= cfg.warmup_ratio < 1.0, "--warmup-ratio must be in [0, 1)"),
        (cfg.epochs > 0 or cfg.max_steps > 0, "--epochs must be positive (or set --max-steps)"),
        (cfg.max_steps == -1 or cfg.max_steps > 0, "--max-steps must be -1 or positive"),
        (0.0 <= cfg.eval_fraction < 1.0, "--eval-fraction must be in [0, 1)"),
        (cfg.data_workers > 0, "--data-workers must be positive"),
        (cfg.save_steps >= 0, "--save-steps must be 0 (never) or positive"),
        (cfg.keep_checkpoints > 0, "--keep-checkpoints must be positive"),
        (cfg.samples >= 0, "--samples must be 0 (off) or positive"),
        (cfg.sample_max_tokens > 0, "--sample-max-tokens must be positive"),
        (cfg.early_stopping_patience >= 0, "--early-stopping-patience must be 0 (off) or positive"),
        (cfg.eval_steps is None or cfg.eval_steps >= 0, "--eval-steps must be 0 (only before and after) or positive"),
        (cfg.early_stopping_patience == 0 or cfg.save_steps > 0,
         "--early-stopping-patience keeps the best checkpoint, so it needs --save-steps > 0"),
        # transformers would track a best step it never saved (the kept adapter would not be the best one)
        (cfg.early_stopping_patience == 0 or cfg.eval_steps is None or cfg.eval_steps == cfg.save_steps,
         ("--early-stopping-patience can keep only a checkpointed step, so it evaluates at every checkpoint: "
          "--eval-steps must equal --save-steps")),
        (cfg.early_stopping_patience == 0 or cfg.keep_checkpoints >= 2,
         "--early-stopping-patience keeps the best checkpoint next to the latest: --keep-checkpoints must be >= 2"),
        (cfg.optim.find("8bit") < 0 or machine.cuda,
         f"--optim {cfg.optim} needs a CUDA GPU (bitsandbytes 8-bit optimizers); use adamw_torch_fused"),
        (cfg.dtype != "float16" or machine.cuda, "--dtype float16 needs a CUDA GPU; use bfloat16 or float32"),
        (cfg.weight_decay >= 0, "--weight-decay must be 0 or positive"),
        # transformers' set_seed seeds numpy too, which takes 0 to 2**32 - 1 only
        (0 <= cfg.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}]"),
    ]
    for ok, message in [*_form_checks(cfg), *checks]:
        if not ok:
            raise ConfigError(message)
    tracker_problem = tracking.problem(cfg.report_to)  # refused before anything loads, with the pip command
    if tracker_problem:
        raise ConfigError(tracker_problem)
    for name, spec in CONFIG_FIELDS.items():
        choices = spec.metadata["choices"]
        if choices and getattr(cfg, name) not in choices:
            raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                              f"got {getattr(cfg, name)!r}")


def to_record(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain YAML-able values (tuples become lists), in field order."""
    return {name: list(v) if isinstance(v, tuple) else v for name, v in dataclasses.asdict(cfg).items()}


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config so `--config path` replays the run."""
    path.write_text(yaml.safe_dump(to_record(cfg), sort_keys=False))
