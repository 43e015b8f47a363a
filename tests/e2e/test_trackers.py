"""One comparison pair (`compare_backends.py --run --report-to tensorboard,wandb,mlflow,trackio`, PEFT then Unsloth,
3 steps each with 3 evaluations: the cost of two tiny runs plus the trackers' start-up) read back through each tracker's own reader: every run holds
train_log.jsonl's figures step for step, the eval curve, the resolved config and the run's own figures (peak memory
by phase, tokens/s), both runs sit in one experiment/project/logdir named by backend and settings, and the
comparison's verdict is filed with them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, dialogue, read_metrics, write_jsonl
from helpers.trackers import mlflow_runs, scalars, trackio_runs, wandb_run

pytestmark = pytest.mark.slow

BACKENDS = ("peft", "unsloth")
TRACKERS = "tensorboard,wandb,mlflow,trackio"
FLAGS = ["--max-steps", "3", "--eval-steps", "2", "--samples", "0", "--batch-size", "2", "--grad-accum", "1",
         "--max-seq-length", "128", "--dtype", "float32", "--r", "8", "--learning-rate", "1e-3"]
RUN_NAME = "{backend} smollm2 r8 alpha16 lr0.001 float32 batch 2x1 padded 3 steps"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, smollm2_path) -> tuple[Path, str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("trackers")
    rows = [dialogue(f"What is {a} times 3?", f"1. {a} + {a} = {2 * a}.\n2. {2 * a} + {a} = {3 * a}.")
            for a in range(2, 30)]
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", rows[4:])
    write_jsonl(root / "data" / "eval.jsonl", rows[:4])
    out = root / "runs"
    result = subprocess.run([sys.executable, "compare_backends.py", "--run", "--out", str(out), "--report-to", TRACKERS,
                             "--dataset", str(root / "data"), *FLAGS], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    experiment = read_metrics(out / "peft")["config"]["experiment"]
    return out, experiment, result


def logged(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def eval_curve(folder: Path) -> dict[int, float]:
    """step -> eval loss from metrics.json: before training (step 0), during, and after (the last step)."""
    evals = read_metrics(folder)["eval_loss"]
    return {0: evals["before"], **{e["step"]: e["eval_loss"] for e in evals["during"]}, 3: evals["after"]}


def figures(folder: Path) -> dict[str, float]:
    metrics = read_metrics(folder)
    return {"memory/after_load/cpu_peak_rss_gib": metrics["memory"]["after_load"]["cpu_peak_rss_gib"],
            "memory/after_training/cpu_peak_rss_gib": metrics["memory"]["after_training"]["cpu_peak_rss_gib"],
            "tokens/per_second": metrics["tokens"]["per_second"]}


def test_both_runs_share_one_new_experiment_and_the_summary_prints_the_command_that_opens_each_view(compared):
    out, experiment, result = compared
    assert experiment.startswith("compare-backends-")
    for backend in BACKENDS:
        config = read_metrics(out / backend)["config"]
        assert config["experiment"] == experiment and config["run_name"] == RUN_NAME.format(backend=backend)
    views = [line.removeprefix("view both runs: ") for line in result.stdout.splitlines()
             if line.startswith("view both runs: ")]
    assert views == [
        f"tensorboard --logdir {out}",
        f"wandb sync {out}/peft/wandb/offline-run-* {out}/unsloth/wandb/offline-run-* {out}/wandb/offline-run-*   "
        f"(then open the project {experiment})",
        f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {(out / 'mlruns').as_uri()}",
        f"TRACKIO_DIR={out / 'trackio'} trackio show --project {experiment}",
    ]


def test_mlflow_holds_both_runs_step_for_step_with_their_settings_figures_and_the_verdict(compared):
    out, experiment, _ = compared
    client, found, runs = mlflow_runs(out / "mlruns", experiment)
    assert sorted(runs) == sorted(RUN_NAME.format(backend=b) for b in BACKENDS)  # no third run: one run per backend
    params = {}
    for backend in BACKENDS:
        run = runs[RUN_NAME.format(backend=backend)]
        assert run.info.status == "FINISHED"
        steps = logged(out / backend)
        for key in ("loss", "grad_norm", "learning_rate"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [entry["step"] for entry in steps]
            assert [m.value for m in history] == pytest.approx([entry[key] for entry in steps], rel=1e-6, abs=1e-12)
        evals = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")}
        assert evals == pytest.approx(eval_curve(out / backend), rel=1e-6)
        for key, value in figures(out / backend).items():
            assert run.data.metrics[key] == pytest.approx(value)  # the run's own figures, at its last step
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [3]
        config = read_metrics(out / backend)["config"]
        ours = {key.removeprefix("llama_lora."): value for key, value in run.data.params.items()
                if key.startswith("llama_lora.")}
        assert ours == {key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
                        for key, value in config.items()}
        params[backend] = ours
    # the shared settings are parameters of both runs: they differ only in name and run folder
    assert {key for key in params["peft"] if params["peft"][key] != params["unsloth"][key]} == {"run_name",
                                                                                                "output_dir"}
    comparison = json.loads((out / "comparison.json").read_text())
    assert found.tags["llama_lora.verdict"] == comparison["verdict"]
    assert found.tags["llama_lora.loss_parity"] == comparison["loss_parity"]["verdict"] == "consistent"
    assert found.tags["mlflow.note.content"] == (out / "comparison.md").read_text()


def test_trackio_holds_both_runs_step_for_step_with_their_config_figures_and_the_verdict(compared):
    out, experiment, _ = compared
    runs = trackio_runs(out / "trackio", experiment)
    assert sorted(runs) == sorted([*(RUN_NAME.format(backend=b) for b in BACKENDS), "comparison"])
    for backend in BACKENDS:
        run = runs[RUN_NAME.format(backend=backend)]
        logs = run["logs"]
        train = [log for log in logs if "train/loss" in log]
        steps = logged(out / backend)
        assert [log["train/global_step"] for log in train] == [entry["step"] for entry in steps]
        assert [log["train/loss"] for log in train] == pytest.approx([entry["loss"] for entry in steps], rel=1e-6)
        assert [log["train/grad_norm"] for log in train] == pytest.approx([e["grad_norm"] for e in steps], rel=1e-6)
        evals = {log["train/global_step"]: log["eval/loss"] for log in logs if "eval/loss" in log}
        assert evals == pytest.approx(eval_curve(out / backend), rel=1e-6)
        (last,) = [log for log in logs if "tokens/per_second" in log]
        assert {key: last[key] for key in figures(out / backend)} == pytest.approx(figures(out / backend))
        assert run["config"]["llama_lora"] == read_metrics(out / backend)["config"]
    comparison = json.loads((out / "comparison.json").read_text())
    verdict = runs["comparison"]
    assert verdict["config"]["verdict"] == comparison["verdict"]
    assert verdict["config"]["report"] == (out / "comparison.md").read_text()
    speed = verdict["logs"][0]["ratio_b_over_a/non-padding tokens/s"]
    assert speed == next(row["ratio_b_over_a"] for row in comparison["rows"] if row["metric"] == "non-padding tokens/s")


def test_tensorboard_shows_both_runs_and_the_verdict_in_one_logdir(compared):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    out, _, _ = compared
    everything = EventMultiplexer()
    everything.AddRunsFromDirectory(str(out))
    everything.Reload()
    assert sorted(everything.Runs()) == ["comparison", "peft/tensorboard", "unsloth/tensorboard"]
    for backend in BACKENDS:
        steps = logged(out / backend)
        assert scalars(out / backend, "train/loss") == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in steps]
        assert dict(scalars(out / backend, "eval/loss")) == pytest.approx(eval_curve(out / backend), rel=1e-6)
        for key, value in figures(out / backend).items():
            assert scalars(out / backend, key) == [(3, pytest.approx(value, rel=1e-6))]
    verdict = everything.Tensors("comparison", "comparison/text_summary")[0].tensor_proto.string_val[0].decode()
    assert verdict == (out / "comparison.md").read_text()


def test_wandb_files_both_offline_runs_and_the_verdict_under_one_project(compared):
    out, experiment, _ = compared
    for backend in BACKENDS:
        run = wandb_run(out / backend)
        assert (run["project"], run["name"], run["finished"]) == (experiment, RUN_NAME.format(backend=backend), True)
        by_step = {row["train/global_step"]: row for row in run["history"] if "train/loss" in row}
        steps = logged(out / backend)
        assert sorted(by_step) == [entry["step"] for entry in steps]
        for entry in steps:
            assert by_step[entry["step"]]["train/loss"] == pytest.approx(entry["loss"], rel=1e-6)
        evals = {row["train/global_step"]: row["eval/loss"] for row in run["history"] if "eval/loss" in row}
        assert evals == pytest.approx(eval_curve(out / backend), rel=1e-6)
        assert {key: run["summary"][key] for key in figures(out / backend)} == pytest.approx(figures(out / backend))
        assert run["config"]["llama_lora"] == read_metrics(out / backend)["config"]
    verdict = wandb_run(out)
    comparison = json.loads((out / "comparison.json").read_text())
    assert (verdict["project"], verdict["name"]) == (experiment, "comparison")
    assert verdict["config"]["verdict"] == comparison["verdict"]
    assert verdict["summary"]["loss_parity/max_relative_difference"] == comparison["loss_parity"][
        "max_relative_difference"]
