"""Compare two run folders: a fairness check first, then memory, speed and loss side by side, and a verdict
on whether the two losses are consistent.

Run A is the reference (PEFT by default) and ratios are B/A (Unsloth/PEFT by default). Everything is read
from the run folders' records, so a comparison can be redone at any time without retraining.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Loss parity tolerance on the relative difference of per-step train losses, |B - A| / A, over shared steps.
# Measured on CPU (fp32/bf16, same seed, same tokens): at most 0.1%. On GPU the backends differ by design in
# kernels (Unsloth's fused Triton cross-entropy, RoPE and RMSNorm vs eager PyTorch), bf16 rounding of every
# matmul (~0.4% per value), and for QLoRA each library's dequantization path; published side-by-side runs of
# these libraries drift apart by one or two percent over a few hundred steps. 2% mean / 5% max separates that
# drift from a real difference (a wrong mask, another learning rate, other data moves losses by 10% or more).
PARITY_TOLERANCE = {"mean": 0.02, "max": 0.05}
SAME_WITHIN = 0.03  # speed or memory ratios closer to 1 than this name no winner


@dataclass(frozen=True)
class Run:
    """One run folder's records."""

    folder: Path
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        backend = self.metrics.get("backend", "?")
        return backend if self.folder.name == backend else f"{backend} ({self.folder.name})"


def load_run(folder: Path) -> Run:
    """A finished run folder, or a ValueError saying what is missing."""
    path = folder / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no metrics.json; is this a finished run folder?")
    metrics = json.loads(path.read_text())
    if metrics.get("status") != "completed":
        raise ValueError(f"{folder}: the run did not complete (status {metrics.get('status')!r})")
    return Run(folder, metrics)


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


# Everything that must be equal for a speed, memory or loss comparison to mean anything.
FAIRNESS = {
    "model": "model.name",
    "tokenized data (hash of input ids + labels)": "data.hash",
    "4-bit base": "load_in_4bit",
    "dtype": "dtype",
    "device": "device.name",
    "max length": "training_args.max_length",
    "packing": "training_args.packing",
    "padding-free": "training_args.padding_free",
    "gradient checkpointing": "training_args.gradient_checkpointing",
    "optimizer": "training_args.optim",
    "learning rate": "training_args.learning_rate",
    "schedule": "training_args.lr_scheduler_type",
    "warm-up": "training_args.warmup_steps",
    "weight decay": "training_args.weight_decay",
    "max grad norm": "training_args.max_grad_norm",
    "batch size": "training_args.per_device_train_batch_size",
    "gradient accumulation": "training_args.gradient_accumulation_steps",
    "seed": "training_args.seed",
    "data seed": "training_args.data_seed",
    "steps": "steps",
    "eval steps": "config.eval_steps",
    "LoRA r": "config.r",
    "LoRA alpha": "config.lora_alpha",
    "LoRA dropout": "config.lora_dropout",
    "LoRA target modules": "config.target_modules",
    "rsLoRA": "config.use_rslora",
    "DoRA": "config.use_dora",
}


def fairness(a: Run, b: Run) -> list[dict[str, Any]]:
    """Every setting on which the two runs differ (an empty list: a fair comparison)."""
    return [{"setting": name, "a": _get(a.metrics, path), "b": _get(b.metrics, path)}
            for name, path in FAIRNESS.items() if _get(a.metrics, path) != _get(b.metrics, path)]


def adapter_mb(run: Run) -> float | None:
    path = run.folder / "adapter_model.safetensors"
    return round(path.stat().st_size / 1e6, 2) if path.exists() else None


def _memory(phase: str, key: str) -> Callable[[Run], Any]:
    return lambda run: _get(run.metrics, f"memory.{phase}.{key}")


# (label, getter, unit, which way is better); rows whose values are missing in both runs are skipped
# (GPU counters on a CPU run, and the reverse).
REPORT_ROWS: list[tuple[str, Callable[[Run], Any], str, str]] = [
    ("peak GPU allocated, after load", _memory("after_load", "gpu_peak_allocated_gb"), "GB", "lower"),
    ("peak GPU reserved, after load", _memory("after_load", "gpu_peak_reserved_gb"), "GB", "lower"),
    ("peak GPU allocated, training", _memory("after_training", "gpu_peak_allocated_gb"), "GB", "lower"),
    ("peak GPU reserved, training", _memory("after_training", "gpu_peak_reserved_gb"), "GB", "lower"),
    ("peak process RSS, after load", _memory("after_load", "cpu_peak_rss_gb"), "GB", "lower"),
    ("peak process RSS, training", _memory("after_training", "cpu_peak_rss_gb"), "GB", "lower"),
    ("non-padding tokens/s", lambda r: _get(r.metrics, "tokens.per_second"), "tok/s", "higher"),
    ("training time", lambda r: _get(r.metrics, "runtime_s.train"), "s", "lower"),
    ("wall time, whole run", lambda r: _get(r.metrics, "runtime_s.total"), "s", "lower"),
    ("final train loss", lambda r: _get(r.metrics, "final_train_loss"), "", "lower"),
    ("eval loss before", lambda r: _get(r.metrics, "eval_loss.before"), "", "lower"),
    ("eval loss after", lambda r: _get(r.metrics, "eval_loss.after"), "", "lower"),
    ("trainable parameters", lambda r: _get(r.metrics, "parameters.trainable"), "", "equal"),
    ("adapter size on disk", adapter_mb, "MB", "equal"),
]


