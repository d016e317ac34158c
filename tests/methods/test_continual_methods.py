"""Continual baselines (naive, LwF, EWC, joint) on a toy 3-task problem built so that a shared adaptor forgets.

Task 1's images carry strong nuisance variance along directions that tasks 2 and 3 use as class
signal, so fine-tuning the shared adaptor on later tasks leaks that nuisance into task 1's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from retune.config import AdaptorConfig, OptimConfig, ReTuneConfig
from retune.evaluation import fast_mean_auroc
from retune.methods.base import Method, MethodContext, PromptBank, TaskData
from retune.methods.checkpoint import load_checkpoint, save_checkpoint
from retune.methods.continual import SharedHeadModel
from retune.methods.registry import available_methods, create_method

DIM = 64
ROWS_PER_TASK = 137  # odd, so no model dimension equals it by accident
TEST_ROWS = 400
N_TASKS = 3
NUISANCE_STD = 5.0
SIGNAL = 3.0
OVERLAP = 0.7  # share of a later class's direction that lies in task 1's nuisance subspace
METHODS = ("naive", "lwf", "ewc", "joint")
CONFIG = ReTuneConfig(
    adaptor=AdaptorConfig(image="dense", text="dense", shared_dim=32, dropout=0.0),
    optim=OptimConfig(lr=1e-2, epochs=100, patience=100),
)


def toy_tasks(seed: int = 0) -> tuple[list[TaskData], list[tuple[np.ndarray, np.ndarray]]]:
    """Three tasks of two multi-label classes each (train/val of 137 rows), plus a test set per task."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]
    own, nuisance = basis[:, :6], basis[:, 6:10]
    directions = [own[:, 0], own[:, 1]] + [
        OVERLAP * nuisance[:, c - 2] + np.sqrt(1 - OVERLAP**2) * own[:, c] for c in range(2, 6)
    ]

    def sample(task: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
        images = rng.normal(size=(n, DIM)) + SIGNAL * labels @ np.stack(directions[2 * task : 2 * task + 2])
        if task == 0:
            images += (rng.normal(size=(n, nuisance.shape[1])) * NUISANCE_STD) @ nuisance.T
        return images.astype(np.float32), labels

    tasks, tests = [], []
    for task in range(N_TASKS):
        train, val = sample(task, ROWS_PER_TASK), sample(task, ROWS_PER_TASK)
        tasks.append(TaskData((f"class{2 * task}", f"class{2 * task + 1}"), *train, *val))
        tests.append(sample(task, TEST_ROWS))
    return tasks, tests


def context(seed: int = 0) -> MethodContext:
    return MethodContext(DIM, DIM, False, PromptBank(), fast_mean_auroc, seed)


def task_auroc(method: Method, test: tuple[np.ndarray, np.ndarray], task: int) -> float:
    images, labels = test
    return fast_mean_auroc(method.predict(images)[:, 2 * task : 2 * task + 2], labels)


@dataclass
class Run:
    """One method after all tasks, with task-by-task AUROCs."""

    method: Method
    current: list[float]  # AUROC of task t's classes right after learning task t
    first_task: list[float]  # AUROC of task 1's classes after each task
    final_mean: float  # mean over tasks of their classes' AUROC at the end


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    tasks, tests = toy_tasks()
    result = {}
    for name in METHODS:
        method = create_method(name, context(), CONFIG)
        current, first_task = [], []
        for index, task in enumerate(tasks):
            method.learn(task)
            current.append(task_auroc(method, tests[index], index))
            first_task.append(task_auroc(method, tests[0], 0))
        final_mean = float(np.mean([task_auroc(method, tests[t], t) for t in range(N_TASKS)]))
        result[name] = Run(method, current, first_task, final_mean)
    return result


def forgetting(run: Run) -> float:
    return run.first_task[0] - run.first_task[-1]


def test_registry_lists_the_baselines():
    assert set(METHODS) <= set(available_methods())
    assert all(available_methods()[name].description for name in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_each_task_is_learned(runs, name):
    assert min(runs[name].current) > 0.8, runs[name].current


def test_naive_forgets(runs):
    assert forgetting(runs["naive"]) > 0.05, runs["naive"].first_task


@pytest.mark.parametrize("name", ["lwf", "ewc"])
def test_regularised_methods_forget_less_than_naive(runs, name):
    assert forgetting(runs[name]) < forgetting(runs["naive"]) / 2, (runs[name].first_task, runs["naive"].first_task)
    assert runs[name].final_mean > runs["naive"].final_mean


def test_joint_reaches_naive(runs):
    assert runs["joint"].final_mean >= runs["naive"].final_mean


@pytest.mark.parametrize("name", METHODS)
def test_predictions_are_probabilities_over_seen_classes(runs, name):
    images = toy_tasks()[1][0][0]
    scores = runs[name].method.predict(images)
    assert scores.shape == (len(images), 2 * N_TASKS)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip_through_checkpoint(runs, name, tmp_path):
    method = runs[name].method
    tensors, facts = method.state()
    save_checkpoint(tmp_path, {name: (tensors, facts)}, {})
    loaded_tensors, loaded_facts = load_checkpoint(tmp_path)
    restored = create_method(name, context(seed=1), CONFIG)
    restored.load_state(loaded_tensors[name], loaded_facts["methods"][name])
    images = toy_tasks()[1][1][0]
    assert restored.classes == method.classes
    np.testing.assert_array_equal(restored.predict(images), method.predict(images))


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_holds_no_per_image_data(runs, name):
    """No tensor has a row-count-shaped dimension: training, validation or test rows of any task, or their unions."""
    tensors, _ = runs[name].method.state()
    assert row_shaped(tensors) == []


def test_the_per_image_check_catches_validation_and_test_rows():
    """The check above can fail: states holding validation or test embeddings are flagged."""
    tasks, tests = toy_tasks()
    assert row_shaped({"val": tasks[0].val_x, "test": tests[1][0], "head": np.zeros((6, DIM))}) == ["val", "test"]


def row_shaped(tensors: dict[str, np.ndarray]) -> list[str]:
    """Names of tensors with a dimension equal to a row count the method saw (train, val, unions) or the test size."""
    seen_rows = {ROWS_PER_TASK * k for k in range(1, 2 * N_TASKS + 1)}  # train and val rows, any union (joint's)
    test_rows = {TEST_ROWS * k for k in range(1, N_TASKS + 1)}
    return [name for name, value in tensors.items() if set(np.shape(value)) & (seen_rows | test_rows)]


def test_ewc_state_carries_fisher_and_anchor(runs):
    tensors, _ = runs["ewc"].method.state()
    assert {"fisher.head_weight", "anchor.head_weight"} <= set(tensors)
    assert tensors["fisher.head_weight"].shape == tensors["head_weight"].shape


def test_add_outputs_keeps_existing_rows():
    torch.manual_seed(0)
    model = SharedHeadModel(DIM, DIM, CONFIG)
    model.add_outputs(2)
    before = model.head_weight.detach().clone()
    model.add_outputs(3)
    assert model.head_weight.shape == (5, 32) and model.head_bias.shape == (5,)
    torch.testing.assert_close(model.head_weight[:2].detach(), before)
    assert model.head_bias[2:].abs().max() == 0
