"""`use_adapter.py eval`: lm-evaluation-harness scores the run's model with the adapter off (base) and on (tuned),
with the same tasks and settings, and reports each metric's change with its standard error."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import load_script

from llama_lora.errors import UsageError
from llama_lora.use import evaluate

use_adapter = load_script("use_adapter.py")


def samples(scores: list[float], prompt: str = "p", metric: str = "acc") -> list[dict]:
    """lm-eval's logged samples, one per question: its doc_id, prompt hash, filter and score."""
    return [{"doc_id": i, "prompt_hash": f"{prompt}{i}", "filter": "none", metric: s} for i, s in enumerate(scores)]


def results(task_scores: dict[str, list[float]], groups: dict[str, tuple[float, float]] = {}) -> dict:
    """A simple_evaluate result as lm-eval shapes it: a mean metric with its standard error per task, the samples
    behind it, and groups with only an aggregate."""
    out: dict = {"results": {}, "samples": {}, "higher_is_better": {}, "n-samples": {}}
    for task, scores in task_scores.items():
        out["results"][task] = {"alias": task, "acc,none": statistics.fmean(scores),
                                "acc_stderr,none": statistics.stdev(scores) / math.sqrt(len(scores))}
        out["samples"][task] = samples(scores)
        out["higher_is_better"][task] = {"acc": True}
        out["n-samples"][task] = {"original": len(scores), "effective": len(scores)}
    for group, (value, stderr) in groups.items():
        out["results"][group] = {"alias": group, "acc,none": value, "acc_stderr,none": stderr}
    return out


def test_paired_stderr_is_the_standard_error_of_the_per_question_differences():
    base, tuned = [1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 0, 1, 1, 0]
    got = evaluate.paired_stderr(evaluate.per_question(samples(base), "acc", "none"),
                                 evaluate.per_question(samples(tuned), "acc", "none"),
                                 (statistics.fmean(base), statistics.fmean(tuned)))
    differences = [t - b for b, t in zip(base, tuned)]
    assert got == pytest.approx(statistics.stdev(differences) / math.sqrt(8))
    # tighter than the two standard errors combined: both passes answered the same questions
    independent = math.hypot(*(statistics.stdev(s) / math.sqrt(8) for s in (base, tuned)))
    assert got < independent


def test_paired_stderr_refuses_other_prompts_other_questions_or_a_metric_that_is_not_their_mean():
    base = evaluate.per_question(samples([1, 0, 1, 0]), "acc", "none")
    assert evaluate.paired_stderr(base, evaluate.per_question(samples([1, 1, 1, 0], prompt="q"), "acc", "none"),
                                  (0.5, 0.75)) is None  # asked with other prompts (other few-shot examples)
    assert evaluate.paired_stderr(base, evaluate.per_question(samples([1, 1, 1]), "acc", "none"),
                                  (0.5, 1.0)) is None  # not the same questions
    assert evaluate.paired_stderr(base, evaluate.per_question(samples([1, 1, 1, 0]), "acc", "none"),
                                  (0.5, 0.6)) is None  # the aggregate is not the mean of the scores (f1, bleu, ...)


def test_each_row_gives_both_scores_the_change_and_its_standard_error_and_groups_combine_theirs():
    base = results({"a": [1, 0, 1, 1, 0, 0, 1, 0]}, groups={"g": (0.5, 0.03)})
    tuned = results({"a": [1, 1, 1, 1, 0, 1, 1, 0]}, groups={"g": (0.56, 0.04)})
    rows = {row["task"]: row for row in evaluate.compare_results(base, tuned)}
    a = rows["a"]
    assert (a["metric"], a["filter"], a["n"], a["higher_is_better"]) == ("acc", "none", 8, True)
    assert (a["base"], a["tuned"], a["delta"]) == (0.5, 0.75, 0.25)
    assert a["stderr_method"] == "paired" and a["delta_stderr"] == pytest.approx(math.sqrt(1.5 / 7 / 8))  # differences 0,1,0,0,0,1,0,0
    assert a["base_stderr"] == base["results"]["a"]["acc_stderr,none"]
    g = rows["g"]  # a group has no samples of its own: its standard errors combine as if independent
    assert g["stderr_method"] == "independent" and g["delta_stderr"] == pytest.approx(0.05)
    assert g["delta"] == pytest.approx(0.06) and g["reading"].startswith("no clear change")


@pytest.mark.parametrize(("delta", "stderr", "higher", "reading"), [
    (0.0, 0.0, True, "same"), (0.05, 0.03, True, "no clear change"), (0.07, 0.03, True, "clearly better"),
    (-0.07, 0.03, True, "clearly worse"), (-0.07, 0.03, False, "clearly better"), (0.1, None, True, "changed"),
])
def test_a_change_is_called_clear_only_beyond_two_standard_errors(delta, stderr, higher, reading):
    assert evaluate.reading(delta, stderr, higher).startswith(reading)


def test_the_bundled_task_finds_its_questions_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = evaluate.task_spec("everyday_knowledge")
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == evaluate.BUNDLED_TASKS / "everyday_knowledge.jsonl"
    [task] = evaluate.load_tasks(("everyday_knowledge",))
    questions = list(task.test_docs())
    assert len(questions) == 60 and sorted({q["answer"] for q in questions}) == [0, 1, 2, 3]
    assert all(len(q["choices"]) == 4 and len(set(q["choices"])) == 4 for q in questions)


