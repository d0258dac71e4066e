"""Tests of the plot helpers that no other test file covers."""

from utils.plots import plot_lr_schedule


def test_plot_lr_schedule_marks_the_end_of_warm_up():
    fig = plot_lr_schedule([0.1, 0.2, 0.3, 0.2, 0.1], warmup_steps=2)
    ax = fig.axes[0]

    assert len(ax.lines) == 2  # the rates and the dotted marker
    assert list(ax.lines[0].get_ydata()) == [0.1, 0.2, 0.3, 0.2, 0.1]
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "learning rate"
    assert len(plot_lr_schedule([0.1, 0.1], warmup_steps=0).axes[0].lines) == 1
