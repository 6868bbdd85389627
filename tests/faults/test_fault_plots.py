"""Plots a person can read (issue 22): eval.png has whole-number step ticks and no log axis
for accuracies; compare.png stays readable when an Optuna trial diverges, which is marked."""

import math

import matplotlib
import pytest

from bilevel.compare.curves import Curve
from bilevel.compare.report import CLIP, y_range
from bilevel.compare.report import plot as plot_compare
from bilevel.training.rundir import draw, log_scale, plot

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the backend)


def drawn(name, points):
    figure, axis = pyplot.subplots()
    draw(axis, name, points)
    figure.canvas.draw()
    ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
    pyplot.close(figure)
    return axis.get_yscale(), ticks


def test_three_steps_get_whole_step_ticks_and_accuracy_a_linear_axis():
    scale, ticks = drawn("eval_accuracy", [(1, 0.5), (2, 0.9), (3, 0.99)])
    assert scale == "linear" and ticks and all(t == int(t) for t in ticks)
    assert drawn("eval_accuracy", [(1, 0.01), (2, 0.9)])[0] == "linear"  # even over 90x


def test_losses_spanning_decades_keep_a_log_axis_and_others_not():
    assert drawn("loss", [(1, 100.0), (2, 1.0), (3, 0.01)])[0] == "log"
    assert not log_scale("eval_val_loss", [0.5, 0.4])  # a log axis would hide nothing here
    assert not log_scale("loss", [-1.0, 10.0])
    assert drawn("loss", [(1, math.nan), (2, 1.0), (3, 0.5)])[0] == "linear"


def test_eval_png_is_written_from_a_short_history(tmp_path):
    history = [{"step": s, "loss": 1.0 / s, "eval_accuracy": 0.5 + 0.1 * s} for s in (1, 2, 3)]
    plot(tmp_path, history)
    assert (tmp_path / "eval.png").stat().st_size > 0 and (tmp_path / "loss.png").is_file()


def curves_with_a_diverged_first_trial():
    optuna, bilevel = Curve("optuna-tpe"), Curve("bilevel")
    for cost, value in [(10, 2.75e251), (20, math.nan), (30, 0.4), (40, 0.3)]:
        optuna.add(cost, cost / 10, value)
    for cost, value in [(10, 0.9), (20, 0.35), (30, 0.29)]:
        bilevel.add(cost, cost / 10, value)
    return {"bilevel": bilevel, "optuna-tpe": optuna}


def test_compare_y_axis_is_clipped_above_the_final_values():
    scale, bottom, top = y_range(curves_with_a_diverged_first_trial())
    assert scale == "log" and bottom < 0.29 and top == pytest.approx(CLIP * 0.3 * 1.5)


def test_compare_y_axis_is_linear_with_a_negative_value():
    curves = {"a": Curve("a")}
    for cost, value in [(1, 1e200), (2, -1.0), (3, -2.0)]:
        curves["a"].add(cost, cost, value)
    scale, bottom, top = y_range(curves)
    assert scale == "linear" and bottom < -2.0 and top < 1e5


def test_compare_png_marks_the_diverged_trials(tmp_path, monkeypatch):
    marked = []
    original = matplotlib.axes.Axes.plot

    def spy(axis, *args, **kwargs):
        marked.append(kwargs.get("label"))
        return original(axis, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_compare(tmp_path / "compare.png", curves_with_a_diverged_first_trial(), "t")
    assert marked.count("optuna-tpe: diverged or clipped") == 2  # both panels
    assert "bilevel: diverged or clipped" not in marked
    assert (tmp_path / "compare.png").stat().st_size > 0
