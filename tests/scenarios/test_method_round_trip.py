"""Every registered method survives its checkpoint: a reloaded model predicts what the trained one did, and learning on
after a reload gives what learning on without one gives — on a well-posed stream and on an ill-conditioned one (fewer
rows than dimensions, duplicated rows), where rounding in a save or an unstable solve would show first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retune.config import AdaptorConfig, OptimConfig, ReTuneConfig
from retune.evaluation import fast_mean_auroc
from retune.experiments.run_folder import scenario_run_folder
from retune.methods import ranpac
from retune.methods.base import Method, MethodContext, PromptBank, TaskData
from retune.methods.checkpoint import load_checkpoint, save_checkpoint
from retune.methods.registry import available_methods, create_method
from retune.scenarios.generators import generate_tasks
from retune.scenarios.runner import PreparedScenario, chunk_rows, run_method
from retune.scenarios.spec import GeneratorSpec, ScenarioConfig
from retune.training.rng import capture_rng_state, restore_rng_state

DIM = 16  # image and text width alike, so the aligned-only zero-shot method runs too
CLASSES = [f"class{i}" for i in range(6)]
N_TASKS = 3
CASES = ("well_posed", "ill_conditioned")
CONFIG = ReTuneConfig(
    adaptor=AdaptorConfig(image="dense", text="dense", shared_dim=8, dropout=0.0),
    optim=OptimConfig(lr=1e-2, epochs=6, min_epochs=1, patience=6),
)
ALL_METHODS = sorted(available_methods())
EXEMPLAR_FREE = [name for name, cls in available_methods().items() if cls.exemplar_free]


@pytest.fixture(autouse=True)
def narrow_ranpac(monkeypatch):
    """RanPAC with 128 random features instead of 1,024: the same code paths, 60x less linear algebra."""
    monkeypatch.setattr(ranpac, "PROJECTION_DIM", 128)


def context(seed: int = 0) -> MethodContext:
    rng = np.random.default_rng(99)
    bank = PromptBank({c: rng.normal(size=DIM) for c in CLASSES}, {c: rng.normal(size=DIM) for c in CLASSES})
    return MethodContext(DIM, DIM, True, bank, fast_mean_auroc, seed)


def rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings shifted along one direction per positive label (offset from the origin, as real embeddings are)."""
    directions = np.random.default_rng(7).normal(size=(len(CLASSES), DIM))
    labels = (rng.random((n, len(CLASSES))) < 0.4).astype(np.float32)
    labels[: len(CLASSES), :] = np.eye(len(CLASSES), dtype=np.float32)[: min(n, len(CLASSES))]  # both label values
    return (rng.normal(size=(n, DIM)) + 1.5 * labels @ directions + 2.0).astype(np.float32), labels


TASK_COLUMNS = ([0, 1], [2, 3], [0, 1, 4, 5])  # the last task brings two new classes and two earlier ones back


def stream(case: str) -> list[TaskData]:
    """Three tasks (new classes, then earlier ones with new rows too); ill-conditioned: 5 distinct rows, each twice,
    in 16 dimensions."""
    rng = np.random.default_rng(11)
    tasks = []
    for columns in TASK_COLUMNS:
        if case == "well_posed":
            (train_x, train_y), (val_x, val_y) = rows(90, rng), rows(30, rng)
        else:
            train_x, train_y = (np.repeat(part, 2, axis=0) for part in rows(5, rng))
            val_x, val_y = rows(4, rng)
        tasks.append(
            TaskData(tuple(CLASSES[c] for c in columns), train_x, train_y[:, columns], val_x, val_y[:, columns])
        )
    return tasks


def probe_images() -> np.ndarray:
    """Rows near the training data and far outside it (where an ill-conditioned head extrapolates hardest)."""
    rng = np.random.default_rng(5)
    return np.concatenate([rows(60, rng)[0], 6.0 * rng.normal(size=(20, DIM))]).astype(np.float32)


def reload_from(folder: Path, name: str) -> Method:
    """A fresh method built from the checkpoint in ``folder``."""
    tensors, facts = load_checkpoint(folder)
    restored = create_method(name, context(seed=1), CONFIG)  # another seed: nothing may come from __init__
    restored.load_state(tensors.get(name, {}), facts["methods"][name])
    return restored


