"""Compare the Unsloth and PEFT backends fairly: a fairness check, a side-by-side report, a loss-parity verdict.

    python compare_backends.py                              # compare the two default run folders
    python compare_backends.py --run --max-steps 20 --r 16  # train both with the same flags, then compare
    python compare_backends.py runs/a runs/b                # any two run folders (A is the reference)

Writes comparison.md, comparison.json and comparison_loss.png into --out (default: the runs' root folder).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from llama_lora.backend import BACKENDS
from llama_lora.options.config import OUTPUT_ROOT
from llama_lora.run.compare import compare, load_run, to_markdown, write_report

REPO = Path(__file__).resolve().parent


def training_commands(root: Path, flags: tuple[str, ...]) -> dict[str, list[str]]:
    """The command that trains each declared backend with the same flags into root/<backend>."""
    if any(flag.split("=")[0] in ("--output-dir", "--dry-run") for flag in flags):
        raise click.UsageError("--run chooses each backend's --output-dir itself (under --out); drop that flag")
    return {name: [sys.executable, str(REPO / spec.script), *flags, "--output-dir", str(root / name)]
            for name, spec in BACKENDS.items()}


def train_both(root: Path, flags: tuple[str, ...]) -> dict[str, Path]:
    """Train each backend in its own process (Unsloth patches libraries on import) with the same flags."""
    folders = {}
    for backend, command in training_commands(root, flags).items():
        folders[backend] = root / backend
        click.echo(f"\n=== training {backend}: {Path(command[1]).name} {' '.join(command[2:])}")
        code = subprocess.run(command).returncode
        if code != 0:
            raise click.ClickException(f"the {backend} run failed with exit status {code}; nothing compared")
    return folders


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.argument("runs", nargs=-1, type=click.UNPROCESSED)
@click.option("--run", "train", is_flag=True, help="Train both backends first; other flags go to both scripts.")
@click.option("--force", is_flag=True, help="Declare a faster/leaner backend even if the fairness check fails.")
@click.option("--out", type=click.Path(path_type=Path), default=OUTPUT_ROOT, show_default=True,
              help="Root of the run folders (--run) and where the comparison files go.")
def main(runs: tuple[str, ...], train: bool, force: bool, out: Path) -> None:
    """Compare run A (default: PEFT) with run B (default: Unsloth)."""
    if train:
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
    if not record["fair"] and not force:
        sys.exit(3)


if __name__ == "__main__":
    main()
