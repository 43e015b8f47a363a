"""Plots a run folder and a comparison hold, drawn headless with matplotlib (imported only when one is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot, headless (runs write PNGs, never open windows); imported only when a plot is drawn,
    so modules that just write files (GGUF export, samples) do not pay for matplotlib at start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
