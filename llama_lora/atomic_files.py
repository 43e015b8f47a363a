"""Files that make a run folder explain itself: metrics.json and the loss-curve plot."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot, headless (runs write PNGs, never open windows); imported only when a plot is drawn,
    so modules that just write files (GGUF export, samples) do not pay for matplotlib at start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix, so writers that go by it still can) to write to; renamed to
    `path` when the block ends without an error, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: a reader never sees half a file."""
    with replaced(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON, written whole."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def plot_loss(history: list[dict[str, Any]], eval_loss: dict[str, float | None], title: str, path: Path) -> None:
    """Train loss per step, with the eval loss before and after training as points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    steps = [entry["step"] for entry in history]
    ax.plot(steps, [entry["loss"] for entry in history], label="train loss", color="tab:blue", linewidth=1.5)
    last_step = steps[-1] if steps else 1
    points = [(0, eval_loss.get("before")), (last_step, eval_loss.get("after"))]
    points = [(x, y) for x, y in points if y is not None]
    if points:
        # markers only: eval is measured before and after training, nothing in between
        ax.plot(*zip(*points), "o", color="tab:orange", label="eval loss (before / after)", markersize=7)
        for x, y in points:
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (supervised tokens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
