"""Does the default run teach? Both backends, several seeds, every held-out prompt scored before and after.

    python benchmarks/learning.py                                  # the resolved defaults, seeds 42, 1, 2
    python benchmarks/learning.py --seeds 1,2 --backends peft      # a subset
    python benchmarks/learning.py --train-flags "--max-steps -1 --epochs 3"   # e.g. on a GPU: longer training

Each backend trains on the bundled data through its own entry script (the command a user runs), with the resolved
defaults and one seed per run. This process (plain transformers + PEFT, never Unsloth) then answers *all* held-out
eval prompts greedily with the base model, once (its greedy answers depend on neither the seed nor the backend),
and with each run's adapter. Scoring every adapter through the same loader means the figures compare what each
backend trained, not two inference paths. The style checks are samples.STYLE_CHECKS; eval loss comes from each run's
metrics.json. Runs go seed by seed, both backends each, and the results are written after every run, to
benchmarks/results/learning-<device>-<date>.json and .md with the command.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama_lora.backend import BACKENDS
from llama_lora.run import files
from llama_lora.train.samples import STYLE_CHECKS

SCRIPTS = {name: REPO / spec.script for name, spec in BACKENDS.items()}

# The backends' quality agrees when their mean pass rates over seeds differ by at most this share of the prompts
# on every style check (0.15 of 34 prompts is 5 answers), and their mean eval loss after training by at most
# EVAL_LOSS_TOLERANCE. Both backends train the same tokens from the same seeded initialisation (their per-step
# losses agree within compare.PARITY_TOLERANCE), so a larger gap means a backend computes something else.
STYLE_TOLERANCE = 0.15
EVAL_LOSS_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------- report logic

def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend's figures over its seeds: each style check's pass rate after training, and the eval loss."""
    return {
        "style_after": {name: spread([run["style_after"][name] for run in runs]) for name in STYLE_CHECKS},
        "eval_loss_after": spread([run["eval_loss"]["after"] for run in runs]),
        "eval_loss_drop": spread([run["eval_loss"]["before"] - run["eval_loss"]["after"] for run in runs]),
        "train_s": spread([run["train_s"] for run in runs]),
    }


def verdict(summaries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Whether two backends' quality agrees within the stated tolerances (None with fewer than two)."""
    if len(summaries) < 2:
        return None
    (name_a, a), (name_b, b) = list(summaries.items())[:2]
    gaps = {name: round(abs(a["style_after"][name]["mean"] - b["style_after"][name]["mean"]), 4)
            for name in STYLE_CHECKS}
    loss_gap = round(abs(a["eval_loss_after"]["mean"] - b["eval_loss_after"]["mean"]), 4)
    agree = all(gap <= STYLE_TOLERANCE for gap in gaps.values()) and loss_gap <= EVAL_LOSS_TOLERANCE
    return {"backends": [name_a, name_b], "style_gaps": gaps, "eval_loss_gap": loss_gap,
            "style_tolerance": STYLE_TOLERANCE, "eval_loss_tolerance": EVAL_LOSS_TOLERANCE, "agree": agree}


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def _share(value: float, total: int) -> str:
    return f"{value:.0%} ({round(value * total)}/{total})"


def _mean_std(s: dict[str, Any], fmt: str = ".0%") -> str:
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}} (min {s['min']:{fmt}}, max {s['max']:{fmt}})"


