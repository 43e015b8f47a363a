"""Compare two run folders: a fairness check first, then memory, speed and loss side by side, and a verdict
on whether the two losses are consistent.

Run A is the reference (PEFT by default) and ratios are B/A (Unsloth/PEFT by default). Everything is read
from the run folders' records, so a comparison can be redone at any time without retraining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_lora.atomic_files import replaced, write_json, write_text
from llama_lora.errors import UsageError
from llama_lora.options.config import CONFIG_FIELDS, computes, flag, recorded_path
from llama_lora.run import files, forgetting, run_record
from llama_lora.run.run_record import RunRecord

# Loss parity tolerance on the relative difference of per-step train losses, |B - A| / A, over shared steps, per
# precision. Each is derived from the spread measured between the two backends (same seed, tokens and settings):
#   16-bit LoRA  CPU bf16, 3 steps at lr 1e-3 (tests/e2e/test_end_to_end.py's runs):  mean 0.19%, max 0.56% (step 3)
#                CPU bf16, 20 steps at lr 2e-4 (README, compare_backends.py --run): mean 0.031%, max 0.114%
#                H100 bf16, 10 steps, config B (benchmarks/results/NVIDIA-H100-...): mean 0.002%, max 0.005%
#   QLoRA (NF4)  CPU, 4 steps, config A (benchmarks/results/cpu-2026-11-23.md):      mean 1.25%, max 1.82%
#                H100, 10 steps, config A (NVIDIA-H100-...):                         mean 0.66%, max 1.45%
# The worst 16-bit spread is the first loss after a real update (warm-up keeps step 1 at lr 0): Adam's first
# updates are about lr for every weight whatever its gradient's size, so bf16 rounding noise moves weights fully.
# QLoRA spreads more because each library dequantizes NF4 its own way, so even step 1 differs. Each tolerance is about 2.5x the worst spread measured for its precision: room for drift
# over runs longer than those measured, and still far below what a real difference does. The negative controls in
# tests/e2e/test_end_to_end.py, on the same 3-step runs, differ from the Unsloth run at step 3 by 20.6% (twice the
# learning rate; mean 6.9%) and 8.1% (half the LoRA alpha; mean 2.7%): both are flagged "diverged".
PARITY_TOLERANCE = {
    "16-bit": {"mean": 0.005, "max": 0.015},
    "4-bit": {"mean": 0.03, "max": 0.05},
}
SAME_WITHIN = 0.03  # speed or memory ratios closer to 1 than this name no winner


@dataclass(frozen=True)
class ComparedRun:
    """One run folder's records."""

    folder: Path
    metrics: RunRecord

    @property
    def label(self) -> str:
        backend = self.metrics.backend or "?"
        return backend if self.folder.name == backend else f"{backend} ({self.folder.name})"

    def get(self, path: str) -> Any:
        """The record's value at a dotted path (None where it has none)."""
        return self.metrics.value(path)


def load_run(folder: Path) -> ComparedRun:
    """A finished run folder, or a ValueError saying what is missing."""
    try:
        metrics = run_record.read(folder)
    except UsageError as err:
        raise ValueError(str(err)) from err
    if metrics is None:
        raise ValueError(f"{folder}: no metrics.json; is this a finished run folder?")
    if metrics.status != "completed":
        raise ValueError(f"{folder}: the run did not complete (status {metrics.status!r})")
    return ComparedRun(folder, metrics)


# What must be equal besides the options (config.py declares which options change what is computed, and where
# metrics.json shows their effect): none of these is one option. The tokens trained and evaluated on come from
# the data files' content and every data option together; the device is the machine; packing, padding-free,
# gradient clipping and the data seed are trainer settings no option sets, compared as the trainer really used
# them (a backend library may change them); the steps taken follow from --epochs/--max-steps and the data.
NOT_OPTIONS = {
    "tokenized data (hash of input ids + labels)": "data.hash",
    "device": "device.name",
    "max length (the trainer's)": "training_args.max_length",
    "packing": "training_args.packing",
    "packing strategy": "training_args.packing_strategy",
    "padding-free": "training_args.padding_free",
    "max grad norm": "training_args.max_grad_norm",
    "data seed": "training_args.data_seed",
    "steps": "steps",
}


