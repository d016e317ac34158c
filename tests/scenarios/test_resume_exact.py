"""Scenario resume is exact: killed after any finished task and resumed, results.json is byte-for-byte the same."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from retune.evaluation import fast_mean_auroc
from retune.methods.base import MethodContext, PromptBank
from retune.scenarios.generators import generate_tasks
from retune.scenarios.runner import PreparedScenario, chunk_rows, run_method, summarise
from retune.scenarios.spec import GeneratorSpec, ScenarioConfig

CLASSES = ["A", "B", "C", "D", "E", "F"]
N_TASKS = 3


def learnable_scenario() -> PreparedScenario:
    """Vectors whose labels depend on them (so the numbers move with every weight), 3 class-incremental tasks."""
    rng = np.random.default_rng(3)
    images = rng.normal(size=(300, 8)).astype(np.float32)
    labels = (images[:, :6] + 0.5 * rng.normal(size=(300, 6)) > 0.4).astype(np.float32)
    patients = np.array([f"p{i}" for i in range(300)])
    train, val, test = np.arange(0, 200), np.arange(200, 240), np.arange(240, 300)
    tasks = generate_tasks(GeneratorSpec(kind="class", n_tasks=N_TASKS), CLASSES, seed=0)
    rows = [(chunk_rows(train, patients, t.rows, 0), chunk_rows(val, patients, t.rows, 0)) for t in tasks]
    context = MethodContext(8, 4, False, PromptBank(), fast_mean_auroc, 0)
    return PreparedScenario(
        CLASSES, images, labels, patients, test, {0: tasks}, {0: rows}, lambda seed: context, "fake", "fake-print"
    )


def results_bytes(name: str, prepared: PreparedScenario, config: ScenarioConfig, work) -> bytes:
    scores = run_method(name, 0, prepared, config, work, lambda message: None)
    return json.dumps(summarise(name, prepared, config, {(0, 0): scores}), sort_keys=True).encode()


@pytest.mark.parametrize("name", ["naive", "lwf"])
def test_resume_after_each_task_gives_identical_results(tmp_path, name):
    prepared = learnable_scenario()
    config = ScenarioConfig(generate=GeneratorSpec(kind="class", n_tasks=N_TASKS), methods=[name], n_bootstrap=20)
    config.retune.optim.epochs, config.retune.optim.min_epochs, config.retune.optim.patience = 8, 1, 8
    torch.manual_seed(0)
    uninterrupted = results_bytes(name, prepared, config, tmp_path / "full")
    for finished in range(1, N_TASKS):
        work = tmp_path / f"killed-after-{finished}"
        shutil.copytree(tmp_path / "full", work)
        for later in range(finished + 1, N_TASKS + 1):
            shutil.rmtree(work / name / "order0-seed0" / f"task{later}")
        torch.manual_seed(1000 + finished)  # a fresh process starts from another random state
        np.random.seed(1000 + finished)
        assert results_bytes(name, prepared, config, work) == uninterrupted, f"resumed after task {finished}"
