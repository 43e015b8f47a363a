"""The eval loss curve: before training, every --eval-steps during it, after it; drawn next to the train loss."""

from __future__ import annotations

from pathlib import Path

from llama_lora.run.plots import eval_points, plot_loss


def test_the_curve_runs_from_before_through_the_evaluations_to_after():
    during = [{"step": 20, "eval_loss": 2.3}, {"step": 40, "eval_loss": 2.2}]
    assert eval_points({"before": 2.6, "during": during, "after": 2.1}, last_step=60) == [
        (0, 2.6), (20, 2.3), (40, 2.2), (60, 2.1)]


def test_an_evaluation_at_the_last_step_is_the_after_point_not_a_second_one():
    during = [{"step": 30, "eval_loss": 2.3}, {"step": 60, "eval_loss": 2.1}]
    assert eval_points({"before": 2.6, "during": during, "after": 2.1}, last_step=60) == [
        (0, 2.6), (30, 2.3), (60, 2.1)]


def test_without_eval_data_there_is_no_curve():
    assert eval_points({"before": None, "after": None}, last_step=10) == []
    assert eval_points({"before": 2.6, "after": 2.5}, last_step=10) == [(0, 2.6), (10, 2.5)]  # a run from before


def test_the_plot_is_written(tmp_path: Path):
    history = [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 11)]
    plot_loss(history, {"before": 2.6, "during": [{"step": 5, "eval_loss": 2.4}], "after": 2.2}, "t",
              tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
