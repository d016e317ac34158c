"""The scenario report explains itself: integer task ticks, legends off panels, staircase order, n/a vs not learned."""

from __future__ import annotations

import pytest
from matplotlib.collections import PolyCollection

from retune.report import plots
from retune.report.scenario_report import per_class_table, staircase_order


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, target: figures.append(figure) or target)
    yield figures
    for figure in figures:
        plots.plt.close(figure)


def test_task_axis_has_integer_ticks_and_the_legend_is_beside_the_panel(captured):
    plots.plot_mean_auroc_per_task({"retune": [[0.6, 0.65, 0.7]], "naive": [[0.6, 0.64, 0.7]]}, "unused.png")
    axis = captured[0].axes[0]
    assert list(axis.get_xticks()) == [1, 2, 3]
    lines = axis.get_lines()
    assert lines[0].get_marker() != lines[1].get_marker() and lines[0].get_linestyle() != lines[1].get_linestyle()
    captured[0].canvas.draw()
    legend = axis.get_legend().get_window_extent()
    assert legend.x0 >= axis.get_window_extent().x1  # never over the lines


def test_matrix_draws_not_yet_learned_and_undefined_differently(captured):
    matrix = [
        [0.7, None, None],
        [0.68, 0.8, None],
    ]  # class C: learned in task 2 but undefined; class B: not learned in task 1
    plots.plot_auroc_matrix(matrix, ["A", "B", "C"], ["task1", "task2"], "retune", "unused.png", introduced=[0, 1, 1])
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in captured[0].axes[0].texts}
    assert texts[(1, 0)] == "·" and texts[(2, 0)] == "·"
    assert texts[(2, 1)] == "n/a" and texts[(1, 1)] == "0.80"


def test_staircase_order_follows_the_tasks_and_leaves_untrained_classes_out():
    tasks = [{"classes": ["C", "A"]}, {"classes": ["B"]}]
    order, introduced = staircase_order(tasks, ["A", "B", "C", "D"])
    assert order == ["A", "C", "B"] and introduced == [0, 0, 1]


def test_per_class_table_lists_final_auroc_of_every_method():
    results = {
        "retune": {"classes": ["A", "B"], "auroc_matrix": [[0.7, None], [0.66, None]]},
        "naive": {"classes": ["A", "B"], "auroc_matrix": [[0.7, None], [0.61, 0.9]]},
    }
    table = per_class_table(results, ["A", "B"], [0, 1], ["task1", "task2"])
    assert "<td>A</td><td>task1</td><td>0.660</td><td>0.610</td>" in table
    assert "<td>B</td><td>task2</td><td>undefined</td><td>0.900</td>" in table


def test_a_scenario_runs_mlflow_runs_hold_config_cis_per_class_finals_and_task_histories(phantom_scenario):
    """The session's phantom `scenario run` (through the API, tracking on) leaves one MLflow run per method with the
    config, CI bounds, final per-class AUROC and, for each task of the first (order, seed) run, its per-epoch
    training loss: the histories the runner saved under work/<method>/order<N>-seed<S>/task<T>/."""
    import json

    from mlflow.tracking import MlflowClient

    from retune.experiments.run_folder import tracking_uri

    client = MlflowClient(tracking_uri(phantom_scenario))
    experiment = client.get_experiment_by_name("retune-scenario-phantom-scenario")
    runs = {run.data.tags["mlflow.runName"]: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"simplecil", "naive"}
    run, result = runs["naive"], json.loads((phantom_scenario / "naive" / "results.json").read_text())
    assert run.data.params["config.retune.optim.epochs"] == "5" and run.data.params["method"] == "naive"
    assert run.data.metrics["final_mean_auroc_ci_low"] == pytest.approx(result["final_mean_auroc_ci"][0])
    last_class = result["classes"][-1]
    assert run.data.metrics[f"final_auroc.{last_class}"] == pytest.approx(result["auroc_matrix"][-1][-1])
    first = result["orders"][0]
    for task in range(1, len(first["tasks"]) + 1):
        saved = json.loads(
            (phantom_scenario / "work" / "naive" / f"order{first['order']}-seed{first['seed']}" / f"task{task}"
             / "config.json").read_text()
        )["learn"]["history"]["train_loss"]
        logged = client.get_metric_history(run.info.run_id, f"task{task}.train_loss")
        assert len(saved) >= 2 and [point.value for point in logged] == pytest.approx(saved)
        assert [point.step for point in logged] == list(range(1, len(saved) + 1))


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
    from retune.report.scenario_report import first_run_label

    assert first_run_label(result) == "order 0, seed 0 only: the first of 2 runs"
