"""Scenario plots of several runs show what the tables average: the mean, its band and every run."""

from __future__ import annotations

import pytest
from matplotlib.collections import PolyCollection

from retune.report import plots
from retune.report.scenario_report import first_run_label, per_class_table


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, target: figures.append(figure) or target)
    yield figures
    for figure in figures:
        plots.plt.close(figure)


def test_mean_auroc_curve_of_several_runs_draws_their_mean_a_band_and_each_run(captured):
    runs = [[0.6, 0.7], [0.5, 0.4]]
    plots.plot_mean_auroc_per_task({"naive": runs}, "unused.png")
    axis = captured[0].axes[0]
    mean_line, *run_lines = axis.get_lines()
    assert list(mean_line.get_ydata()) == pytest.approx([0.55, 0.55]) and len(run_lines) == 2
    (band,) = [c for c in axis.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.4) and ys.max() == pytest.approx(0.7)
    assert "2 runs" in axis.get_legend().get_texts()[0].get_text()


def test_final_per_class_table_of_several_runs_is_their_mean_and_single_run_plots_say_which_run():
    result = {
        "classes": ["A"],
        "auroc_matrix": [[0.9]],
        "orders": [{"order": 0, "seed": 0, "auroc_matrix": [[0.9]]}, {"order": 1, "seed": 0, "auroc_matrix": [[0.5]]}],
    }
    table = per_class_table({"naive": result}, ["A"], [0], ["task1"])
    assert "0.700 ± 0.283 (n=2)" in table
    assert first_run_label(result) == "order 0, seed 0 only: the first of 2 runs"
