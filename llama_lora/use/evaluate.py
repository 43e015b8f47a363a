"""Score a run's model with and without its adapter through lm-evaluation-harness, side by side.

Both passes run on one loaded model (the run's base, as it trained, plus the adapter; the base pass disables the
adapter), with the same tasks, few-shot setting, batch size and seeds, so the only difference is the adapter. The
report gives each task's metric for both, the change, and the change's standard error. Where lm-eval logs a
per-question score (every mean metric: acc, acc_norm, exact_match, ...), the standard error is the paired one,
from the per-question differences: both passes answer the same questions, so this is tighter than combining the
two standard errors, which is what a group's figure (aggregated by lm-eval) gets.

Tasks are lm-eval task names (any task lm-eval knows; its data comes from the hub, or the datasets cache when
offline), task YAML files, or the bundled tasks in data/eval_tasks/ by name, which run offline anywhere.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from llama_lora.atomic_files import write_json, write_text
from llama_lora.errors import UsageError
from llama_lora.options.config import REPO_ROOT
from llama_lora.run import files

BUNDLED_TASKS = REPO_ROOT / "data" / "eval_tasks"
DEFAULT_TASKS = "everyday_knowledge"
CLEAR_CHANGE = 2.0  # a change counts as real beyond this many standard errors (about 95% two-sided)


@dataclass(frozen=True)
class Settings:
    """Everything both passes share, recorded in eval.json."""

    tasks: tuple[str, ...]
    num_fewshot: int | None = None  # None: each task's own default
    limit: int | None = None  # None: every example of each task
    batch_size: int = 8
    seed: int = 0
    apply_chat_template: bool = False
    bootstrap_iters: int = 1000  # lm-eval's standard error for metrics that are not a mean (few tasks)


def parse_tasks(text: str) -> tuple[str, ...]:
    """The --tasks value as a list: comma-separated names or YAML files."""
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tasks:
        raise UsageError("--tasks: give at least one lm-eval task name or task YAML file")
    return tasks


def bundled_task(name: str) -> Path | None:
    """The bundled task's YAML file, if `name` is one."""
    path = BUNDLED_TASKS / f"{name}.yaml"
    return path if path.is_file() else None


