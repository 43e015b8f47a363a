"""`--report-to`: experiment trackers through transformers' own integrations, offline, logging inside the run folder.

    tensorboard  <run>/tensorboard/            tensorboard --logdir <run>/tensorboard
    wandb        <run>/wandb/offline-run-*/    wandb sync <run>/wandb/offline-run-*      (WANDB_MODE=offline)
    mlflow       <run>/mlruns/                 mlflow ui --backend-store-uri <run>/mlruns (a local file store)
    trackio      <run>/trackio/                trackio show (TRACKIO_DIR=<run>/trackio; local, no Space)

Each tracker gets what transformers' integration sends (the trainer's arguments, every logged step: loss, learning
rate, grad norm, tokens seen, eval loss) and the run's resolved config.yaml. Environment variables the user set
(WANDB_MODE, MLFLOW_TRACKING_URI, ...) win over these offline defaults. This module imports nothing heavy at the
top: `config.validate` uses it to refuse a missing tracker before anything loads.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

# name -> (module that must be importable, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install tensorboard==2.21.0 (bash setup.sh installs it)"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "trackio": ("trackio", "pip install trackio"),
}


# how to look at each tracker's files in a finished run folder, or sync them later (the run summary prints these)
LOOK_AT = {
    "tensorboard": "tensorboard --logdir {run}/tensorboard",
    "wandb": "wandb sync {run}/wandb/offline-run-*",
    "mlflow": "mlflow ui --backend-store-uri {run}/mlruns",
    "trackio": "TRACKIO_DIR={run}/trackio trackio show",
}


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
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name][0]) is None]
    if missing:
        return "--report-to " + "; ".join(f"{name} is not installed: {TRACKERS[name][1]}" for name in missing)
    return None


def offline_environment(names: tuple[str, ...], run_dir: Path) -> dict[str, str]:
    """The environment variables that keep each tracker offline and its files inside the run folder."""
    wanted = {
        "tensorboard": {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")},
        # silent: W&B's own closing lines name the staging folder, which the run folder replaces; the run summary
        # prints the sync command with the run folder's path
        "wandb": {"WANDB_MODE": "offline", "WANDB_DIR": str(run_dir), "WANDB_SILENT": "true"},
        "mlflow": {"MLFLOW_TRACKING_URI": (run_dir / "mlruns").resolve().as_uri()},
        "trackio": {"TRACKIO_DIR": str(run_dir / "trackio")},
    }
    return {key: value for name in names for key, value in wanted[name].items()}


def set_up(value: str, run_dir: Path) -> list[str] | str:
    """Point the trackers at the run folder, offline (unless the user's environment says otherwise), and return
    SFTConfig's report_to."""
    names = parse(value)
    for key, setting in offline_environment(names, run_dir).items():
        os.environ.setdefault(key, setting)
    return list(names) or "none"


def config_callback(record: dict[str, Any], trainer: Any) -> Any:
    """A callback that hands the resolved config to every tracker the trainer reports to, once their runs exist
    (it is added after transformers' own tracker callbacks, so their on_train_begin has run)."""
    import yaml
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    text = yaml.safe_dump(record, sort_keys=False)
    names = parse(",".join(trainer.args.report_to or []))

    class ResolvedConfig(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            if not state.is_world_process_zero:
                return
            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_text("config.yaml", f"```\n{text}```")
            if "wandb" in names:
                import wandb

                wandb.config.update({"llama_lora": record}, allow_val_change=True)
            if "mlflow" in names:
                import mlflow

                mlflow.log_text(text, "config.yaml")
            if "trackio" in names:
                import trackio

                trackio.config.update({"llama_lora": record}, allow_val_change=True)

    return ResolvedConfig()


def finish(value: str) -> None:
    """End the W&B run before the staging folder is renamed into the run folder: transformers ends MLflow's and
    Trackio's runs when training ends, but leaves W&B's open until the process exits, which would write its last
    records into a run folder that already looked complete."""
    if "wandb" in parse(value):
        import wandb

        if wandb.run is not None:
            wandb.finish()



def look_at(value: str, run_dir: Path) -> list[str]:
    """The commands that show (or, for W&B, sync) each tracker's files of a finished run."""
    return [LOOK_AT[name].format(run=run_dir) for name in parse(value)]
