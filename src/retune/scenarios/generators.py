"""Built-in scenario generators (registry): class-, label- and data-incremental task lists."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from retune.errors import ConfigError, unknown_name
from retune.scenarios.spec import GeneratorSpec, RowChunk, TaskSpec

Generator = Callable[[list[str], int, int], list[TaskSpec]]
_GENERATORS: dict[str, Generator] = {}


def register_generator(kind: str) -> Callable[[Generator], Generator]:
    """Decorator: ``generator(classes, n_tasks, seed) -> tasks`` under a scenario kind."""

    def decorator(function: Generator) -> Generator:
        _GENERATORS[kind] = function
        return function

    return decorator


def _class_groups(classes: list[str], n_tasks: int, seed: int) -> list[list[str]]:
    if n_tasks > len(classes):
        raise ConfigError(f"cannot split {len(classes)} classes into {n_tasks} tasks")
    order = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    return [list(group) for group in np.array_split(np.array(order, dtype=object), n_tasks)]


@register_generator("class")
def class_incremental(classes: list[str], n_tasks: int, seed: int) -> list[TaskSpec]:
    """Disjoint class groups in a seeded order; task t brings chunk t of the training patients."""
    groups = _class_groups(classes, n_tasks, seed)
    return [
        TaskSpec(name=f"task{t + 1}", classes=group, rows=RowChunk(chunk=t + 1, of=n_tasks))
        for t, group in enumerate(groups)
    ]


@register_generator("label")
def label_incremental(classes: list[str], n_tasks: int, seed: int) -> list[TaskSpec]:
    """One image pool; task t reveals the labels of the first t class groups."""
    groups = _class_groups(classes, n_tasks, seed)
    return [TaskSpec(name=f"task{t + 1}", classes=sum(groups[: t + 1], []), rows="all") for t in range(n_tasks)]


@register_generator("data")
def data_incremental(classes: list[str], n_tasks: int, seed: int) -> list[TaskSpec]:
    """Every class in every task; training data arrive in ``n_tasks`` patient-level chunks."""
    return [
        TaskSpec(name=f"chunk{t + 1}", classes=list(classes), rows=RowChunk(chunk=t + 1, of=n_tasks))
        for t in range(n_tasks)
    ]


def generate_tasks(spec: GeneratorSpec, data_classes: list[str], seed: int) -> list[TaskSpec]:
    """Run the generator a spec names on the data's classes (or the subset it lists)."""
    if spec.kind not in _GENERATORS:
        raise unknown_name("scenario kind", spec.kind, list(_GENERATORS))
    return _GENERATORS[spec.kind](list(spec.classes or data_classes), spec.n_tasks, seed)