def assert_same_scores(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal to 1e-6 relative on p and on 1 - p, so scores near 1 (where AUROC ties form) are held as tightly."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(1.0 - actual, 1.0 - expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_reloaded_model_predicts_what_the_trained_one_did(name, case, tmp_path):
    method = create_method(name, context(), CONFIG)
    for task in stream(case):
        method.learn(task)
    scores = method.predict(probe_images())
    assert np.isfinite(scores).all()
    save_checkpoint(tmp_path, {name: method.state()}, {})
    restored = reload_from(tmp_path, name)
    assert restored.classes == method.classes
    assert_same_scores(restored.predict(probe_images()), scores)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", EXEMPLAR_FREE)
def test_learning_on_after_a_reload_equals_never_reloading(name, case, tmp_path):
    """Tasks 1-2, checkpoint (and the global random state, as the scenario runner saves it), reload, task 3 ==
    tasks 1-3 in memory; task 3 adds rows to classes of task 1, so the reloaded statistics are used, not only kept."""
    tasks = stream(case)
    method = create_method(name, context(), CONFIG)
    for task in tasks[:2]:
        method.learn(task)
    random_state = capture_rng_state()
    saved = tmp_path / "after-task-2"
    save_checkpoint(saved, {name: method.state()}, {})
    method.learn(tasks[2])
    expected = method.predict(probe_images())
    restored = reload_from(saved, name)
    restore_rng_state(*random_state)  # after loading, as a resumed scenario does
    restored.learn(tasks[2])
    assert_same_scores(restored.predict(probe_images()), expected)


def ill_conditioned_scenario() -> PreparedScenario:
    """Fewer training rows per task than dimensions, half of them duplicates; labels that depend on the vectors."""
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(60, DIM)).astype(np.float32) + 2.0
    images = np.concatenate([distinct, distinct[:30], rng.normal(size=(60, DIM)).astype(np.float32) * 4.0])
    labels = (images[:, : len(CLASSES)] + 0.5 * rng.normal(size=(len(images), len(CLASSES))) > 2.3).astype(np.float32)
    patients = np.array([f"p{i}" for i in range(len(images))])
    train, val, test = np.r_[0:30, 60:90], np.arange(30, 60), np.arange(90, 150)
    tasks = generate_tasks(GeneratorSpec(kind="class", n_tasks=N_TASKS), CLASSES, seed=0)
    task_rows = [(chunk_rows(train, patients, t.rows, 0), chunk_rows(val, patients, t.rows, 0)) for t in tasks]
    return PreparedScenario(
        CLASSES,
        images,
        labels,
        patients,
        test,
        {0: tasks},
        {0: task_rows},
        context,
        "fake",
        "fake-print",
    )


@pytest.mark.parametrize("name", EXEMPLAR_FREE)
def test_scenario_scores_are_those_of_the_saved_final_model(name, tmp_path):
    """What ``scenario evaluate`` and resume rebuild from the last checkpoint scores the test rows exactly as the
    scenario recorded, and so gives the same AUROC."""
    prepared = ill_conditioned_scenario()
    config = ScenarioConfig(generate=GeneratorSpec(kind="class", n_tasks=N_TASKS), methods=[name], n_bootstrap=0)
    config.retune = CONFIG
    recorded = run_method(name, 0, prepared, config, tmp_path, lambda message: None)[-1]
    tensors, facts = load_checkpoint(scenario_run_folder(tmp_path, name, 0, config.seed) / f"task{N_TASKS}")
    method = create_method(name, context(config.seed), CONFIG)
    method.load_state(tensors[name], facts["methods"][name])
    columns = [CLASSES.index(c) for c in method.classes]
    rebuilt = method.predict(prepared.images[prepared.test_rows])
    assert_same_scores(recorded[:, columns], rebuilt)
    labels = prepared.labels[prepared.test_rows][:, columns]
    assert fast_mean_auroc(recorded[:, columns], labels) == fast_mean_auroc(rebuilt, labels)


@pytest.mark.parametrize("case", CASES)
def test_gaussian_probabilities_keep_the_ranking_of_its_log_odds(case):
    """Rows like the training ones get probabilities strictly inside (0, 1) on a well-posed stream, and on either
    stream the probabilities rank rows (almost) as the log-odds do: an overfitted within-class variance once gave
    |log-odds| in the thousands, probabilities of exactly 0 or 1 in float64, and ties that cost 0.07 AUROC here."""
    method = create_method("gaussian", context(), CONFIG)
    for task in stream(case):
        method.learn(task)
    images, labels = rows(200, np.random.default_rng(8))
    weights, bias = method.heads()
    columns = [CLASSES.index(c) for c in method.classes]
    scores = method.predict(images)
    if case == "well_posed":
        assert ((scores > 0) & (scores < 1)).all()
    from_probabilities = fast_mean_auroc(scores, labels[:, columns])
    assert from_probabilities == pytest.approx(fast_mean_auroc(images @ weights + bias, labels[:, columns]), abs=1e-3)
