"""What the checks after training cost: the forgetting check inside a training run, `use_adapter.py eval` and
`use_adapter.py verify` on the finished run (a benchmark, not a test: run it on a quiet machine, the figures are
times).

    python benchmarks/eval_cost.py                          # trains the CPU demo (the PEFT script's defaults) first
    python benchmarks/eval_cost.py --run llama-3.1-lora-finetuned/peft --tasks everyday_knowledge,arc_easy
    python benchmarks/eval_cost.py --train-flags "--max-steps 2" --limit 4 --out /tmp/eval-cost   # a quick try

Without --run it trains into --work with the entry script's defaults (plus --train-flags), as a user's first command
does. The forgetting check times itself inside that run (metrics.json: forgetting.seconds, before and after
together) and is set against the run's own clock (runtime_s.total). `eval` then runs as a user runs it, in its own
process: its wall time includes starting Python and loading the model; eval.json gives each pass's own time. `verify`
(unless --no-verify) runs the same way, building its default exports itself. Both write their reports into the run
folder they check (with --run: the user's own, replacing earlier reports).
The record goes to OUT/eval-cost-<device>-<date>.json and .md with the commands and the load average before and
after (a loaded machine makes every figure larger).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama_lora.atomic_files import write_report
from llama_lora.backend import BACKENDS
from llama_lora.run import files, measure, run_record
from llama_lora.use import evaluate


def timed(args: list[str], log: Path) -> float:
    """Run a command from the repository with its output in `log`; its wall time in seconds (a failure stops here)."""
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"`{shown(args)}` failed (exit {done.returncode}); see {log}")
    return round(time.perf_counter() - started, 1)


def shown(args: list[str]) -> str:
    """A command as a user types it: `python` and paths relative to the repository."""
    return shlex.join(["python", *[os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in args[1:]]])


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded: how busy the machine was."""
    return [round(load, 2) for load in os.getloadavg()]


def forgetting_cost(run: Path) -> dict[str, Any]:
    """The run's forgetting check (as metrics.json holds it) and the run's own times."""
    record = run_record.read(run)
    if record is None or record.forgetting is None or record.forgetting.seconds is None or record.runtime_s is None:
        raise click.UsageError(f"{run / files.METRICS}: no forgetting check recorded (not a finished run of this "
                               "version)")
    return {"model": record.model.name if record.model else None, "backend": record.backend, "steps": record.steps,
            "forgetting": record.forgetting.model_dump(), "runtime_s": record.runtime_s.model_dump()}


def eval_cost(run: Path, eval_json: dict[str, Any], wall: float) -> dict[str, Any]:
    """What eval.json says about the passes (tasks, questions per task, seconds each) and the command's wall time."""
    questions = {row["task"]: row["n"] for row in eval_json["rows"]}
    return {"tasks": eval_json["settings"]["tasks"], "limit": eval_json["settings"]["limit"],
            "questions": questions, "seconds": eval_json["seconds"], "wall_s": wall,
            "table": evaluate.table(eval_json["rows"])}


def verify_cost(verify_json: dict[str, Any], wall: float) -> dict[str, Any]:
    """What verify.json says it checked (targets, prompts, verdict) and the command's wall time."""
    return {"targets": [outcome["target"] for outcome in verify_json["targets"]],
            "prompts": len(verify_json["prompts"]), "passed": verify_json["passed"], "wall_s": wall}


