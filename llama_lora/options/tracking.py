"""`--report-to`: experiment trackers through transformers' own integrations, offline, logging inside the run folder.

    tensorboard  <run>/tensorboard/            tensorboard --logdir <run>/tensorboard
    wandb        <run>/wandb/offline-run-*/    wandb sync <run>/wandb/offline-run-*      (WANDB_MODE=offline)
    mlflow       <run>/mlruns/                 mlflow ui --backend-store-uri file://<run>/mlruns (a local file store)
    trackio      <run>/trackio/                trackio show --project llama-lora (TRACKIO_DIR=<run>/trackio; no Space)

Each tracker is one `Tracker` record in TRACKERS: --report-to's help text and its refusal (with the pip command),
the offline environment, the commands the run summary prints and compare_backends.py's shared view all read it, so
adding a tracker is one record plus its own functions. What each tracker gets: transformers' integration sends the
trainer's arguments and every logged step (loss, learning rate, grad norm, tokens seen, eval loss); this module
adds the run's resolved config (every option, under `llama_lora`), the run's own figures at its end (peak memory by
phase, tokens/s, times) and, for a comparison of backends, the verdict on the pair. Runs are named by backend and
settings (--run-name) and filed under --experiment (MLflow's experiment, W&B's and Trackio's project).

Environment variables the user set (WANDB_MODE, MLFLOW_TRACKING_URI, ...) win over these offline defaults. Nothing
heavy is imported at the top: `config.validate` uses this module to refuse a missing tracker before anything loads.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "llama-lora"
COMPARISON_RUN = "comparison"  # the run (TensorBoard, W&B, Trackio) that holds a comparison's verdict


@dataclass(frozen=True)
class Tracker:
    """One experiment tracker, declared once: what the rest of the project needs to know to use it."""

    name: str  # the --report-to name (transformers' too)
    module: str  # what must be importable
    install: str  # the command printed when it is not
    environment: Callable[[Path], dict[str, str]]  # store folder -> what keeps the tracker offline, writing there
    experiment: Callable[[str], dict[str, str]]  # --experiment -> what files the run under it
    look: str  # the command that shows a finished run: {VARIABLE} from its environment, {experiment}
    # (runs' root, run folders, experiment) -> the one command that opens a comparison's runs together
    view: Callable[[Path, list[Path], str], str]
    shared_store: bool  # a comparison's runs write into one store under the runs' root (else each into its own)
    adopt: Callable[[Any, dict[str, Any]], None]  # (trainer, config record): send the config, keep the run open
    figures: Callable[[Any, dict[str, float], int], None]  # (trainer, figures, step): the run's figures at its end
    close: Callable[[], None]  # end the tracker's run of this process
    # (runs' root, experiment, comparison record, its Markdown): the verdict on a pair, filed with the pair
    comparison: Callable[[Path, str, dict[str, Any], str], None]


# --- TensorBoard ---------------------------------------------------------------------------------------------------


def _tensorboard_environment(store: Path) -> dict[str, str]:
    return {"TENSORBOARD_LOGGING_DIR": str(store / "tensorboard")}


def _tensorboard_adopt(trainer: Any, record: dict[str, Any]) -> None:
    """The config as a text summary, written by transformers' own writer once it exists."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    text = _yaml(record)

    class ConfigText(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_text("config.yaml", f"```\n{text}```")

    trainer.add_callback(ConfigText())


def _tensorboard_figures(trainer: Any, figures: dict[str, float], step: int) -> None:
    """Close transformers' writer (an evaluation after training reopens it and nothing closes it), then write the
    figures beside its events."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.close()
            callback.tb_writer = None
    with SummaryWriter(os.environ["TENSORBOARD_LOGGING_DIR"]) as writer:
        for key, value in figures.items():
            writer.add_scalar(key, value, step)


def _tensorboard_comparison(root: Path, experiment: str, record: dict[str, Any], markdown: str) -> None:
    """A `comparison` run beside the two run folders: the report as text, the ratios as scalars."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(root / COMPARISON_RUN)) as writer:
        writer.add_text("comparison", markdown)
        for key, value in comparison_figures(record).items():
            writer.add_scalar(key, value, 0)


# --- Weights & Biases -----------------------------------------------------------------------------------------------


def _wandb_environment(store: Path) -> dict[str, str]:
    # silent: W&B's own closing lines name the staging folder, which the run folder replaces; the run summary
    # prints the sync command with the run folder's path
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(store), "WANDB_SILENT": "true"}


