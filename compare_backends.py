"""Compare the Unsloth and PEFT backends fairly: a fairness check, a side-by-side report, a loss-parity verdict.

    python compare_backends.py                              # compare the two default run folders
    python compare_backends.py --run --max-steps 20 --r 16  # train both with the same flags, then compare
    python compare_backends.py runs/a runs/b                # any two run folders (A is the reference)
    python compare_backends.py --run --report-to mlflow     # ... and both runs in one experiment of a tracker

Writes comparison.md, comparison.json and comparison_loss.png into --out (default: the runs' root folder). With
--run --report-to, both runs are filed in one experiment (MLflow), project (W&B, Trackio) or logdir (TensorBoard),
named by backend and settings, the comparison's verdict with them, and the summary prints the command that opens it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from llama_lora.backend import BACKENDS
from llama_lora.options import tracking
from llama_lora.options.config import OUTPUT_ROOT
from llama_lora.run.compare import compare, load_run, to_markdown, write_report

REPO = Path(__file__).resolve().parent


def training_commands(root: Path, flags: tuple[str, ...]) -> dict[str, list[str]]:
    """The command that trains each declared backend with the same flags into root/<backend>."""
    if any(flag.split("=")[0] in ("--output-dir", "--dry-run") for flag in flags):
        raise click.UsageError("--run chooses each backend's --output-dir itself (under --out); drop that flag")
    return {name: [sys.executable, str(REPO / spec.script), *flags, "--output-dir", str(root / name)]
            for name, spec in BACKENDS.items()}


def flag_value(flags: tuple[str, ...], name: str) -> str | None:
    """The value a training flag is given (`--name value` or `--name=value`; the last one wins, as in the scripts)."""
    value = None
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
    return value


def with_experiment(flags: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The flags with the experiment both runs are filed under (the user's --experiment, else a new one per
    comparison), and its name."""
    experiment = flag_value(flags, "--experiment")
    if experiment:
        return flags, experiment
    experiment = time.strftime("compare-backends-%Y%m%d-%H%M%S")
    return (*flags, "--experiment", experiment), experiment


def train_both(root: Path, flags: tuple[str, ...]) -> dict[str, Path]:
    """Train each backend in its own process (Unsloth patches libraries on import) with the same flags; the trackers
    that show one store at a time get one store under root for both (the user's own settings win)."""
    folders = {}
    names = tracking.parse(flag_value(flags, "--report-to") or "none")
    env = {**tracking.shared_environment(names, root.resolve()), **os.environ}
    for backend, command in training_commands(root, flags).items():
        folders[backend] = root / backend
        click.echo(f"\n=== training {backend}: {Path(command[1]).name} {' '.join(command[2:])}")
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            raise click.ClickException(f"the {backend} run failed with exit status {code}; nothing compared")
    return folders


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.argument("runs", nargs=-1, type=click.UNPROCESSED)
@click.option("--run", "train", is_flag=True, help="Train both backends first; other flags go to both scripts (with --report-to, both runs "
              "go into one experiment of each tracker, with the verdict).")
@click.option("--force", is_flag=True, help="Declare a faster/leaner backend even if the fairness check fails.")
@click.option("--out", type=click.Path(path_type=Path), default=OUTPUT_ROOT, show_default=True,
              help="Root of the run folders (--run) and where the comparison files go.")
def main(runs: tuple[str, ...], train: bool, force: bool, out: Path) -> None:
    """Compare run A (default: PEFT) with run B (default: Unsloth)."""
    report_to, experiment = "none", None
    if train:
        report_to = flag_value(runs, "--report-to") or "none"
        if tracking.parse(report_to):
            runs, experiment = with_experiment(runs)
        trained = train_both(out, runs)
        paths = [trained["peft"], trained["unsloth"]]
    elif any(arg.startswith("-") for arg in runs):
        raise click.UsageError(f"training flags ({' '.join(runs)}) only go with --run")
    elif runs:
        if len(runs) != 2:
            raise click.UsageError("name exactly two run folders (A, the reference, then B), or none")
        paths = [Path(arg) for arg in runs]
    else:
        paths = [out / "peft", out / "unsloth"]
    try:
        a, b = (load_run(path) for path in paths)
    except ValueError as err:
        raise click.ClickException(f"{err}\nTrain both first: python compare_backends.py --run") from err
    record = compare(a, b, force=force)
    click.echo("\n" + to_markdown(record))
    for path in write_report(a, b, record, out):
        click.echo(f"wrote {path}")
    if experiment:
        for command in tracking.log_comparison(report_to, out.resolve(), experiment, record, to_markdown(record)):
            click.echo(f"view both runs: {command}")
    if not record["fair"] and not force:
        sys.exit(3)


if __name__ == "__main__":
    main()
