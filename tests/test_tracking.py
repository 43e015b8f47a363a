"""--report-to: a tracker that is not installed, or not known, is refused before anything loads (exit 2, with the
pip command); the trackers are pointed at the run folder and kept offline. A real TensorBoard run is read back in
test_reliability.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_config_cli import capture_cli

from llama_lora.options import tracking
from llama_lora.options.config import build


@pytest.mark.parametrize("name", [name for name, (module, _) in tracking.TRACKERS.items()
                                  if importlib.util.find_spec(module) is None])
def test_a_tracker_that_is_not_installed_is_refused_with_its_pip_command(name):
    code, cfg, output = capture_cli("--report-to", f"tensorboard,{name}")
    assert code == 2 and cfg is None  # the runner (data, model, anything) never started
    assert f"{name} is not installed: pip install {name}" in output


def test_an_unknown_tracker_is_refused_naming_the_known_ones():
    code, cfg, output = capture_cli("--report-to", "tensorbord")
    assert code == 2 and cfg is None
    assert "unknown tracker 'tensorbord'" in output and "tensorboard, wandb, mlflow, trackio" in output


def test_report_to_takes_a_comma_list_or_a_yaml_list_and_defaults_to_none():
    assert tracking.parse(build({}).report_to) == ()
    assert build({"report_to": ["tensorboard"]}).report_to == "tensorboard"
    code, cfg, _ = capture_cli("--report-to", "tensorboard")
    assert code == 0 and tracking.parse(cfg.report_to) == ("tensorboard",)


def test_every_tracker_is_kept_offline_and_inside_the_run_folder(tmp_path: Path):
    env = tracking.offline_environment(tuple(tracking.TRACKERS), tmp_path / "run")
    assert env["WANDB_MODE"] == "offline"
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "run" / "mlruns").resolve().as_uri()  # a local file store
    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "TRACKIO_DIR"):
        assert Path(env[key]).is_relative_to(tmp_path / "run")