def _wandb_adopt(trainer: Any, record: dict[str, Any]) -> None:
    """The config under `llama_lora`, once transformers' callback has started the W&B run."""
    from transformers import TrainerCallback

    class Config(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            import wandb

            if state.is_world_process_zero and wandb.run is not None:
                wandb.config.update({"llama_lora": record}, allow_val_change=True)

    trainer.add_callback(Config())


def _wandb_figures(trainer: Any, figures: dict[str, float], step: int) -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(figures)


def _wandb_close() -> None:
    """End the W&B run before the staging folder is renamed into the run folder: transformers leaves it open until
    the process exits, which would write its last records into a run folder that already looked complete."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _wandb_comparison(root: Path, experiment: str, record: dict[str, Any], markdown: str) -> None:
    """A `comparison` run in the pair's project: the report and verdict in its config, the ratios in its summary."""
    import wandb

    run = wandb.init(project=experiment, name=COMPARISON_RUN, dir=str(root), reinit="finish_previous",
                     config={"verdict": record["verdict"], "loss_parity": record["loss_parity"]["verdict"],
                             "report": markdown, "a": record["a"]["label"], "b": record["b"]["label"]})
    run.summary.update(comparison_figures(record))
    run.finish()


def _wandb_view(root: Path, runs: list[Path], experiment: str) -> str:
    offline = " ".join(f"{folder}/wandb/offline-run-*" for folder in [*runs, root])
    return f"wandb sync {offline}   (then open the project {experiment})"


# --- MLflow --------------------------------------------------------------------------------------------------------


def _mlflow_environment(store: Path) -> dict[str, str]:
    # MLflow 3 keeps its file store only on request; it needs no database package (mlflow-skinny has none)
    return {"MLFLOW_TRACKING_URI": (store / "mlruns").resolve().as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}


def _mlflow_adopt(trainer: Any, record: dict[str, Any]) -> None:
    """transformers' MLflow callback with two changes: it logs every option as a parameter `llama_lora.<option>`,
    and it leaves the run open when training ends, so the evaluation after training and the run's figures land in
    the same run (its own on_train_end would end it, and the next metric would start a second run)."""
    import mlflow
    from transformers.integrations import MLflowCallback

    class KeptOpen(MLflowCallback):
        def setup(self, args, state, model):  # noqa: ANN001 (transformers' signature)
            super().setup(args, state, model)
            if state.is_world_process_zero:
                mlflow.log_params({f"llama_lora.{key}": _param(value) for key, value in record.items()})

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            """Left to `finish`."""

    trainer.remove_callback(MLflowCallback)
    trainer.add_callback(KeptOpen())


def _mlflow_figures(trainer: Any, figures: dict[str, float], step: int) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics(figures, step=step)


def _mlflow_close() -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run()


def _mlflow_comparison(root: Path, experiment: str, record: dict[str, Any], markdown: str) -> None:
    """The report as the experiment's description (MLflow's UI shows it above the runs), the verdict as a tag."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"MLflow has no experiment {experiment!r} at {os.environ.get('MLFLOW_TRACKING_URI')}")
    client.set_experiment_tag(found.experiment_id, "mlflow.note.content", markdown)
    client.set_experiment_tag(found.experiment_id, "llama_lora.verdict", record["verdict"])
    client.set_experiment_tag(found.experiment_id, "llama_lora.loss_parity", record["loss_parity"]["verdict"])


def _param(value: Any) -> str:
    """An option's value as an MLflow parameter (a string)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# --- Trackio -------------------------------------------------------------------------------------------------------


def _trackio_environment(store: Path) -> dict[str, str]:
    return {"TRACKIO_DIR": str(store / "trackio")}


def _trackio_adopt(trainer: Any, record: dict[str, Any]) -> None:
    """transformers' Trackio callback with two changes: the config holds every option under `llama_lora` before
    its first log (Trackio stores a run's config once, with that log), and the run stays open when training ends
    (its own on_train_end finishes it, and a later evaluation would reopen it with the options missing)."""
    import trackio
    from transformers.integrations import TrackioCallback

    class KeptOpen(TrackioCallback):
        def setup(self, args, state, model, **kwargs):  # noqa: ANN001 (transformers' signature)
            super().setup(args, state, model, **kwargs)
            if state.is_world_process_zero:
                trackio.config.update({"llama_lora": record})

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            """Left to `finish`."""

    trainer.remove_callback(TrackioCallback)
    trainer.add_callback(KeptOpen())


def _trackio_figures(trainer: Any, figures: dict[str, float], step: int) -> None:
    import trackio

    if trackio.context_vars.current_run.get() is not None:
        trackio.log(figures)


def _trackio_close() -> None:
    import trackio

    if trackio.context_vars.current_run.get() is not None:
        trackio.finish()


def _trackio_comparison(root: Path, experiment: str, record: dict[str, Any], markdown: str) -> None:
    """A `comparison` run in the pair's project: the report and verdict in its config, the ratios as one log."""
    import trackio

    trackio.init(project=experiment, name=COMPARISON_RUN, auto_log_cpu=False, auto_log_gpu=False,
                 config={"verdict": record["verdict"], "loss_parity": record["loss_parity"]["verdict"],
                         "report": markdown, "a": record["a"]["label"], "b": record["b"]["label"]})
    trackio.log(comparison_figures(record))
    trackio.finish()


def _nothing(*_: Any) -> None:
    """Nothing to do for this tracker."""


def _no_experiment(experiment: str) -> dict[str, str]:
    """The tracker has no experiments (TensorBoard), or takes it from the trainer (Trackio's `project`)."""
    return {}


def _store_view(name: str) -> Callable[[Path, list[Path], str], str]:
    """A view that is the tracker's own look at one store: the store under the runs' root."""
    return lambda root, runs, experiment: TRACKERS[name].look.format(experiment=experiment,
                                                                     **TRACKERS[name].environment(root))


TRACKERS = {tracker.name: tracker for tracker in (
    Tracker(
        "tensorboard", "tensorboard", "pip install tensorboard==2.21.0 (bash setup.sh installs it)",
        _tensorboard_environment, _no_experiment, "tensorboard --logdir {TENSORBOARD_LOGGING_DIR}",
        view=lambda root, runs, experiment: f"tensorboard --logdir {root}", shared_store=False,
        adopt=_tensorboard_adopt, figures=_tensorboard_figures, close=_nothing, comparison=_tensorboard_comparison,
    ),
    Tracker(
        "wandb", "wandb", "pip install wandb",
        _wandb_environment, lambda experiment: {"WANDB_PROJECT": experiment},
        "wandb sync {WANDB_DIR}/wandb/offline-run-*",
        view=_wandb_view, shared_store=False,
        adopt=_wandb_adopt, figures=_wandb_figures, close=_wandb_close, comparison=_wandb_comparison,
    ),
    Tracker(
        "mlflow", "mlflow", "pip install mlflow-skinny==3.18.0 (logs; `mlflow ui` needs the full mlflow package)",
        _mlflow_environment, lambda experiment: {"MLFLOW_EXPERIMENT_NAME": experiment},
        "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {MLFLOW_TRACKING_URI}",
        view=_store_view("mlflow"), shared_store=True,
        adopt=_mlflow_adopt, figures=_mlflow_figures, close=_mlflow_close, comparison=_mlflow_comparison,
    ),
    Tracker(
        "trackio", "trackio", "pip install trackio==0.43.0",
        # the project is the trainer's `project` argument (build_sft_config passes --experiment)
        _trackio_environment, _no_experiment, "TRACKIO_DIR={TRACKIO_DIR} trackio show --project {experiment}",
        view=_store_view("trackio"), shared_store=True,
        adopt=_trackio_adopt, figures=_trackio_figures, close=_trackio_close, comparison=_trackio_comparison,
    ),
)}


# --- what the rest of the project calls ----------------------------------------------------------------------------


def parse(value: str) -> tuple[str, ...]:
    """The trackers a --report-to value names ("none" or "" names none)."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    return () if names == ("none",) else names


def problem(value: str) -> str | None:
    """Why --report-to cannot be used here (an unknown name, or a tracker that is not installed), or None."""
    names = parse(value)
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return (f"--report-to: unknown tracker {', '.join(map(repr, unknown))}; expected none or a comma-separated "
                f"list of {', '.join(TRACKERS)}")
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name].module) is None]
    if missing:
        return "--report-to " + "; ".join(f"{name} is not installed: {TRACKERS[name].install}" for name in missing)
    return None


def help_text() -> str:
    """--report-to's help, naming the declared trackers."""
    return (f"Experiment trackers, comma-separated: {', '.join(TRACKERS)} (YAML: a list). Offline, logging inside the "
            "run folder; they get every logged step, the resolved config and the run's figures "
            "(llama_lora/options/tracking.py).")


def default_run_name(backend: str, cfg: Any) -> str:
    """A run's name in the trackers: the backend, then the settings one varies between runs."""
    precision = "4-bit" if cfg.load_in_4bit else cfg.dtype
    length = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epochs"
    return (f"{backend} {Path(cfg.model).name} r{cfg.r} alpha{cfg.lora_alpha} lr{cfg.learning_rate:g} {precision} "
            f"batch {cfg.batch_size}x{cfg.grad_accum} {cfg.batching} {length}")


def offline_environment(names: tuple[str, ...], run_dir: Path, experiment: str = DEFAULT_EXPERIMENT) -> dict[str, str]:
    """The environment variables that keep each tracker offline, its files inside the run folder, and file the run
    under the experiment."""
    return {key: value for name in names
            for key, value in {**TRACKERS[name].environment(run_dir), **TRACKERS[name].experiment(experiment)}.items()}


def shared_environment(names: tuple[str, ...], root: Path) -> dict[str, str]:
    """What puts a comparison's runs into one view: the trackers that show one store at a time get one store under
    the runs' root (the others keep theirs in each run folder, and their view reads them all)."""
    return {key: value for name in names if TRACKERS[name].shared_store
            for key, value in TRACKERS[name].environment(root).items()}


def set_up(value: str, run_dir: Path, experiment: str = DEFAULT_EXPERIMENT) -> list[str] | str:
    """Point the trackers at the run folder, offline (unless the user's environment says otherwise), and return
    SFTConfig's report_to."""
    names = parse(value)
    for key, setting in offline_environment(names, run_dir, experiment).items():
        os.environ.setdefault(key, setting)
    return list(names) or "none"


def adopt(trainer: Any, record: dict[str, Any]) -> None:
    """Hook each tracker the trainer reports to into it: the resolved config goes to every one, and each run stays
    open until `finish`."""
    for name in parse(",".join(trainer.args.report_to or [])):
        TRACKERS[name].adopt(trainer, record)


def run_figures(record: dict[str, Any]) -> dict[str, float]:
    """A finished run's own figures (from its metrics.json record): peak memory by phase, tokens/s, times."""
    memory = record.get("memory") or {}
    figures = {f"memory/{phase}/{key}": value for phase in ("after_load", "after_training")
               for key, value in (memory.get(phase) or {}).items() if isinstance(value, (int, float))}
    figures["tokens/per_second"] = (record.get("tokens") or {}).get("per_second")
    for key in ("load", "train", "eval_during_training"):
        figures[f"runtime_s/{key}"] = (record.get("runtime_s") or {}).get(key)
    return {key: float(value) for key, value in figures.items() if isinstance(value, (int, float))}


def report_figures(trainer: Any, record: dict[str, Any]) -> None:
    """Send a finished run's figures to each tracker, at its last step (main process only)."""
    figures = run_figures(record)
    for name in parse(",".join(trainer.args.report_to or [])):
        TRACKERS[name].figures(trainer, figures, trainer.state.global_step)


def finish(value: str) -> None:
    """End each tracker's run, before the staging folder is renamed into the run folder: a completed run folder
    gets no more writes."""
    for name in parse(value):
        TRACKERS[name].close()


def comparison_figures(record: dict[str, Any]) -> dict[str, float]:
    """A comparison's ratios (B/A, per report row) and its loss-parity figures."""
    figures = {f"ratio_b_over_a/{row['metric']}": row["ratio_b_over_a"] for row in record["rows"]
               if row["ratio_b_over_a"] is not None}
    parity = record["loss_parity"]
    for key in ("mean_relative_difference", "max_relative_difference"):
        if key in parity:
            figures[f"loss_parity/{key}"] = parity[key]
    return {key: float(value) for key, value in figures.items()}


def log_comparison(value: str, root: Path, experiment: str, record: dict[str, Any], markdown: str) -> list[str]:
    """File a comparison's verdict with its pair in each tracker; return the commands that open each view."""
    names = parse(value)
    for name in names:  # this process's own files (the comparison runs) go under the runs' root
        for key, setting in TRACKERS[name].environment(root).items():
            os.environ.setdefault(key, setting)
    runs = [Path(record[side]["folder"]) for side in ("a", "b")]
    for name in names:
        TRACKERS[name].comparison(root, experiment, record, markdown)
    return [TRACKERS[name].view(root, runs, experiment) for name in names]


def look_at(value: str, run_dir: Path, experiment: str = DEFAULT_EXPERIMENT, staging: Path | None = None) -> list[str]:
    """The commands that show (or, for W&B, sync) each tracker's files of a finished run: where the environment
    put them, else the run folder (the staging folder they were written to is the run folder now)."""
    names = parse(value)
    final = offline_environment(names, run_dir, experiment)
    staged = offline_environment(names, staging or run_dir, experiment)
    where = {key: os.environ[key] if os.environ.get(key, staged[key]) != staged[key] else final[key]
             for key in final}
    return [TRACKERS[name].look.format(experiment=experiment, **where) for name in names]


def _yaml(record: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(record, sort_keys=False)