def loss_parity(a: Run, b: Run, tolerance: dict[str, float] = PARITY_TOLERANCE) -> dict[str, Any]:
    """Mean and max relative difference of the per-step train losses over the steps both runs logged."""
    losses_a = {h["step"]: h["loss"] for h in a.metrics.get("loss_history", [])}
    losses_b = {h["step"]: h["loss"] for h in b.metrics.get("loss_history", [])}
    steps = sorted(set(losses_a) & set(losses_b))
    diffs = [abs(losses_b[s] - losses_a[s]) / abs(losses_a[s]) for s in steps if losses_a[s]]
    if not diffs:
        return {"steps": 0, "verdict": "no shared steps", "tolerance": tolerance}
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    return {
        "steps": len(steps),
        "mean_relative_difference": round(mean, 6),
        "max_relative_difference": round(worst, 6),
        "max_at_step": steps[diffs.index(worst)],
        "per_step": [{"step": s, "a": losses_a[s], "b": losses_b[s], "relative_difference": round(d, 6)}
                     for s, d in zip(steps, diffs)],
        "tolerance": tolerance,
        "verdict": "consistent" if mean <= tolerance["mean"] and worst <= tolerance["max"] else "diverged",
    }


def compare(a: Run, b: Run, force: bool = False) -> dict[str, Any]:
    """The whole comparison record (what comparison.json holds)."""
    mismatches = fairness(a, b)
    rows = []
    for label, get, unit, better in REPORT_ROWS:
        va, vb = get(a), get(b)
        if va is None and vb is None:
            continue
        ratio = round(vb / va, 3) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        rows.append({"metric": label, "unit": unit, "a": va, "b": vb, "ratio_b_over_a": ratio, "better": better})
    fair = not mismatches
    return {
        "a": {"label": a.label, "folder": str(a.folder)},
        "b": {"label": b.label, "folder": str(b.folder)},
        "device": _get(a.metrics, "device.name"),
        "fair": fair,
        "mismatches": mismatches,
        "rows": rows,
        "loss_parity": loss_parity(a, b),
        "verdict": _verdict(a, b, rows, fair or force, forced=force and not fair),
    }


def _verdict(a: Run, b: Run, rows: list[dict[str, Any]], allowed: bool, forced: bool) -> str:
    """One sentence on speed and memory, or why there is none."""
    if not allowed:
        return "no winner declared: the runs differ in the settings listed (use --force to compare anyway)"
    by_metric = {row["metric"]: row for row in rows}
    speed = by_metric.get("non-padding tokens/s", {}).get("ratio_b_over_a")
    memory = next((by_metric[m]["ratio_b_over_a"] for m in ("peak GPU reserved, training", "peak process RSS, training")
                   if m in by_metric and by_metric[m]["ratio_b_over_a"]), None)
    parts = []
    if speed and abs(speed - 1) < SAME_WITHIN:
        parts.append(f"equally fast (within {SAME_WITHIN:.0%})")
    elif speed:
        faster, factor = (b, speed) if speed > 1 else (a, 1 / speed)
        parts.append(f"{faster.label} is {factor:.2f}x as fast")
    if memory and abs(memory - 1) < SAME_WITHIN:
        parts.append(f"equal peak memory (within {SAME_WITHIN:.0%})")
    elif memory:
        leaner, share = (b, memory) if memory < 1 else (a, 1 / memory)
        parts.append(f"{leaner.label} peaks at {share:.0%} of the other's memory")
    prefix = "FORCED despite unfair settings: " if forced else ""
    return prefix + ("; ".join(parts) if parts else "nothing to compare")