def test_a_users_task_file_reads_its_local_data_beside_it_and_takes_num_fewshot(tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "mine.jsonl").write_text("".join(json.dumps({"q": f"{i} + 1 =", "a": str(i + 1)}) + "\n"
                                               for i in range(5)))
    (folder / "mine.yaml").write_text(
        "task: my_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: mine.jsonl\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: exact_match\n")
    monkeypatch.chdir(tmp_path)  # not the task's folder
    [task] = evaluate.load_tasks((str(folder / "mine.yaml"),), num_fewshot=2)
    assert task.task_name == "my_sums" and len(list(task.test_docs())) == 5
    assert task.get_config("num_fewshot") == 2


@pytest.fixture
def run_without_training(tmp_path, smollm2_path) -> Path:
    """A folder that names its base model and holds an adapter config: enough for eval's checks before loading."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": smollm2_path}))
    return tmp_path / "run"


@pytest.mark.parametrize(("tasks", "message"), [
    ("missing.yaml", "--tasks missing.yaml: no such task file"),
    (",", "--tasks: give at least one"),
    ("no_such_task_anywhere", "--tasks no_such_task_anywhere: not a task lm-eval knows"),
])
def test_a_bad_tasks_entry_exits_2_naming_it_before_the_model_loads(run_without_training, tasks, message):
    result = CliRunner().invoke(use_adapter.cli, ["eval", str(run_without_training), "--tasks", tasks])
    assert result.exit_code == 2 and message in result.output, result.output
    assert list(run_without_training.iterdir()) == [run_without_training / "adapter_config.json"]  # nothing written


def test_a_task_file_that_is_not_a_task_is_refused(tmp_path):
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    with pytest.raises(UsageError, match="expected an lm-eval task file"):
        evaluate.task_spec(str(tmp_path / "list.yaml"))


@pytest.mark.parametrize("text", ["group: mine\ntask: [a, b]\n", "include: base.yaml\ntask: variant\n",
                                  "task: t\ndoc_to_text: !function utils.prompt\n"])
def test_groups_includes_and_function_tags_are_left_for_lm_eval_to_read_from_the_file(tmp_path, text):
    (tmp_path / "task.yaml").write_text(text)
    assert evaluate.task_spec(str(tmp_path / "task.yaml")) == str(tmp_path / "task.yaml")


def loglikelihoods(result: dict, task: str = "everyday_knowledge") -> list[float]:
    """Every choice's log-likelihood, question by question, as lm-eval logged them."""
    return [resp[0] for sample in result["samples"][task] for resp in sample["filtered_resps"]]


@pytest.mark.slow
def test_the_base_pass_is_the_plain_base_model_and_the_tuned_pass_the_adapter(trained_run, smollm2_path):
    """Checked against lm-eval run on models loaded apart: the plain base model, and a fresh base + adapter. So a
    command that left the adapter on for the base pass (or off for the tuned one) fails here."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llama_lora.use import inference

    info = inference.read_run(trained_run)
    model, tokenizer = inference.load_tuned(info)
    settings = evaluate.Settings(("everyday_knowledge",), limit=8)
    tasks = evaluate.load_tasks(settings.tasks)
    base, tuned, seconds = evaluate.base_and_tuned(model, tokenizer, tasks, settings, say=lambda line: None)
    plain = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=getattr(torch, info.dtype)).eval()
    alone = evaluate.score(plain, tokenizer, tasks, settings)
    assert loglikelihoods(base) == pytest.approx(loglikelihoods(alone), abs=1e-3)
    fresh = PeftModel.from_pretrained(plain, trained_run).eval()
    assert loglikelihoods(tuned) == pytest.approx(loglikelihoods(evaluate.score(fresh, tokenizer, tasks, settings)),
                                                  abs=1e-3)
    # and the adapter moves them by more than that tolerance: the two passes are told apart
    assert max(abs(t - b) for t, b in zip(loglikelihoods(tuned), loglikelihoods(base))) > 0.01
    assert seconds["base"] > 0 and seconds["tuned"] > 0


@pytest.mark.slow
def test_eval_writes_the_side_by_side_report_into_the_run_folder(trained_run):
    result = CliRunner().invoke(use_adapter.cli, ["eval", str(trained_run), "--limit", "6"])
    assert result.exit_code == 0, result.output
    assert "Scoring the base model (adapter disabled) on everyday_knowledge" in result.output
    record = json.loads((trained_run / "eval.json").read_text())
    assert record["settings"]["tasks"] == ["everyday_knowledge"] and record["settings"]["limit"] == 6
    assert record["n_shot"] == {"everyday_knowledge": 0} and record["lm_eval"] == "0.4.13"
    assert [(row["task"], row["metric"]) for row in record["rows"]] == [
        ("everyday_knowledge", "acc"), ("everyday_knowledge", "acc_norm")]
    for row in record["rows"]:
        assert row["n"] == 6 and 0 <= row["base"] <= 1 and 0 <= row["tuned"] <= 1
        assert row["delta"] == pytest.approx(row["tuned"] - row["base"]) and row["stderr_method"] == "paired"
        assert f"  everyday_knowledge {row['metric']}: {row['base']:.4f} -> {row['tuned']:.4f}" in result.output
    report = (trained_run / "eval.md").read_text()
    assert report.count("| everyday_knowledge |") == 2 and "limit: 6" in report and "± is one standard error" in report