def to_markdown(result: dict[str, Any]) -> str:
    """The committed report: set-up, the base model's rates, per-backend mean and spread, per-run rows, verdict."""
    n = result["prompts"]
    setup = (f"Model {result['model']}, bundled data, {n} held-out eval prompts (all of them) answered greedily with "
             f"at most {result['max_new_tokens']} new tokens. Training flags beyond the defaults: "
             f"`{result['train_flags'] or '(none)'}`. Load average (1, 5, 15 min) before / after: "
             f"{result['loadavg']['before']} / {result['loadavg']['after']} ({result['environment']['cpus']} CPUs"
             f"{'; the machine was shared with other jobs' if result['shared'] else ''}).")
    lines = [f"# Learning benchmark: {result['environment']['device']}, {result['date']}", "",
             "Commands: " + "; ".join(f"`{c}`" for c in result["commands"]), "", setup, "",
             "## Style pass rates over all held-out prompts", "",
             "| check | reference answers | base (before) | " + " | ".join(
                 f"{b} after, mean ± std over {len(result['runs'][b])} seeds" for b in result["summary"]) + " |",
             "|---|---|---|" + "---|" * len(result["summary"])]
    for name, (title, _) in STYLE_CHECKS.items():
        cells = [_share(result["reference"][name], n), _share(result["base"][name], n)]
        cells += [_mean_std(s["style_after"][name]) for s in result["summary"].values()]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "## Eval loss and training time", "",
              "| backend | eval loss before | eval loss after (mean ± std) | drop (mean) | training s (mean ± std) |",
              "|---|---|---|---|---|"]
    for backend, s in result["summary"].items():
        before = result["runs"][backend][0]["eval_loss"]["before"]
        lines.append(f"| {backend} | {before:.3f} | {_mean_std(s['eval_loss_after'], '.3f')} | "
                     f"{s['eval_loss_drop']['mean']:.3f} | {_mean_std(s['train_s'], '.0f')} |")
    lines += ["", "## Every run", "",
              ("Wall time is the whole training command (loading, evaluations, the run's own 4 samples, saving); "
              "training time leaves out the evaluations during training, which are listed apart."), "",
              "| backend | seed | " + " | ".join(STYLE_CHECKS) + " | eval loss at steps 0, ... | training s | "
              "evals during training s | samples s | wall s |", "|---|---|" + "---|" * (len(STYLE_CHECKS) + 5)]
    for backend, runs in result["runs"].items():
        for run in runs:
            curve = [f"{run['eval_loss']['before']:.3f}"] + [f"{loss:.3f}" for _, loss in run["eval_curve"]]
            lines.append(f"| {backend} | {run['seed']} | " + " | ".join(
                f"{round(run['style_after'][name] * n)}/{n}" for name in STYLE_CHECKS) +
                f" | {', '.join(curve)} | {run['train_s']:.0f} | {run['eval_during_training_s'] or 0:.0f} | "
                f"{run['samples_s'] or 0:.0f} | {run['wall_s']:.0f} |")
    examples = result["examples"]
    lines += ["", f"## The first held-out prompt ({examples['where']}), answered", "", "Base model:", "",
              _fence(examples["base"])]
    for name, text in examples.items():
        if name not in ("where", "base"):
            lines += ["", f"{name}:", "", _fence(text)]
    v = result["verdict"]
    if v:
        gaps = ", ".join(f"{name} {gap:.0%}" for name, gap in v["style_gaps"].items())
        lines += ["", "## Do the backends agree?", "",
                  (f"{'Yes' if v['agree'] else 'No'}: the gaps between the backends' mean pass rates are {gaps} "
                   f"(tolerance {v['style_tolerance']:.0%} each), and between their mean eval losses after training "
                   f"{v['eval_loss_gap']:.3f} (tolerance {v['eval_loss_tolerance']}).")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- running it

def train(backend: str, seed: int, work: Path, flags: list[str]) -> dict[str, Any]:
    """One training run through the backend's entry script: the command a user runs (samples, evaluations and
    all), with only the seed and the output folder added, so its wall time is the first command's."""
    out = work / f"{backend}-seed{seed}"
    log = work / f"{backend}-seed{seed}.log"
    args = [sys.executable, str(SCRIPTS[backend]), "--seed", str(seed), "--output-dir", str(out), "--overwrite",
            *flags]
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True, check=False)
    wall = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise click.ClickException(f"{backend} seed {seed} failed (exit {done.returncode}); see {log}")
    metrics = json.loads((out / files.METRICS).read_text())
    runtime = metrics["runtime_s"]
    return {"seed": seed, "folder": str(out), "wall_s": wall, "train_s": runtime["train"],
            "eval_during_training_s": runtime.get("eval_during_training"), "samples_s": runtime.get("samples"),
            "eval_loss": {k: metrics["eval_loss"][k] for k in ("before", "after")},
            "eval_curve": [(e["step"], round(e["eval_loss"], 4)) for e in metrics["eval_loss"].get("during", [])],
            "steps": metrics["steps"], "tokens_per_s": metrics["tokens"]["per_second"],
            "samples_4": metrics.get("samples") and metrics["samples"]["style"],
            "command": shlex.join(["python", *[str(Path(a).relative_to(REPO)) if a.startswith(str(REPO)) else a
                                              for a in args[1:]]])}