def task_spec(task: str) -> str | dict[str, Any]:
    """What lm-eval is given for one --tasks entry: a task config (a bundled task, or a YAML file, with its data
    files found beside it) or the name as given (a task from lm-eval's own index)."""
    path = bundled_task(task) or (Path(task) if task.endswith((".yaml", ".yml")) else None)
    if path is None:
        return task
    if not path.is_file():
        raise UsageError(f"--tasks {task}: no such task file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return str(path)  # lm-eval's own YAML tags (!function): lm-eval reads the file itself
    except OSError as err:
        raise UsageError(f"--tasks {task}: cannot read it: {err}") from err
    if isinstance(config, dict) and ("group" in config or "include" in config):
        return str(path)  # a group, or a task built on another file: lm-eval resolves those from the file's place
    if not isinstance(config, dict) or "task" not in config:
        raise UsageError(f"--tasks {task}: expected an lm-eval task file (a mapping with a 'task' key)")
    return _with_local_data(config, path.parent)


def _with_local_data(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config with each relative data file that exists beside the YAML file given by its full path, so the
    task runs from any working directory."""
    data_files = (config.get("dataset_kwargs") or {}).get("data_files")
    if not data_files:
        return config
    if isinstance(data_files, dict):
        resolved: Any = {split: _located(names, folder) for split, names in data_files.items()}
    else:
        resolved = _located(data_files, folder)
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def _located(names: str | list[str], folder: Path) -> str | list[str]:
    """A data file name (or list of them) with each relative one that exists in `folder` made a full path."""
    if isinstance(names, list):
        return [str(_located(name, folder)) for name in names]
    return str(folder / names) if not Path(names).is_absolute() and (folder / names).is_file() else names


def load_tasks(tasks: tuple[str, ...], num_fewshot: int | None = None) -> list[Any]:
    """lm-eval Task and Group objects for the --tasks entries, data loaded and --num-fewshot applied: every bad
    name or unreachable data set is reported here, before any model weight loads."""
    from lm_eval.tasks import TaskManager

    specs = [task_spec(task) for task in tasks]
    # lm-eval's index of its own tasks takes seconds to build: only when a name needs it
    manager = TaskManager(include_defaults=any(isinstance(spec, str) for spec in specs))
    loaded = []
    for task, spec in zip(tasks, specs):
        try:
            loaded.append(manager.load([spec]))
        except KeyError as err:
            raise UsageError(f"--tasks {task}: not a task lm-eval knows, nor a task YAML file; bundled: "
                             f"{', '.join(bundled_names())}; lm-eval's: python -m lm_eval ls tasks") from err
        except Exception as err:  # datasets raises many kinds (offline, not found, bad config)
            raise UsageError(f"--tasks {task}: cannot load its data: {type(err).__name__}: {err} (without hub access, "
                             f"use a task YAML file over local data, or a bundled task: {', '.join(bundled_names())})"
                             ) from err
    for result in loaded:
        for leaf in result["tasks"].values():
            # once, here, as lm-eval would (a task that fixes 0 shots keeps it): set again on each pass, lm-eval warns
            # the second time that it overwrites the value it set the first
            if num_fewshot is not None and leaf.get_config("num_fewshot") != 0:
                leaf.set_config(key="num_fewshot", value=num_fewshot)
    return [item for result in loaded for item in _top_level(result)]


def bundled_names() -> list[str]:
    """The bundled tasks' names."""
    return sorted(path.stem for path in BUNDLED_TASKS.glob("*.yaml"))


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The groups and tasks of a TaskManager.load result that no loaded group contains (what was asked for)."""
    children = {name for names in loaded["group_map"].values() for name in names}
    return [item for name, item in [*loaded["groups"].items(), *loaded["tasks"].items()] if name not in children]


def score(model: Any, tokenizer: Any, tasks: list[Any], settings: Settings) -> dict[str, Any]:
    """lm-eval's results for the model as it is now (adapter active or disabled by the caller), on tasks from
    `load_tasks` (which applied the settings' few-shot count)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    seed = settings.seed
    results = simple_evaluate(
        lm, tasks=tasks, task_manager=TaskManager(include_defaults=False), limit=settings.limit, bootstrap_iters=settings.bootstrap_iters, log_samples=True,
        apply_chat_template=settings.apply_chat_template, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def base_and_tuned(model: Any, tokenizer: Any, tasks: list[Any], settings: Settings,
                   say: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Score the base model (adapter disabled) and then the tuned one; their results and the seconds each took."""
    names = ", ".join(settings.tasks)
    seconds = {}
    started = time.perf_counter()
    say(f"Scoring the base model (adapter disabled) on {names}")
    with model.disable_adapter():
        base = score(model, tokenizer, tasks, settings)
    seconds["base"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    say(f"Scoring the tuned model (base + adapter) on {names}")
    tuned = score(model, tokenizer, tasks, settings)
    seconds["tuned"] = round(time.perf_counter() - started, 2)
    return base, tuned, seconds


def metric_keys(task_results: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, filter) of each score lm-eval reports for a task ("acc,none" -> ("acc", "none"))."""
    keys = []
    for key, value in task_results.items():
        metric, comma, kept_by = key.partition(",")
        if comma and not metric.endswith("_stderr") and isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append((metric, kept_by))
    return keys


def _stderr(task_results: dict[str, Any], metric: str, kept_by: str) -> float | None:
    value = task_results.get(f"{metric}_stderr,{kept_by}")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def per_question(samples: list[dict[str, Any]], metric: str, kept_by: str) -> dict[int, tuple[str, float]]:
    """Each question's score for one metric, by doc_id, with the hash of the prompt it was asked with."""
    return {s["doc_id"]: (s.get("prompt_hash", ""), float(s[metric])) for s in samples
            if s.get("filter") == kept_by and isinstance(s.get(metric), (int, float))}


def paired_stderr(base: dict[int, tuple[str, float]], tuned: dict[int, tuple[str, float]],
                  means: tuple[float, float]) -> float | None:
    """Standard error of the mean per-question difference (tuned - base). None unless both passes scored the same
    questions with the same prompts and the metric is the mean of those scores (so the difference of the means
    is the mean of the differences)."""
    if len(base) < 2 or base.keys() != tuned.keys() or any(base[d][0] != tuned[d][0] for d in base):
        return None
    for scores, mean in zip((base, tuned), means):
        if not math.isclose(statistics.fmean(v for _, v in scores.values()), mean, abs_tol=1e-9):
            return None
    differences = [tuned[d][1] - base[d][1] for d in base]
    return statistics.stdev(differences) / math.sqrt(len(differences))


def compare_results(base: dict[str, Any], tuned: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task (or group) and metric: both scores, their standard errors, the change and its own."""
    rows = []
    for task, base_results in base["results"].items():
        tuned_results = tuned["results"].get(task, {})
        better = {**base.get("higher_is_better", {}).get(task, {})}
        for metric, kept_by in metric_keys(base_results):
            key = f"{metric},{kept_by}"
            if key not in tuned_results:
                continue
            a, b = float(base_results[key]), float(tuned_results[key])
            se_a, se_b = _stderr(base_results, metric, kept_by), _stderr(tuned_results, metric, kept_by)
            paired = paired_stderr(per_question(base.get("samples", {}).get(task, []), metric, kept_by),
                                   per_question(tuned.get("samples", {}).get(task, []), metric, kept_by), (a, b))
            independent = math.hypot(se_a, se_b) if se_a is not None and se_b is not None else None
            delta_se = paired if paired is not None else independent
            rows.append({
                "task": task, "metric": metric, "filter": kept_by, "higher_is_better": better.get(metric),
                "n": base.get("n-samples", {}).get(task, {}).get("effective"),
                "base": a, "base_stderr": se_a, "tuned": b, "tuned_stderr": se_b, "delta": b - a,
                "delta_stderr": delta_se,
                "stderr_method": "paired" if paired is not None else "independent" if independent is not None else None,
                "reading": reading(b - a, delta_se, better.get(metric)),
            })
    return rows


def reading(delta: float, stderr: float | None, higher_is_better: bool | None) -> str:
    """Whether the change is clear of its noise, and which way it goes."""
    if delta == 0:
        return "same"
    if stderr is None:
        return "changed (no standard error to judge it)"
    if abs(delta) <= CLEAR_CHANGE * stderr:
        return f"no clear change (within {CLEAR_CHANGE:g} standard errors)"
    if higher_is_better is None:
        return "clearly changed"
    return "clearly better" if (delta > 0) == higher_is_better else "clearly worse"


def build_record(run: Path, info: Any, settings: Settings, base: dict[str, Any], tuned: dict[str, Any],
                 seconds: dict[str, float]) -> dict[str, Any]:
    """eval.json's content."""
    return {
        "run": str(run),
        "base_model": info.base,
        "load_in_4bit": info.load_in_4bit,
        "dtype": str(tuned.get("config", {}).get("model_dtype") or info.dtype).removeprefix("torch."),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "lm_eval": importlib.metadata.version("lm-eval"),
        "settings": {**asdict(settings), "tasks": list(settings.tasks)},
        "n_shot": tuned.get("n-shot", {}),
        "rows": compare_results(base, tuned),
        "seconds": seconds,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def to_markdown(record: dict[str, Any]) -> str:
    """eval.md: the side-by-side table and how to read it."""
    settings = record["settings"]
    shots = settings["num_fewshot"] if settings["num_fewshot"] is not None else "task default"
    lines = [
        f"# lm-eval: base vs tuned, {record['run']}", "",
        f"Base model {record['base_model']} ({'4-bit NF4' if record['load_in_4bit'] else record['dtype']}), scored "
        f"with the adapter disabled and then enabled; lm-eval {record['lm_eval']}, few-shot: {shots}, limit: "
        f"{settings['limit'] or 'none'}, batch size {settings['batch_size']}, seed {settings['seed']}, chat "
        f"template: {'yes' if settings['apply_chat_template'] else 'no'}. {record['date']}.", "",
        *table(record["rows"]),
    ]
    lines += [
        "", "± is one standard error. The change's is paired (from the per-question differences: both passes answer "
        "the same questions) where lm-eval logs a score per question, else the two standard errors combined. A "
        f"change within {CLEAR_CHANGE:g} standard errors is not told apart from noise.",
        "", f"Time: base {record['seconds']['base']:.0f} s, tuned {record['seconds']['tuned']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The side-by-side markdown table of eval.md, one line per task and metric (compare_results' rows)."""
    lines = ["| task | metric | n | base | tuned | change | reading |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        metric = row["metric"] if row["filter"] == "none" else f"{row['metric']} ({row['filter']})"
        change = f"{row['delta']:+.4f}" + (f" ± {row['delta_stderr']:.4f}" if row["delta_stderr"] is not None else "")
        base = _fmt(row["base"]) + (f" ± {row['base_stderr']:.4f}" if row["base_stderr"] is not None else "")
        tuned = _fmt(row["tuned"]) + (f" ± {row['tuned_stderr']:.4f}" if row["tuned_stderr"] is not None else "")
        lines.append(f"| {row['task']} | {metric} | {row['n'] or '-'} | {base} | {tuned} | {change} | "
                     f"{row['reading']} |")
    return lines


def write_report(run: Path, record: dict[str, Any]) -> list[Path]:
    """eval.json and eval.md in the run folder, each written whole."""
    targets = [run / files.EVAL_JSON, run / files.EVAL_REPORT]
    write_json(targets[0], record)
    write_text(targets[1], to_markdown(record))
    return targets