def _fmt(value: Any, unit: str = "") -> str:
    """Numbers as a reader wants them: GB to 2 decimals, seconds and tokens/s to 1, losses to 4."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    digits = {"GB": 2, "MB": 1, "s": 1, "tok/s": 1, "x": 2}.get(unit, 4)
    return f"{value:,.{digits}f}"


def to_markdown(record: dict[str, Any]) -> str:
    """comparison.md: the table, the fairness check and the loss-parity verdict."""
    a, b = record["a"]["label"], record["b"]["label"]
    lines = [f"# {b} vs {a}", "", f"Device: {record['device']}", ""]
    if record["fair"]:
        lines += [f"Fairness check: passed ({len(FAIRNESS)} settings equal, including the tokenized-data hash).", ""]
    else:
        lines += ["Fairness check: **FAILED**, the runs differ in:", "", "| setting | A | B |", "|---|---|---|"]
        lines += [f"| {m['setting']} | {_fmt(m['a'])} | {_fmt(m['b'])} |" for m in record["mismatches"]]
        lines.append("")
    lines += [f"| metric | A: {a} | B: {b} | B/A |", "|---|---|---|---|"]
    for row in record["rows"]:
        unit = f" ({row['unit']})" if row["unit"] else ""
        lines.append(f"| {row['metric']}{unit} | {_fmt(row['a'], row['unit'])} | {_fmt(row['b'], row['unit'])} | "
                     f"{_fmt(row['ratio_b_over_a'], 'x')} |")
    parity = record["loss_parity"]
    lines += ["", f"**Verdict:** {record['verdict']}.", ""]
    if parity["steps"]:
        tol = parity["tolerance"]
        lines.append(
            f"**Loss parity: {parity['verdict']}.** Over {parity['steps']} shared steps the per-step train losses "
            f"differ by {parity['mean_relative_difference']:.3%} on average and at most "
            f"{parity['max_relative_difference']:.3%} (step {parity['max_at_step']}); tolerance "
            f"{tol['mean']:.0%} mean / {tol['max']:.0%} max.")
    else:
        lines.append("**Loss parity:** no shared logged steps.")
    return "\n".join(lines) + "\n"


def plot(a: Run, b: Run, record: dict[str, Any], path: Path) -> None:
    """Both train-loss curves with their eval points, and the relative difference per step beneath."""
    from llama_lora.records import pyplot

    plt = pyplot()

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    # A wide pale line under a thin dashed one: two curves that coincide both stay visible.
    styles = ((a, {"color": "tab:blue", "linewidth": 4, "alpha": 0.45}, "o"),
              (b, {"color": "tab:red", "linewidth": 1.3, "linestyle": "--"}, "s"))
    for run, style, marker in styles:
        history = run.metrics.get("loss_history", [])
        steps = [h["step"] for h in history]
        top.plot(steps, [h["loss"] for h in history], label=f"{run.label} train", **style)
        ev = run.metrics.get("eval_loss", {})
        points = [(x, y) for x, y in ((0, ev.get("before")), (steps[-1] if steps else 1, ev.get("after")))
                  if y is not None]
        if points:
            top.plot(*zip(*points), marker, color=style["color"], markersize=8 if marker == "o" else 5,
                     markerfacecolor="none", linestyle="none", label=f"{run.label} eval (before / after)")
    top.set_ylabel("cross-entropy loss")
    top.set_title(f"{b.label} vs {a.label}: loss parity {record['loss_parity']['verdict']}", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    per_step = record["loss_parity"].get("per_step", [])
    diffs = [100 * p["relative_difference"] for p in per_step]
    bottom.plot([p["step"] for p in per_step], diffs, color="tab:gray", marker=".", linewidth=1)
    tolerance = 100 * record["loss_parity"]["tolerance"]["max"]
    top_of_scale = max(diffs, default=0) * 1.6 or 0.1
    if tolerance <= top_of_scale:
        bottom.axhline(tolerance, color="tab:red", linestyle="--", linewidth=1, label="tolerance (max)")
        bottom.legend(fontsize=8)
    else:  # a line at 5% would flatten differences of 0.1% into the axis
        bottom.text(0.99, 0.9, f"tolerance {tolerance:g}% (off scale)", transform=bottom.transAxes,
                    ha="right", va="top", fontsize=8, color="tab:red")
    bottom.set_ylim(0, min(max(top_of_scale, 0.05), max(tolerance * 1.1, top_of_scale)))
    bottom.set_ylabel("|B - A| / A (%)")
    bottom.set_xlabel("optimizer step")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(a: Run, b: Run, record: dict[str, Any], out_dir: Path) -> list[Path]:
    """comparison.md, comparison.json and comparison_loss.png, each written whole then renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / "comparison.md", out_dir / "comparison.json", out_dir / "comparison_loss.png"]
    staged = [path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}") for path in targets]
    try:
        staged[0].write_text(to_markdown(record))
        staged[1].write_text(json.dumps(record, indent=2) + "\n")
        plot(a, b, record, staged[2])
        for tmp, path in zip(staged, targets):
            tmp.replace(path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    return targets
