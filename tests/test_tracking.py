"""--report-to: a tracker that is not installed, or not known, is refused before anything loads (exit 2, with the
pip command); the trackers are pointed at the run folder and kept offline; runs are named by backend and settings.
Each tracker is one record in tracking.TRACKERS: a test adds one and sees it everywhere trackers are listed or used.
Real runs are read back through each tracker's own client in tests/e2e/test_trackers.py."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from test_config_cli import capture_cli

from llama_lora.options import tracking
from llama_lora.options.config import CONFIG_FIELDS, Machine, TrainConfig, build, resolve

CPU = Machine(cuda=False)


def test_an_unknown_tracker_is_refused_naming_the_known_ones():
    code, cfg, output = capture_cli("--report-to", "tensorbord")
    assert code == 2 and cfg is None
    assert "unknown tracker 'tensorbord'" in output and "tensorboard, wandb, mlflow, trackio" in output


def test_report_to_takes_a_comma_list_or_a_yaml_list_and_defaults_to_none():
    assert tracking.parse(build({}).report_to) == ()
    assert build({"report_to": ["tensorboard"]}).report_to == "tensorboard"
    code, cfg, _ = capture_cli("--report-to", "tensorboard")
    assert code == 0 and tracking.parse(cfg.report_to) == ("tensorboard",)


def test_every_tracker_is_kept_offline_inside_the_run_folder_and_filed_under_the_experiment(tmp_path: Path):
    env = tracking.offline_environment(tuple(tracking.TRACKERS), tmp_path / "run", "my-experiment")
    assert env["WANDB_MODE"] == "offline"
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "run" / "mlruns").resolve().as_uri()  # a local file store
    assert env["MLFLOW_ALLOW_FILE_STORE"] == "true"  # MLflow 3 refuses a file store without it
    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "TRACKIO_DIR"):
        assert Path(env[key]).is_relative_to(tmp_path / "run")
    assert env["WANDB_PROJECT"] == env["MLFLOW_EXPERIMENT_NAME"] == "my-experiment"


def test_a_run_is_named_by_its_backend_and_settings_unless_named():
    cfg = resolve(TrainConfig(r=8, max_steps=5, learning_rate=1e-3, dtype="float32"), "unsloth", CPU)
    assert cfg.run_name == "unsloth smollm2 r8 alpha16 lr0.001 float32 batch 2x1 padded 5 steps"
    assert resolve(TrainConfig(run_name="mine"), "peft", CPU).run_name == "mine"
    code, cfg, _ = capture_cli("--experiment", "sweep", "--run-name", "first try")
    assert code == 0 and (cfg.experiment, cfg.run_name) == ("sweep", "first try")
    assert build({}).experiment == tracking.DEFAULT_EXPERIMENT


def test_the_summary_points_at_the_run_folder_not_the_staging_folder_unless_the_user_chose_a_place(
        tmp_path: Path, environment):
    run = tmp_path / "run"
    staging = tmp_path / ".run.partial"
    tracking.set_up("mlflow,trackio", staging, "exp")  # what training does: write into the staging folder
    assert tracking.look_at("mlflow,trackio", run, "exp", staging) == [
        f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {(run / 'mlruns').resolve().as_uri()}",
        f"TRACKIO_DIR={run / 'trackio'} trackio show --project exp"]
    environment["MLFLOW_TRACKING_URI"] = "http://mlflow.internal:5000"
    assert "--backend-store-uri http://mlflow.internal:5000" in tracking.look_at("mlflow", run, "exp", staging)[0]


def test_a_comparison_shares_a_store_only_for_the_trackers_that_show_one_store_at_a_time(tmp_path: Path):
    env = tracking.shared_environment(tuple(tracking.TRACKERS), tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").resolve().as_uri()
    assert env["TRACKIO_DIR"] == str(tmp_path / "trackio")
    # TensorBoard's view is one logdir above both run folders, W&B's a sync of both: each run keeps its own files
    assert "TENSORBOARD_LOGGING_DIR" not in env and "WANDB_DIR" not in env


def test_the_run_figures_are_peak_memory_by_phase_tokens_per_second_and_times():
    record = {"memory": {"after_load": {"cpu_peak_rss_gib": 1.2}, "after_training": {"cpu_peak_rss_gib": 1.5},
                         "per_process": [{}]},
              "tokens": {"per_second": 25.5, "non_padding_seen": 400},
              "runtime_s": {"load": 3.0, "train": 16.0, "eval_during_training": 2.0, "samples": None}}
    assert tracking.run_figures(record) == {
        "memory/after_load/cpu_peak_rss_gib": 1.2, "memory/after_training/cpu_peak_rss_gib": 1.5,
        "tokens/per_second": 25.5, "runtime_s/load": 3.0, "runtime_s/train": 16.0,
        "runtime_s/eval_during_training": 2.0}


def test_the_report_to_help_text_is_the_registrys():
    assert CONFIG_FIELDS["report_to"].metadata["help"] == tracking.help_text()
    assert ", ".join(tracking.TRACKERS) in tracking.help_text()


@pytest.fixture
def environment(monkeypatch) -> dict[str, str]:
    """A private copy of the process environment without any tracker's variables (set_up writes into it)."""
    names = tuple(tracking.TRACKERS)
    ours = {*tracking.offline_environment(names, Path("run")), "FOURTH_DIR", "FOURTH_PROJECT"}
    copy = {key: value for key, value in os.environ.items() if key not in ours}
    monkeypatch.setattr(os, "environ", copy)
    return copy