def fairness_settings() -> dict[str, str]:
    """Every setting the fairness check compares (label -> metrics.json path): the list above, then each
    compute-changing option's recorded effect, labelled with its flag(s)."""
    flags_by_path: dict[str, list[str]] = {}
    for name in CONFIG_FIELDS:
        if computes(name):
            flags_by_path.setdefault(recorded_path(name), []).append(flag(name))
    covered = set(NOT_OPTIONS.values())
    return {**NOT_OPTIONS, **{" ".join(flags): path for path, flags in flags_by_path.items() if path not in covered}}


FAIRNESS = fairness_settings()


def fairness(a: ComparedRun, b: ComparedRun) -> list[dict[str, Any]]:
    """Every setting on which the two runs differ (an empty list: a fair comparison)."""
    return [{"setting": name, "a": a.get(path), "b": b.get(path)}
            for name, path in FAIRNESS.items() if a.get(path) != b.get(path)]


def adapter_mb(run: ComparedRun) -> float | None:
    path = run.folder / files.ADAPTER_WEIGHTS
    return round(path.stat().st_size / 1e6, 2) if path.exists() else None


# (label, metrics.json path or a getter, unit, which way is better); rows whose values are missing in both runs are
# skipped (GPU counters on a CPU run, and the reverse).
REPORT_ROWS: list[tuple[str, str | Callable[[ComparedRun], Any], str, str]] = [
    ("peak GPU allocated, after load", "memory.after_load.gpu_peak_allocated_gib", "GiB", "lower"),
    ("peak GPU reserved, after load", "memory.after_load.gpu_peak_reserved_gib", "GiB", "lower"),
    ("peak GPU allocated, training", "memory.after_training.gpu_peak_allocated_gib", "GiB", "lower"),
    ("peak GPU reserved, training", "memory.after_training.gpu_peak_reserved_gib", "GiB", "lower"),
    ("peak process RSS, after load", "memory.after_load.cpu_peak_rss_gib", "GiB", "lower"),
    ("peak process RSS, training", "memory.after_training.cpu_peak_rss_gib", "GiB", "lower"),
    ("non-padding tokens/s", "tokens.per_second", "tok/s", "higher"),
    ("training time", "runtime_s.train", "s", "lower"),
    ("wall time, whole run", "runtime_s.total", "s", "lower"),
    ("final train loss", "final_train_loss", "", "lower"),
    ("eval loss before", "eval_loss.before", "", "lower"),
    ("eval loss after", "eval_loss.after", "", "lower"),
    ("general-text loss before", "forgetting.before", "", "lower"),
    ("general-text loss after", "forgetting.after", "", "lower"),
    ("trainable parameters", "parameters.trainable", "", "equal"),
    ("adapter size on disk", adapter_mb, "MB", "equal"),
]
REPORT_PATHS = [getter for _, getter, _, _ in REPORT_ROWS if isinstance(getter, str)]


def relative_differences(a: dict[int, float], b: dict[int, float]) -> tuple[list[int], list[float]]:
    """|b - a| / |a| at each step both have (steps where a is 0 left out), and those steps."""
    steps = [s for s in sorted(set(a) & set(b)) if a[s]]
    return steps, [abs(b[s] - a[s]) / abs(a[s]) for s in steps]


def precision(a: ComparedRun, b: ComparedRun) -> str:
    """Which parity tolerance applies: 4-bit when either run is QLoRA (the looser one; fairness flags a mix)."""
    return "4-bit" if a.metrics.load_in_4bit or b.metrics.load_in_4bit else "16-bit"


