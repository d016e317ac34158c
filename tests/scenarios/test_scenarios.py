"""Scenario generators, validation, the exemplar-free runner and resuming, on synthetic vectors."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from retune.config import ReTuneConfig
from retune.errors import ConfigError
from retune.evaluation import fast_mean_auroc
from retune.methods import registry
from retune.methods.base import Method, MethodContext, PromptBank, TaskData
from retune.scenarios.generators import generate_tasks
from retune.scenarios.runner import (
    PreparedScenario,
    chunk_rows,
    claim_work_dir,
    results_fingerprint,
    run_method,
    summarise,
)
from retune.scenarios.spec import GeneratorSpec, ScenarioConfig, TaskSpec, validate_tasks

CLASSES = ["A", "B", "C", "D", "E", "F"]


class RecordingMethod(Method):
    """Remembers exactly which rows and arrays each ``learn`` call received."""

    name: ClassVar[str] = "recording"
    description: ClassVar[str] = "test double"
    received: ClassVar[list[TaskData]] = []

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)

    def learn(self, task: TaskData) -> dict:
        RecordingMethod.received.append(task)
        self.add_classes(task.classes)
        return {}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.tile(images[:, :1], (1, len(self.classes))) % 1.0

    def state(self):
        return {}, {"classes": self.classes}

    def load_state(self, tensors, facts) -> None:
        self.classes = list(facts["classes"])


@pytest.fixture(autouse=True)
def recording_method(monkeypatch):
    """RecordingMethod registered for one test only; the global registry is restored afterwards.

    Built-ins are loaded first: loading them into a temporary copy would leave the real registry empty.
    """
    registry.available_methods()
    monkeypatch.setitem(registry._METHODS, RecordingMethod.name, RecordingMethod)


def prepared_scenario(kind: str, n_tasks: int = 3, n_rows: int = 300) -> PreparedScenario:
    """Synthetic embeddings whose first column is the row id, so received rows can be traced."""
    rng = np.random.default_rng(0)
    images = np.column_stack([np.arange(n_rows, dtype=np.float32), rng.normal(size=(n_rows, 7)).astype(np.float32)])
    labels = (rng.random((n_rows, len(CLASSES))) < 0.3).astype(np.float32)
    patients = np.array([f"p{i // 2}" for i in range(n_rows)])
    train, val, test = np.arange(0, 200), np.arange(200, 240), np.arange(240, 300)
    tasks = generate_tasks(GeneratorSpec(kind=kind, n_tasks=n_tasks), CLASSES, seed=0)
    rows = [(chunk_rows(train, patients, t.rows, 0), chunk_rows(val, patients, t.rows, 0)) for t in tasks]
    context = MethodContext(8, 4, False, PromptBank(), fast_mean_auroc, 0)
    return PreparedScenario(
        CLASSES, images, labels, patients, test, {0: tasks}, {0: rows}, lambda seed: context, "fake", "fake-print"
    )


def test_class_incremental_tasks_have_disjoint_classes_and_rows():
    """Class-incremental: each class in exactly one task, and each task brings other patients."""
    prepared = prepared_scenario("class")
    tasks = prepared.tasks_by_order[0]
    assert sorted(c for t in tasks for c in t.classes) == sorted(CLASSES)
    train_sets = [set(train.tolist()) for train, _ in prepared.rows_by_order[0]]
    assert all(not (a & b) for i, a in enumerate(train_sets) for b in train_sets[i + 1 :])
    assert set().union(*train_sets) == set(range(200))


def test_label_incremental_reveals_growing_label_sets_on_one_pool():
    """Label-incremental: task t knows the classes of tasks 1..t, all on the same image pool."""
    tasks = generate_tasks(GeneratorSpec(kind="label", n_tasks=3), CLASSES, seed=1)
    assert [len(t.classes) for t in tasks] == [2, 4, 6]
    assert all(set(a.classes) < set(b.classes) for a, b in zip(tasks, tasks[1:]))
    assert all(t.rows == "all" for t in tasks)


def test_data_incremental_keeps_every_class_and_chunks_data():
    """Data-incremental: every task has all classes; chunks are disjoint."""
    tasks = generate_tasks(GeneratorSpec(kind="data", n_tasks=5), CLASSES, seed=0)
    assert all(t.classes == CLASSES for t in tasks)
    assert [t.rows.chunk for t in tasks] == [1, 2, 3, 4, 5]


def test_class_order_depends_on_seed():
    """Different order seeds give different class orders (several orders measure variance)."""
    first = generate_tasks(GeneratorSpec(kind="class", n_tasks=3), CLASSES, seed=0)
    second = generate_tasks(GeneratorSpec(kind="class", n_tasks=3), CLASSES, seed=5)
    assert [t.classes for t in first] != [t.classes for t in second]


def test_unknown_class_is_rejected_naming_task_and_class():
    """A task naming a class the data lacks is refused before training."""
    with pytest.raises(ConfigError, match=r"task 2: unknown class 'Z'"):
        validate_tasks([TaskSpec(classes=["A"]), TaskSpec(classes=["Z"])], "class", CLASSES)


def test_overlapping_classes_are_rejected_in_class_incremental():
    """Class-incremental tasks must not share classes; the message names both tasks."""
    with pytest.raises(ConfigError, match=r"task 2: class 'A' is already in task 1"):
        validate_tasks([TaskSpec(classes=["A", "B"]), TaskSpec(classes=["A"])], "class", CLASSES)
    validate_tasks([TaskSpec(classes=["A", "B"]), TaskSpec(classes=["A"])], "label", CLASSES)


def test_scenario_config_needs_tasks_or_generator():
    """A scenario with neither tasks nor a generator is a config error naming the problem."""
    from retune.config import parse_config

    with pytest.raises(ConfigError, match="give either 'tasks' or 'generate'"):
        parse_config({"name": "x"}, ScenarioConfig, "s.yaml")


def test_runner_hands_each_task_only_its_own_rows_as_copies(tmp_path):
    """Exemplar-free: task t's learn() gets exactly task t's rows and label columns, never views of the full matrix."""
    prepared = prepared_scenario("class")
    RecordingMethod.received.clear()
    config = ScenarioConfig(generate=GeneratorSpec(kind="class", n_tasks=3), methods=["recording"])
    run_method("recording", 0, prepared, config, tmp_path, lambda message: None)
    assert len(RecordingMethod.received) == 3
    for task, (train, val), spec in zip(
        RecordingMethod.received, prepared.rows_by_order[0], prepared.tasks_by_order[0]
    ):
        assert sorted(task.train_x[:, 0].astype(int).tolist()) == sorted(train.tolist())
        assert task.classes == tuple(spec.classes)
        assert task.train_y.shape == (len(train), len(spec.classes))
        assert not np.shares_memory(task.train_x, prepared.images)
        assert not np.shares_memory(task.train_y, prepared.labels)
        assert set(task.val_x[:, 0].astype(int).tolist()) == set(val.tolist())


def test_interrupted_run_resumes_after_last_finished_task(tmp_path):
    """Deleting task 3's marker makes a rerun learn only task 3 and keep tasks 1-2's scores."""
    prepared = prepared_scenario("class")
    config = ScenarioConfig(generate=GeneratorSpec(kind="class", n_tasks=3), methods=["recording"])
    RecordingMethod.received.clear()
    first = run_method("recording", 0, prepared, config, tmp_path, lambda message: None)
    (tmp_path / "recording" / "order0-seed0" / "task3" / "done.json").unlink()
    RecordingMethod.received.clear()
    second = run_method("recording", 0, prepared, config, tmp_path, lambda message: None)
    assert len(RecordingMethod.received) == 1
    assert RecordingMethod.received[0].classes == tuple(prepared.tasks_by_order[0][2].classes)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_saved_states_of_another_configuration_are_refused_or_restarted(tmp_path):
    """A changed config, data or fingerprint never resumes: one-line refusal naming --restart, or a clean restart."""
    prepared = prepared_scenario("class")
    config = ScenarioConfig(generate=GeneratorSpec(kind="class", n_tasks=3), methods=["recording"], seed=0)
    fingerprint = results_fingerprint("recording", config, prepared)
    folder = tmp_path / "recording"
    claim_work_dir(folder, fingerprint, restart=False)
    run_method("recording", 0, prepared, config, tmp_path, lambda message: None)
    claim_work_dir(folder, fingerprint, restart=False)  # same inputs: the states stay for resuming
    assert (folder / "order0-seed0" / "task3" / "done.json").exists()

    changed_config = config.model_copy(update={"seed": 1})
    changed_data = prepared_scenario("class")
    changed_data.labels[0, 0] = 1.0 - changed_data.labels[0, 0]
    moved_store = config.model_copy(update={"store": tmp_path / "elsewhere"})
    assert results_fingerprint("recording", moved_store, prepared) == fingerprint  # where it runs is not an input
    for other in (results_fingerprint("recording", changed_config, prepared),
                  results_fingerprint("recording", config, changed_data)):
        assert other != fingerprint
        with pytest.raises(ConfigError, match=r"saved task states come from another config.*rerun with --restart"):
            claim_work_dir(folder, other, restart=False)
    claim_work_dir(folder, results_fingerprint("recording", changed_config, prepared), restart=True)
    assert not (folder / "order0-seed0").exists()


def test_summary_has_the_documented_fields(tmp_path):
    """results.json carries method, scenario, classes, tasks, the matrix, per-task means, final AUROC with CI,
    forgetting, BWT."""
    prepared = prepared_scenario("class")
    config = ScenarioConfig(
        name="toy", generate=GeneratorSpec(kind="class", n_tasks=3), methods=["recording"], n_bootstrap=50
    )
    scores = run_method("recording", 0, prepared, config, tmp_path, lambda message: None)
    result = summarise("recording", prepared, config, {(0, 0): scores})
    for key in (
        "method",
        "scenario",
        "classes",
        "tasks",
        "auroc_matrix",
        "mean_auroc_per_task",
        "final_mean_auroc",
        "final_mean_auroc_ci",
        "forgetting",
        "bwt",
    ):
        assert key in result
    assert len(result["auroc_matrix"]) == 3 and len(result["auroc_matrix"][0]) == len(CLASSES)
    first_task_classes = [CLASSES.index(c) for c in prepared.tasks_by_order[0][1].classes]
    assert all(result["auroc_matrix"][0][c] is None for c in first_task_classes)  # not yet learned after task 1
    assert result["scenario"] == "toy"


def test_method_that_cannot_run_a_scenario_kind_is_refused_in_one_line(monkeypatch):
    """The runner refuses before reading data, naming the method and the scenario kind."""
    from retune.scenarios.runner import check_methods

    monkeypatch.setattr(RecordingMethod, "scenario_kinds", frozenset({"class"}))
    config = ScenarioConfig(name="toy", generate=GeneratorSpec(kind="data", n_tasks=2), methods=["recording"])
    with pytest.raises(ConfigError, match="method 'recording' cannot run a data-incremental scenario"):
        check_methods(config)
    check_methods(config.model_copy(update={"kind": "class"}))


def test_every_order_and_seed_is_a_run_with_mean_and_sd(tmp_path):
    """Two seeds of one order: two runs in results.json, and the over-runs summary has their sample sd."""
    prepared = prepared_scenario("class")
    generate = GeneratorSpec(kind="class", n_tasks=3)
    config = ScenarioConfig(
        name="toy", generate=generate, methods=["recording"], seeds=[0, 5], n_bootstrap=0, min_positives=1
    )
    runs = {
        (0, seed): run_method("recording", 0, prepared, config, tmp_path, lambda message: None, seed=seed)
        for seed in config.training_seeds
    }
    result = summarise("recording", prepared, config, runs)
    assert [(run["order"], run["seed"]) for run in result["orders"]] == [(0, 0), (0, 5)]
    finals = [run["final_mean_auroc"] for run in result["orders"]]
    expected = {"mean": pytest.approx(np.mean(finals)), "std": pytest.approx(np.std(finals, ddof=1)), "n": 2}
    assert result["over_runs"]["final_mean_auroc"] == expected
    assert (tmp_path / "recording" / "order0-seed5" / "task3" / "done.json").exists()


def test_data_incremental_curve_is_mean_auroc_after_each_chunk_over_runs():
    """Task t of a data-incremental scenario is labelled by the share of data seen, averaged over runs."""
    from retune.report.scenario_report import per_task_rows

    run = {"mean_auroc_per_task": [0.6, 0.7]}
    results = {"m": {"kind": "data", "tasks": [{}, {}], "orders": [run, {"mean_auroc_per_task": [0.8, 0.7]}]}}
    header, rows = per_task_rows(results)
    assert header == ["method", "50% of the data", "100% of the data"]
    assert rows == [["m", "0.700 ± 0.141 (n=2)", "0.700 ± 0.000 (n=2)"]]


def test_compare_recomputes_means_from_saved_matrices_with_another_threshold():
    """`scenario compare --min-positives`: a rare class's forgetting re-enters the mean at threshold 1, CIs dropped."""
    from retune.report.scenario_report import with_min_positives

    matrix = [[0.8, None], [0.8, 0.9], [0.8, 0.1]]
    run = {"order": 0, "seed": 0, "auroc_matrix": matrix, "mean_auroc_per_task": [0.8, 0.8, 0.8]}
    result = {"classes": ["common", "rare"], "n_test_positives": {"common": 40, "rare": 2}, "auroc_matrix": matrix,
              "orders": [run], "final_mean_auroc_ci": [0.7, 0.9]}
    loose = with_min_positives(result, 1)
    assert loose["final_mean_auroc"] == pytest.approx(0.45) and loose["forgetting"] == pytest.approx(0.4)
    assert loose["final_mean_auroc_ci"] is None and loose["n_classes_in_mean"] == 2
    strict = with_min_positives(result, 10)
    assert strict["final_mean_auroc"] == pytest.approx(0.8) and strict["forgetting"] == pytest.approx(0.0)
    assert strict["too_few_positives"] == ["rare"]

def test_each_task_shows_a_progress_bar_on_stderr(tmp_path, capsys):
    """A bar per task with epoch, training loss and validation AUROC, on stderr only; none when not shown."""
    prepared = prepared_scenario("class", n_tasks=2)
    optim = {"epochs": 3, "min_epochs": 1}
    config = ScenarioConfig(
        generate=GeneratorSpec(kind="class", n_tasks=2), methods=["naive"], retune={"optim": optim}
    )
    run_method("naive", 0, prepared, config, tmp_path / "shown", lambda message: None, show_progress=True)
    captured = capsys.readouterr()
    assert "naive task 1/2" in captured.err and "naive task 2/2" in captured.err
    assert "epoch 3/3" in captured.err and "val AUROC 0." in captured.err and "loss " in captured.err
    assert captured.out == ""
    run_method("naive", 0, prepared, config, tmp_path / "quiet", lambda message: None, show_progress=False)
    assert capsys.readouterr().err == ""
