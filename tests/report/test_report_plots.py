"""The scenario report explains itself: integer task ticks, legends off panels, staircase order, n/a vs not learned."""

from __future__ import annotations

import pytest

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
    plots.plot_mean_auroc_per_task({"retune": [0.6, 0.65, 0.7], "naive": [0.6, 0.64, 0.7]}, "unused.png")
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


def test_scenario_mlflow_runs_hold_config_cis_per_class_finals_and_task_histories(tmp_path, monkeypatch):
    import json

    from mlflow.tracking import MlflowClient

    from retune.report.tracking import log_scenario_results

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "scenario.json").write_text(json.dumps({"name": "toy", "retune": {"optim": {"lr": 0.001}}}))
    (tmp_path / "retune").mkdir()
    (tmp_path / "retune" / "results.json").write_text("{}")
    task = tmp_path / "work" / "retune" / "order0" / "task1"
    task.mkdir(parents=True)
    history = {"train_loss": [0.9, 0.7], "val_score": [0.6, 0.7]}
    (task / "config.json").write_text(json.dumps({"learn": {"history": history}}))
    result = {"scenario": "toy", "backbone": "default", "kind": "class", "exemplar_free": True, "order": 0,
              "classes": ["A", "B"], "auroc_matrix": [[0.7, None], [0.66, 0.8]], "mean_auroc_per_task": [0.7, 0.73],
              "final_mean_auroc": 0.73, "final_mean_auroc_ci": [0.6, 0.8],
              "forgetting": 0.04, "forgetting_ci": [0.0, 0.1],
              "bwt": -0.04, "bwt_ci": [-0.1, 0.0], "average_incremental_auroc": 0.715}
    uri = log_scenario_results({"retune": result}, tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("retune-scenario-toy").experiment_id])
    assert run.data.params["config.retune.optim.lr"] == "0.001"
    assert run.data.metrics["final_mean_auroc_ci_low"] == 0.6 and run.data.metrics["final_auroc.B"] == 0.8
    assert [p.value for p in client.get_metric_history(run.info.run_id, "task1.train_loss")] == [0.9, 0.7]
