"""Scenarios as data: an ordered list of tasks, each naming its classes and its training rows.

A scenario YAML looks like::

    name: nih-class-incremental
    kind: class            # class | label | data (what the checks below enforce)
    data: {csv: ../shared/data/nih-cxr14/labels.csv}
    methods: [retune, retune-distill, linear_probe, naive, lwf, ewc, joint]
    tasks:
      - {classes: [Atelectasis, Cardiomegaly, Effusion], rows: {chunk: 1, of: 5}}
      - {classes: [Infiltration, Mass, Nodule], rows: {chunk: 2, of: 5}}

``rows`` selects training-split patients: ``all`` or chunk i of k of a seeded patient-level
partition. Or let a generator write the tasks: ``generate: {kind: class, n_tasks: 5}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from retune.config import ExperimentConfig, ReTuneConfig, StrictModel, load_yaml_config
from retune.errors import ConfigError

ScenarioKind = Literal["class", "label", "data"]


class RowChunk(StrictModel):
    """Chunk ``chunk`` (1-based) of ``of`` equal patient-level chunks of the training split."""

    chunk: int = Field(ge=1)
    of: int = Field(ge=1)

    @model_validator(mode="after")
    def _in_range(self) -> RowChunk:
        if self.chunk > self.of:
            raise ValueError(f"chunk {self.chunk} of {self.of} does not exist")
        return self


class TaskSpec(StrictModel):
    """One task: the classes whose labels it reveals and which training rows it brings."""

    name: str | None = None
    classes: list[str] = Field(min_length=1)
    rows: Literal["all"] | RowChunk = "all"


class GeneratorSpec(StrictModel):
    """Build the task list from the data's classes (order and chunking seeded)."""

    kind: ScenarioKind
    n_tasks: int = Field(5, ge=1)
    classes: list[str] | None = None  # default: every class of the data
    seed: int = 0


class ScenarioConfig(ExperimentConfig):
    """Everything ``retune scenario run`` needs; saved next to the results."""

    name: str = "scenario"
    kind: ScenarioKind | None = None
    retune: ReTuneConfig = ReTuneConfig()
    methods: list[str] = Field(
        default_factory=lambda: [
            "retune", "retune-distill", "retune-prompt", "retune-residual", "linear_probe", "simplecil", "ranpac",
            "gaussian", "naive", "lwf", "ewc", "joint",
        ]
    )
    orders: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="Seeds for class order / chunking; one run per seed."
    )
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="Training seeds (initialisation, shuffling); one run per (order, seed); default: [seed].",
    )
    tasks: list[TaskSpec] = Field(default_factory=list)
    generate: GeneratorSpec | None = None
    n_bootstrap: int = Field(500, ge=0)
    bootstrap_every_run: bool = Field(
        True, description="Patient-bootstrap CIs for every (order, seed) run; false: only for the first (faster)."
    )

    @property
    def training_seeds(self) -> list[int]:
        """The seeds every order is run with."""
        return list(self.seeds) if self.seeds else [self.seed]

    @model_validator(mode="after")
    def _tasks_or_generator(self) -> ScenarioConfig:
        if not self.tasks and self.generate is None:
            raise ValueError("give either 'tasks' or 'generate'")
        if self.tasks and self.generate is not None:
            raise ValueError("give 'tasks' or 'generate', not both")
        if self.generate is not None and self.kind is None:
            self.kind = self.generate.kind
        return self


def load_scenario(path: str | Path) -> ScenarioConfig:
    """Read and type-check a scenario YAML (errors name the file and field)."""
    return load_yaml_config(path, ScenarioConfig)


def validate_tasks(tasks: list[TaskSpec], kind: ScenarioKind | None, known_classes: list[str]) -> None:
    """Reject unknown classes, and overlapping classes in a class-incremental scenario, naming task and class."""
    seen: dict[str, int] = {}
    for number, task in enumerate(tasks, start=1):
        for name in task.classes:
            if name not in known_classes:
                raise ConfigError(f"task {number}: unknown class '{name}'; the data has: {', '.join(known_classes)}")
            if kind == "class" and name in seen:
                raise ConfigError(
                    f"task {number}: class '{name}' is already in task {seen[name]}; class-incremental tasks must not "
                    "share classes"
                )
            seen.setdefault(name, number)
