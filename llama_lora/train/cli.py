"""The command line both entry scripts share, generated from `TrainConfig` so flags cannot drift.

Precedence: field defaults < `--config FILE` (YAML) < flags given on the command line.
This module imports only click/yaml: the backend gets to run its import hook (Unsloth must patch
transformers and TRL before they load) before `pipeline` pulls in the heavy libraries. `--plan` reads only the
model's config.json, so it is answered before either, in about 7 s on one core instead of 11.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource

from llama_lora import quiet
from llama_lora.backend import Backend
from llama_lora.data import formats
from llama_lora.errors import exit_status
from llama_lora.options import remote_code
from llama_lora.options.config import (
    CONFIG_FIELDS,
    ConfigError,
    RunOptions,
    TrainConfig,
    build,
    coerce,
    detect_machine,
    flag,
    load_yaml,
    resolve,
    value_type,
)


# Options whose values a registry above the options layer declares (their `_opt` names it in `choices_from`):
# the flag offers the registry's names, and a value from --config is checked against them before anything loads.
SUPPLIED_CHOICES: dict[str, Callable[[], tuple[str, ...]]] = {formats.OPTION: formats.choices}


def _choices(name: str) -> tuple[str, ...] | None:
    """The values an option takes: declared with it, or supplied by a higher layer's registry."""
    supplied = SUPPLIED_CHOICES.get(name)
    return supplied() if supplied else CONFIG_FIELDS[name].metadata["choices"]


def check_supplied_choices(cfg: TrainConfig) -> None:
    """Refuse a value a higher layer's registry does not declare (config.validate cannot see those registries)."""
    for name, supplied in SUPPLIED_CHOICES.items():
        if getattr(cfg, name) not in supplied():
            raise ConfigError(f"{flag(name)} must be one of {', '.join(supplied())}, got {getattr(cfg, name)!r}")


def _show_default(name: str) -> bool | str:
    """What `--help` prints as the default: the value itself, or what "auto" resolves to."""
    auto = CONFIG_FIELDS[name].metadata["auto"]
    return f"auto: {auto}" if auto else True


def _option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One click option for one config field."""
    spec = CONFIG_FIELDS[name]
    help_text = spec.metadata["help"]
    is_bool = value_type(name) is bool
    if is_bool:
        decls = [f"{flag(name)}/--no-{name.replace('_', '-')}"]
    else:
        decls = [flag(name)]
    kind = {int: int, float: float}.get(value_type(name), str)
    if _choices(name):
        kind = click.Choice(_choices(name))
    return click.option(
        *decls,
        name,
        default=spec.default if not isinstance(spec.default, tuple) else ",".join(spec.default),
        type=None if is_bool else kind,
        help=help_text,
        show_default=_show_default(name),
    )


def config_from_click(ctx: click.Context, flags: dict[str, Any], config_file: Path | None,
                      trust_remote_code: bool = False) -> TrainConfig:
    """Merge defaults, the YAML file and the flags the user actually typed, in that order."""
    values = load_yaml(config_file, trust_remote_code) if config_file else {}
    for name, value in flags.items():
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            values[name] = coerce(name, value, flag(name))  # a message names the flag typed
    return build(values)


def print_plan(cfg: TrainConfig, options: RunOptions) -> int:
    """--plan: the memory plan for these options and this launch, and nothing else."""
    from llama_lora.model import assets, memory_plan

    plan = memory_plan.plan(cfg, assets.model_path(cfg.model), memory_plan.parse_launch(options.plan),
                            options.trust_remote_code)
    memory_plan.print_plan(cfg, plan)
    return 0


def train_with_pipeline(cfg: TrainConfig, backend: Backend, options: RunOptions = RunOptions()) -> int:
    """Train with the shared pipeline, after the backend's import hook; a plan needs neither."""
    quiet.install()  # before any heavy import: most of the noise it drops is printed at import time
    if options.plan:
        return exit_status(lambda: print_plan(cfg, options))
    backend.before_heavy_imports()
    from llama_lora.train.pipeline import train_adapter  # heavy: torch, transformers, trl

    return train_adapter(cfg, backend, options)


def build_cli(backend: Backend, train: Callable[..., int] = train_with_pipeline) -> click.Command:
    """The click command for one backend; every backend gets the same options and help."""

    def main(config_file: Path | None, dry_run: bool, plan: str | None, resume: str | None, overwrite: bool,
             trust_remote_code: bool, **flags: Any) -> None:
        ctx = click.get_current_context()
        try:
            values = config_from_click(ctx, flags, config_file, trust_remote_code)
            cfg = resolve(values, backend.name, detect_machine(), trust_remote_code)
            check_supplied_choices(cfg)
        except ConfigError as err:
            raise click.UsageError(str(err)) from err
        if resume and overwrite:
            raise click.UsageError("--resume continues the interrupted run, --overwrite starts over: pick one")
        sys.exit(train(cfg, backend, RunOptions(dry_run=dry_run, resume=resume, overwrite=overwrite, plan=plan,
                                                trust_remote_code=trust_remote_code)))

    for name in reversed(list(CONFIG_FIELDS)):
        main = _option(name)(main)
    main = remote_code.option(main)  # a run option, never a config field: no file can turn it on
    main = click.option(
        "--overwrite", is_flag=True, help="Replace a finished run folder, or discard an interrupted run's checkpoints.",
    )(main)
    main = click.option(
        "--resume", is_flag=False, flag_value="latest", default=None, metavar="[CHECKPOINT]",
        help="Continue an interrupted run from its latest checkpoint (or the checkpoint folder given): adapter, "
             "optimizer, scheduler, RNG state and data position. Use the same options as the first attempt.",
    )(main)
    main = click.option(
        "--plan", is_flag=False, flag_value="1", default=None, metavar="[N|ddp:N|fsdp:N]",
        help="Print the GPU memory per process (weights, LoRA, gradients, optimizer, activations) for these options "
             "and N processes (FSDP: weights sharded), from the model's config.json alone, and exit.",
    )(main)
    main = click.option(
        "--dry-run", is_flag=True,
        help="Read, format and audit the data, show one rendered example with its trained part marked, and "
             "exit without loading model weights or writing anything.",
    )(main)
    main = click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="YAML file of option values (e.g. a run's config.yaml); flags on the command line override it.",
    )(main)
    return click.command(
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        help=(
            f"Fine-tune a LoRA/QLoRA adapter with the {backend.title} backend.\n\n"
            "With a CUDA GPU the default is Llama 3.1 8B Instruct in 4-bit (QLoRA); without one, the embedded "
            "SmolLM2-135M-Instruct in 16-bit, so a run works on any machine. The run folder gets the adapter, "
            "tokenizer, resolved config.yaml, metrics.json, train_log.jsonl and loss_curve.png."
        ),
    )(main)
