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

A site-incremental (domain-incremental) scenario lists its sites instead; each becomes one task, in the listed
order, with the classes that site labels (``retune.scenarios.sites``)::

    name: site-incremental
    kind: site
    sites:
      - {name: nih, csv: ../shared/data/nih-cxr14/labels.csv}
      - {name: kermany, csv: ../shared/data/kermany-pneumonia/labels.csv}

or names the sites of one CSV's ``site`` (or ``source``) column: ``data: {csv: all.csv}`` with
``sites: [{name: a}, {name: b}]`` (default: every site, in order of first appearance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from retune.config import ExperimentConfig, ReTuneConfig, StrictModel, load_yaml_config
from retune.errors import ConfigError

ScenarioKind = Literal["class", "label", "data", "site"]


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
    site: str | None = Field(None, description="Site-incremental: the site whose training rows the task brings.")


class SiteSpec(StrictModel):
    """One site of a site-incremental scenario: its own CSV, or its name in the data CSV's site column."""

    name: str = Field(min_length=1)
    csv: Path | None = None
    image_root: Path | None = None
    classes: list[str] | None = Field(None, min_length=1, description="Default: every class this site labels.")


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
    sites: list[SiteSpec] = Field(
        default_factory=list, description="Site-incremental: the sites in task order (one task each)."
    )
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
        if self.sites and self.kind != "site":
            raise ValueError("'sites' belong to a site-incremental scenario: set kind: site")
        if self.kind == "site":
            if self.generate is not None:
                raise ValueError("a site-incremental scenario takes its tasks from 'sites' or 'tasks', not 'generate'")
            names = [site.name for site in self.sites]
            if len(set(names)) != len(names):
                raise ValueError(f"sites: a site is listed twice ({', '.join(names)})")
            with_csv = [site.csv is not None for site in self.sites]
            if any(with_csv) and not all(with_csv):
                raise ValueError("sites: give every site a csv, or none (then data.csv has a site column)")
            return self
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


def validate_tasks(
    tasks: list[TaskSpec], kind: ScenarioKind | None, known_classes: list[str], known_sites: list[str] | None = None
) -> None:
    """Reject unknown classes, overlapping classes in a class-incremental scenario, and a site-incremental task
    without a known site, naming task and class or site."""
    seen: dict[str, int] = {}
    for number, task in enumerate(tasks, start=1):
        if kind == "site" and task.site not in (known_sites or []):
            raise ConfigError(
                f"task {number}: site '{task.site}' is not one of the data's sites ({', '.join(known_sites or [])})"
            )
        for name in task.classes:
            if name not in known_classes:
                raise ConfigError(f"task {number}: unknown class '{name}'; the data has: {', '.join(known_classes)}")
            if kind == "class" and name in seen:
                raise ConfigError(
                    f"task {number}: class '{name}' is already in task {seen[name]}; class-incremental tasks must not "
                    "share classes"
                )
            seen.setdefault(name, number)