def loss_parity(a: ComparedRun, b: ComparedRun, tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Mean and max relative difference of the per-step train losses over the steps both runs logged, judged
    against the tolerance of the runs' precision unless one is given."""
    tolerance = tolerance or PARITY_TOLERANCE[precision(a, b)]
    losses_a = {h["step"]: h["loss"] for h in a.metrics.loss_history or []}
    losses_b = {h["step"]: h["loss"] for h in b.metrics.loss_history or []}
    steps, diffs = relative_differences(losses_a, losses_b)
    if not diffs:
        return {"steps": 0, "verdict": "no shared steps", "precision": precision(a, b), "tolerance": tolerance}
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    return {
        "steps": len(steps),
        "mean_relative_difference": round(mean, 6),
        "max_relative_difference": round(worst, 6),
        "max_at_step": steps[diffs.index(worst)],
        "per_step": [{"step": s, "a": losses_a[s], "b": losses_b[s], "relative_difference": round(d, 6)}
                     for s, d in zip(steps, diffs)],
        "precision": precision(a, b),
        "tolerance": tolerance,
        "verdict": "consistent" if mean <= tolerance["mean"] and worst <= tolerance["max"] else "diverged",
    }


def compare(a: ComparedRun, b: ComparedRun, force: bool = False) -> dict[str, Any]:
    """The whole comparison record (what comparison.json holds)."""
    mismatches = fairness(a, b)
    rows = []
    for label, getter, unit, better in REPORT_ROWS:
        va, vb = (run.get(getter) if isinstance(getter, str) else getter(run) for run in (a, b))
        if va is None and vb is None:
            continue
        ratio = round(vb / va, 3) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        rows.append({"metric": label, "unit": unit, "a": va, "b": vb, "ratio_b_over_a": ratio, "better": better})
    fair = not mismatches
    return {
        "a": {"label": a.label, "folder": str(a.folder)},
        "b": {"label": b.label, "folder": str(b.folder)},
        "device": a.get("device.name"),
        "fair": fair,
        "mismatches": mismatches,
        "rows": rows,
        "loss_parity": loss_parity(a, b),
        "forgetting": {"a": _forgetting_line(a), "b": _forgetting_line(b)},
        "verdict": _verdict(a, b, rows, fair or force, forced=force and not fair),
    }


def _forgetting_line(run: ComparedRun) -> str | None:
    """The run's forgetting check in one line (None for a record written before runs made it)."""
    return forgetting.summary(run.metrics.forgetting) if run.metrics.forgetting else None


def _verdict(a: ComparedRun, b: ComparedRun, rows: list[dict[str, Any]], allowed: bool, forced: bool) -> str:
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
    """Numbers as a reader wants them: GiB to 2 decimals, seconds and tokens/s to 1, losses to 4."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    digits = {"GiB": 2, "MB": 1, "s": 1, "tok/s": 1, "x": 2}.get(unit, 4)
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
            f"{100 * tol['mean']:g}% mean / {100 * tol['max']:g}% max ({parity['precision']}).")
    else:
        lines.append("**Loss parity:** no shared logged steps.")
    checks = record.get("forgetting") or {}
    if any(checks.values()):
        lines += ["", "**Forgetting check** (cross-entropy on the bundled general-text sample, before -> after "
                  "training):", ""]
        lines += [f"- {record[side]['label']}: {checks[side] or 'not measured'}" for side in ("a", "b")]
    return "\n".join(lines) + "\n"


def plot(a: ComparedRun, b: ComparedRun, record: dict[str, Any], path: Path) -> None:
    """Both train-loss curves with their eval points, and the relative difference per step beneath."""
    from llama_lora.run.plots import pyplot

    plt = pyplot()

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    # A wide pale line under a thin dashed one: two curves that coincide both stay visible.
    styles = ((a, {"color": "tab:blue", "linewidth": 4, "alpha": 0.45}, "o"),
              (b, {"color": "tab:red", "linewidth": 1.3, "linestyle": "--"}, "s"))
    for run, style, marker in styles:
        history = run.metrics.loss_history or []
        steps = [h["step"] for h in history]
        top.plot(steps, [h["loss"] for h in history], label=f"{run.label} train", **style)
        ends = ((0, run.get("eval_loss.before")), (steps[-1] if steps else 1, run.get("eval_loss.after")))
        points = [(x, y) for x, y in ends if y is not None]
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


def write_report(a: ComparedRun, b: ComparedRun, record: dict[str, Any], out_dir: Path) -> list[Path]:
    """comparison.md, comparison.json and comparison_loss.png, each written whole then renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / "comparison.md", out_dir / "comparison.json", out_dir / "comparison_loss.png"]
    write_text(targets[0], to_markdown(record))
    write_json(targets[1], record)
    with replaced(targets[2]) as tmp:
        plot(a, b, record, tmp)
    return targets