class _Args:
    report_to = ["fourth"]


class _Trainer:
    args = _Args()

    class state:  # noqa: N801 (the attribute path a transformers Trainer has)
        global_step = 7


@pytest.fixture
def fourth_tracker(monkeypatch, tmp_path: Path):
    """A fifth-party tracker declared with one record; its functions note what they were given."""
    calls: list[tuple] = []
    spec = tracking.Tracker(
        "fourth", "fourth_tracker_module", "pip install fourth-tracker",
        environment=lambda store: {"FOURTH_DIR": str(store / "fourth")},
        experiment=lambda experiment: {"FOURTH_PROJECT": experiment},
        look="fourth show {FOURTH_DIR} --project {experiment}",
        view=lambda root, runs, experiment: f"fourth compare {' '.join(map(str, runs))}",
        shared_store=True,
        adopt=lambda trainer, record: calls.append(("adopt", record)),
        figures=lambda trainer, figures, step: calls.append(("figures", figures, step)),
        close=lambda: calls.append(("close",)),
        comparison=lambda root, experiment, record, markdown: calls.append(("comparison", experiment, markdown)),
    )
    monkeypatch.setattr(tracking, "TRACKERS", {**tracking.TRACKERS, "fourth": spec})
    return calls


def test_a_declared_tracker_is_refused_with_its_own_pip_command_until_installed(fourth_tracker):
    assert tracking.problem("tensorboard,fourth") == "--report-to fourth is not installed: pip install fourth-tracker"
    assert "fourth" in tracking.help_text()
    assert "unknown tracker 'fifth'" in tracking.problem("fifth") and "trackio, fourth" in tracking.problem("fifth")


def test_a_declared_tracker_is_set_up_used_by_a_run_and_shown_in_the_summary(fourth_tracker, environment,
                                                                               tmp_path: Path):
    run, staging = tmp_path / "run", tmp_path / ".run.partial"
    assert tracking.set_up("fourth", staging, "exp") == ["fourth"]
    assert os.environ["FOURTH_DIR"] == str(staging / "fourth") and os.environ["FOURTH_PROJECT"] == "exp"
    tracking.adopt(_Trainer(), {"r": 16})
    tracking.report_figures(_Trainer(), {"tokens": {"per_second": 9.0}})
    tracking.finish("fourth")
    assert fourth_tracker == [("adopt", {"r": 16}), ("figures", {"tokens/per_second": 9.0}, 7), ("close",)]
    assert tracking.look_at("fourth", run, "exp", staging) == [f"fourth show {run / 'fourth'} --project exp"]


def test_a_declared_tracker_takes_part_in_a_comparison(fourth_tracker, environment, tmp_path: Path):
    assert tracking.shared_environment(("fourth",), tmp_path) == {"FOURTH_DIR": str(tmp_path / "fourth")}
    record = {"a": {"folder": str(tmp_path / "peft")}, "b": {"folder": str(tmp_path / "unsloth")}, "rows": [],
              "loss_parity": {"verdict": "consistent"}, "verdict": "equally fast"}
    views = tracking.log_comparison("fourth", tmp_path, "exp", record, "# report")
    assert views == [f"fourth compare {tmp_path / 'peft'} {tmp_path / 'unsloth'}"]
    assert fourth_tracker == [("comparison", "exp", "# report")]


def test_every_declared_tracker_names_its_module_install_command_and_views():
    for name, spec in tracking.TRACKERS.items():
        assert spec.name == name and spec.install.startswith("pip install ")
        fields = {f.name for f in dataclasses.fields(spec)}
        assert all(getattr(spec, field) is not None for field in fields)
        assert "{" in spec.look  # the command names where this run's files are


def test_a_comparison_gets_a_new_experiment_unless_one_is_named():
    from helpers import load_script

    compare = load_script("compare_backends.py")
    flags, experiment = compare.with_experiment(("--report-to", "mlflow"))
    assert experiment.startswith("compare-backends-") and flags == ("--report-to", "mlflow", "--experiment", experiment)
    assert compare.with_experiment(("--experiment=mine",)) == (("--experiment=mine",), "mine")
    assert compare.flag_value(("--report-to", "wandb", "--report-to=mlflow"), "--report-to") == "mlflow"  # last wins