def to_markdown(result: dict[str, Any]) -> str:
    """The report: the forgetting check against its run, eval's two passes against the whole command."""
    check, runtime, evaluation = result["forgetting"], result["runtime_s"], result["eval"]
    questions = ", ".join(f"{task} {n}" for task, n in evaluation["questions"].items())
    lines = [
        f"# Evaluation cost: {result['device']['name']}, {result['date']}", "",
        "Commands: " + "; ".join(f"`{c}`" for c in result["commands"]), "",
        f"Run: {result['model']}, {result['backend']} backend, {result['steps']} steps. Load average (1, 5, 15 min) "
        f"before / after: {result['loadavg']['before']} / {result['loadavg']['after']} ({result['cpus']} CPUs).", "",
        "| what | seconds | share |", "|---|---|---|",
        f"| forgetting check, before + after ({check['tokens']} tokens each way) | {check['seconds']} | "
        f"{check['seconds'] / runtime['total']:.1%} of the whole run ({runtime['total']} s) |",
        f"| eval, base pass ({questions} questions) | {evaluation['seconds']['base']} | "
        f"{evaluation['seconds']['base'] / evaluation['wall_s']:.0%} of the command |",
        f"| eval, tuned pass | {evaluation['seconds']['tuned']} | "
        f"{evaluation['seconds']['tuned'] / evaluation['wall_s']:.0%} of the command |",
        f"| eval, whole command (start-up and model load included) | {evaluation['wall_s']} | |",
    ]
    if result.get("verify"):
        checked = result["verify"]
        lines.append(f"| verify, whole command ({', '.join(checked['targets'])}; built, then run on "
                     f"{checked['prompts']} prompts) | {checked['wall_s']} | |")
    if result.get("train_wall_s") is not None:
        lines.append(f"| training run, whole command | {result['train_wall_s']} | |")
    # what the timed commands found, so pages quoting these figures can cite this record
    lines += ["", "What they found:", "",
              f"Forgetting check: {check['before']:.4f} -> {check['after']:.4f} nats per token "
              f"({check['perplexity_change']:+.1%} perplexity): {check['reading']}.", "", *evaluation["table"]]
    if result.get("verify"):
        lines += ["", f"verify: {'every target passed' if result['verify']['passed'] else 'a target failed'}."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--run", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A finished run folder to evaluate (default: train the CPU demo into --work first).")
@click.option("--train-flags", default="", help="Extra flags for the training run (default: the resolved defaults).")
@click.option("--tasks", default="everyday_knowledge", show_default=True, help="eval's --tasks.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="eval's --limit (default: every question).")
@click.option("--verify/--no-verify", "with_verify", default=True, show_default=True,
              help="Time use_adapter.py verify on the run too.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/.work/eval-cost"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(run: Path | None, train_flags: str, tasks: str, limit: int | None, with_verify: bool, work: Path,
         out: Path) -> None:
    """Time the forgetting check of a training run, and `use_adapter.py eval` and `verify` on it; write the record."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"commands": ["python benchmarks/eval_cost.py " + shlex.join(sys.argv[1:])],
                              "date": time.strftime("%Y-%m-%d"), "device": measure.device_info(),
                              "cpus": os.cpu_count(), "loadavg": {"before": loadavg(), "after": None}}
    if run is None:
        run = work / "peft"
        train = [sys.executable, str(REPO / BACKENDS["peft"].script), "--output-dir", str(run), "--overwrite",
                 *shlex.split(train_flags)]
        result["train_wall_s"] = timed(train, work / "train.log")
        result["commands"].append(shown(train))
    run = run.resolve()
    result.update(forgetting_cost(run))
    evaluate = [sys.executable, str(REPO / "use_adapter.py"), "eval", str(run), "--tasks", tasks,
                *(["--limit", str(limit)] if limit else [])]
    wall = timed(evaluate, work / "eval.log")
    result["commands"].append(shown(evaluate))
    result["eval"] = eval_cost(run, json.loads((run / files.EVAL_JSON).read_text()), wall)
    if with_verify:
        check = [sys.executable, str(REPO / "use_adapter.py"), "verify", str(run)]
        wall = timed(check, work / "verify.log")
        result["commands"].append(shown(check))
        result["verify"] = verify_cost(json.loads((run / files.VERIFY_RECORD).read_text()), wall)
    result["loadavg"]["after"] = loadavg()
    device = "cpu" if result["device"]["type"] == "cpu" else result["device"]["name"].replace(" ", "-")
    stem = out / f"eval-cost-{device}-{result['date']}"
    write_report(stem, result, to_markdown(result))
    click.echo(to_markdown(result))
    click.echo(f"Written: {stem}.md and .json")


if __name__ == "__main__":
    main()