class Scorer:
    """Every held-out eval prompt answered greedily: by the base model once (its answers depend on neither the
    seed nor the backend), then by each run's adapter, all through plain transformers + PEFT."""

    def __init__(self, first: Path, max_new_tokens: int):
        from llama_lora.data.prepare import prepare
        from llama_lora.options.config import build, load_yaml
        from llama_lora.train.samples import held_out, style_shares
        from llama_lora.use.inference import Sampling, generate, load_base, load_tokenizer, read_run, stop_ids

        self.base = load_base(read_run(first))
        self.tokenizer = load_tokenizer(first)
        rows = prepare(build(load_yaml(first / files.CONFIG)), self.tokenizer).eval.rows
        self.items = held_out(rows, len(rows), self.tokenizer, stop_ids(self.base, self.tokenizer))
        self.sampling = Sampling(max_new_tokens=max_new_tokens)
        self._generate, self._shares = generate, style_shares
        self.reference = style_shares([item.reference for item in self.items])
        answers = self.answers(self.base)
        self.base_shares, self.base_first = style_shares(answers), answers[0].text

    def answers(self, model: Any) -> list[Any]:
        return self._generate(model, self.tokenizer, [item.prompt_ids for item in self.items], self.sampling)

    def adapter(self, folder: Path) -> tuple[dict[str, float], str]:
        """The style shares of one run's adapter, and its answer to the first prompt."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(self.base, folder).eval()
        answers = self.answers(model)
        self.base = model.unload()  # the plain base model again, for the next adapter
        return self._shares(answers), answers[0].text


def environment() -> dict[str, Any]:
    import importlib.metadata
    import platform

    import torch

    libraries = {}
    for name in ("torch", "transformers", "trl", "peft", "unsloth"):
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()})"
    return {"device": device, "cpus": os.cpu_count(), "libraries": libraries}


def _loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages (Linux)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def shared(before: list[float], after: list[float], cpus: int) -> bool:
    """Whether other jobs ran: load before this benchmark started, or more than its own cores' worth after."""
    return before[0] > 0.5 or after[0] > cpus + 0.5


@click.command()
@click.option("--backends", default="peft,unsloth", show_default=True)
@click.option("--seeds", default="42,1,2", show_default=True,
              help="Comma-separated training seeds (42 is the default one: that run is the README's first command).")
@click.option("--train-flags", default="", help="Extra flags for every training run (default: the resolved defaults).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True,
              help="New tokens per answer, as the run's own samples use (--sample-max-tokens).")
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/.work/learning"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(backends: str, seeds: str, train_flags: str, max_new_tokens: int, work: Path, out: Path) -> None:
    from llama_lora.atomic_files import write_report

    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    result: dict[str, Any] = {
        "commands": ["python benchmarks/learning.py " + shlex.join(sys.argv[1:])],
        "date": time.strftime("%Y-%m-%d"), "environment": env, "train_flags": train_flags,
        "max_new_tokens": max_new_tokens, "loadavg": {"before": _loadavg(), "after": None}, "runs": {},
    }
    device = "cpu" if env["device"].startswith("CPU") else env["device"].replace(" ", "-")
    stem = out / f"learning-{device}-{result['date']}"
    scorer = None
    # seed by seed, both backends each time: a benchmark stopped early still holds a comparable pair
    for seed in (int(s) for s in seeds.split(",")):
        for backend in backends.split(","):
            run = train(backend, seed, work, shlex.split(train_flags))
            if scorer is None:
                scorer = Scorer(Path(run["folder"]), max_new_tokens)
                result.update(model=json.loads((Path(run["folder"]) / files.METRICS).read_text())["model"]["name"],
                              prompts=len(scorer.items), reference=scorer.reference, base=scorer.base_shares,
                              examples={"where": scorer.items[0].where, "base": scorer.base_first})
            run["style_after"], result["examples"][f"{backend}-seed{seed}"] = scorer.adapter(Path(run["folder"]))
            result["runs"].setdefault(backend, []).append(run)
            print(json.dumps({backend: run}), flush=True)
            summary = {b: summarise(rs) for b, rs in result["runs"].items()}
            after = _loadavg()
            result.update(summary=summary, verdict=verdict(summary),
                          shared=shared(result["loadavg"]["before"], after, env["cpus"]))
            result["loadavg"]["after"] = after
            write_report(stem, result, to_markdown(result))  # after every run, so a stopped benchmark keeps what it measured
    print(to_markdown(result))


if __name__ == "__main__":
    main()
