"""The exemplar-free scenario runner: every method learns the same tasks on the same cached vectors.

Exemplar-free by construction: for task t the runner slices task t's rows out of the embedding
matrix (a copy) and hands only that ``TaskData`` to ``method.learn``; no method ever receives
the full matrix or earlier tasks' rows. After each task the method scores the fixed test split,
and the state is saved, so an interrupted run resumes after the last finished task. Saved states are
kept under a fingerprint of everything that determines the results (config, embedded data, backbone,
method code); a rerun with another fingerprint is refused (or, with ``restart``, starts over), never mixed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retune.backbones.registry import create_backbone
from retune.config import parse_config
from retune.data.splits import patient_split
from retune.errors import ConfigError, DataError
from retune.evaluation import continual_metrics, mean_and_sd
from retune.experiments.prepare import GENERAL_DOMAIN_NOTE, embed_and_load, method_context, prompt_bank, read_data
from retune.experiments.run_folder import WORK, scenario_run_folder, task_folder
from retune.io_utils import atomic_path, load_array, read_json, write_json_atomic
from retune.methods.base import Method, TaskData
from retune.methods.registry import available_methods, create_method
from retune.progress import epoch_bar
from retune.scenarios.generators import generate_tasks
from retune.scenarios.sites import read_sites, site_breakdown, site_split, site_tasks
from retune.scenarios.spec import RowChunk, ScenarioConfig, TaskSpec, validate_tasks
from retune.store import EmbeddingStore
from retune.training.rng import load_rng_state, save_rng_state

Progress = Callable[[str], None]


SCENARIO_FILE = "scenario.json"  # the config a scenario output folder ran with

@dataclass
class PreparedScenario:
    """The data every method shares: embeddings, labels, the split, prompts and the task rows."""

    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    test_rows: np.ndarray
    tasks_by_order: dict[int, list[TaskSpec]]
    rows_by_order: dict[int, list[tuple[np.ndarray, np.ndarray]]]  # per task: (train rows, val rows)
    context_factory: Callable[[int], object]
    backbone_spec: str
    backbone_fingerprint: str
    sites: np.ndarray | None = None  # site-incremental: each row's site (``retune.scenarios.sites``)


def check_methods(config: ScenarioConfig) -> None:
    """Refuse, before any data is read, unknown methods and methods that declare they cannot run this scenario kind."""
    methods = available_methods()
    unknown = [m for m in config.methods if m not in methods]
    if unknown:
        raise ConfigError(f"unknown method '{unknown[0]}'; valid method names: {', '.join(methods)}")
    for name in config.methods:
        if config.kind is not None and config.kind not in methods[name].scenario_kinds:
            kinds = ", ".join(sorted(methods[name].scenario_kinds))
            raise ConfigError(f"method '{name}' cannot run a {config.kind}-incremental scenario (it runs: {kinds})")


def chunk_rows(rows: np.ndarray, patients: np.ndarray, selector: RowChunk | str, seed: int) -> np.ndarray:
    """Rows of chunk i of k of a seeded partition of these rows' patients (``all``: every row)."""
    if selector == "all":
        return rows
    unique = np.unique(patients[rows])
    order = unique[np.random.default_rng(seed).permutation(len(unique))]
    chosen = set(np.array_split(order, selector.of)[selector.chunk - 1].tolist())
    return rows[np.isin(patients[rows], list(chosen))]


def prepare(config: ScenarioConfig, show_progress: bool = False) -> PreparedScenario:
    """Read and embed the data once, split by patient, build every order's tasks and check them."""
    by_site = config.kind == "site"
    if config.data.csv is None and not (by_site and config.sites and config.sites[0].csv is not None):
        raise ConfigError("scenario has no data: set data.csv or pass --data")
    check_methods(config)
    backbone = create_backbone(config.backbone, device=config.device)
    store = EmbeddingStore(config.store)
    if by_site:
        embedded, site_names = read_sites(config, backbone, store, show_progress)
    else:
        embedded = embed_and_load(read_data(config.data), backbone, store, show_progress)
    table = embedded.table
    classes = list(table.classes)
    labels = table.labels()
    patients = table.patients
    sites = table.sites if by_site else None
    if by_site:
        splits = site_split(patients, sites, site_names, config.split.fractions, config.split.seed)
    else:
        splits = patient_split(patients, config.split.fractions, config.split.seed)
    tasks_by_order, rows_by_order = {}, {}
    for order in config.orders:
        if config.tasks:
            tasks = list(config.tasks)
        elif by_site:
            tasks = site_tasks(config, site_names, labels, sites, classes)
        else:
            tasks = generate_tasks(config.generate, classes, seed=order)
        validate_tasks(tasks, config.kind, classes, site_names if by_site else None)
        rows = []
        for number, task in enumerate(tasks, start=1):
            train = chunk_rows(splits["train"], patients, task.rows, seed=order)
            val = chunk_rows(splits["val"], patients, task.rows, seed=order)
            if task.site is not None:
                train, val = train[sites[train] == task.site], val[sites[val] == task.site]
            columns = [classes.index(c) for c in task.classes]
            if len(train) == 0 or np.isnan(labels[np.ix_(train, columns)]).all():
                raise ConfigError(
                    f"task {number} ({task.name or ', '.join(task.classes)}): no training rows with labels for its "
                    "classes"
                )
            rows.append((train, val))
        tasks_by_order[order], rows_by_order[order] = tasks, rows
    needed = sorted(
        {c for tasks in tasks_by_order.values() for task in tasks for c in task.classes}, key=classes.index
    )
    bank, _ = prompt_bank(needed, config.retune.prompts, backbone, store)
    return PreparedScenario(
        classes=classes,
        images=embedded.images,
        labels=labels,
        patients=patients,
        test_rows=splits["test"],
        tasks_by_order=tasks_by_order,
        rows_by_order=rows_by_order,
        context_factory=lambda seed: method_context(backbone, bank, seed),
        backbone_spec=backbone.spec,
        backbone_fingerprint=backbone.fingerprint,
        sites=sites,
    )


def task_data(prepared: PreparedScenario, task: TaskSpec, train: np.ndarray, val: np.ndarray) -> TaskData:
    """Copies of one task's rows and label columns: all a method ever sees of the data."""
    columns = [prepared.classes.index(c) for c in task.classes]
    return TaskData(
        classes=tuple(task.classes),
        train_x=prepared.images[train].copy(),
        train_y=prepared.labels[np.ix_(train, columns)].copy(),
        val_x=prepared.images[val].copy(),
        val_y=prepared.labels[np.ix_(val, columns)].copy(),
    )


def test_scores(method: Method, prepared: PreparedScenario) -> np.ndarray:
    """Test-split probabilities in the data's class order, NaN for classes the method has not learned.

    Kept in float64, as methods that solve in float64 give them: rounded to float32, probabilities within 6e-8 of 1
    tie, so the recorded AUROC would differ from the one of the same model reloaded (``scenario evaluate``).
    """
    scores = np.full((len(prepared.test_rows), len(prepared.classes)), np.nan, dtype=np.float64)
    predicted = method.predict(prepared.images[prepared.test_rows])
    scores[:, [prepared.classes.index(c) for c in method.classes]] = predicted
    return scores


def _save_task_state(folder: Path, task_index: int, method: Method, scores: np.ndarray, facts: dict) -> None:
    from retune.methods.checkpoint import save_checkpoint

    target = task_folder(folder, task_index + 1)
    save_checkpoint(target, {method.name: method.state()}, {"task": task_index + 1, "learn": facts})
    with atomic_path(target / "test_scores.npy") as temp:
        with open(temp, "wb") as handle:
            np.save(handle, scores)
    save_rng_state(target)  # a resumed run continues from the very same random state
    write_json_atomic(target / "done.json", {"task": task_index + 1})


def _resume(folder: Path, method: Method, n_tasks: int) -> list[np.ndarray]:
    """Scores of already-finished tasks; restores the method's state after the last of them."""
    from retune.methods.checkpoint import load_checkpoint

    finished = []
    for task_index in range(n_tasks):
        target = task_folder(folder, task_index + 1)
        if not (target / "done.json").exists():
            break
        finished.append(load_array(target / "test_scores.npy"))
    if finished:
        tensors, facts = load_checkpoint(task_folder(folder, len(finished)))
        method.load_state(tensors.get(method.name, {}), facts["methods"][method.name])
        load_rng_state(task_folder(folder, len(finished)))
    return finished


NOT_RESULT_FIELDS = {"methods", "store", "tracking_uri", "device"}  # where and how it runs, not what it computes


def results_fingerprint(name: str, config: ScenarioConfig, prepared: PreparedScenario) -> str:
    """Hash of what determines one method's scenario results: the config, the embedded data and labels, the
    backbone fingerprint, and the code of the methods and training loop."""
    from retune import losses, methods, training

    digest = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude=NOT_RESULT_FIELDS)
    digest.update(
        json.dumps(
            {
                "method": name,
                "config": settings,
                "classes": prepared.classes,
                "backbone": prepared.backbone_fingerprint,
            },
            sort_keys=True,
        ).encode()
    )
    for array in (prepared.images, prepared.labels, prepared.patients.astype(str), prepared.test_rows):
        digest.update(np.ascontiguousarray(array).tobytes())
    code = [
        Path(losses.__file__),
        *sorted(Path(methods.__file__).parent.glob("*.py")),
        *sorted(Path(training.__file__).parent.glob("*.py")),
    ]
    for path in code:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def claim_work_dir(folder: Path, fingerprint: str, restart: bool) -> None:
    """Make ``folder`` hold states of this fingerprint only: refuse saved states of another one (or any saved
    without a fingerprint), or with ``restart`` delete them first."""
    marker = folder / "fingerprint.json"
    recorded = read_json(marker) if marker.exists() else None
    saved = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if folder.exists() and saved != fingerprint:
        if not restart:
            raise ConfigError(
                f"{folder}: saved task states come from another config, data, backbone or code version "
                f"(fingerprint {saved or 'none'}, now {fingerprint}); rerun with --restart to start over"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"fingerprint": fingerprint})


def run_method(
    name: str,
    order: int,
    prepared: PreparedScenario,
    config: ScenarioConfig,
    work_dir: Path,
    progress: Progress,
    show_progress: bool = False,
    seed: int | None = None,
) -> list[np.ndarray]:
    """One method through one task order with one training seed; returns test scores after each task."""
    seed = config.seed if seed is None else seed
    tasks, rows = prepared.tasks_by_order[order], prepared.rows_by_order[order]
    bar: dict = {"update": None}
    context = replace(prepared.context_factory(seed), on_epoch=lambda *values: bar["update"](*values))
    method = create_method(name, context, config.retune)
    folder = scenario_run_folder(work_dir, name, order, seed)
    # The joint upper bound keeps earlier tasks' rows in memory, so it restarts rather than resumes.
    scores = _resume(folder, method, len(tasks)) if method.exemplar_free else []
    for task_index in range(len(scores), len(tasks)):
        started = time.perf_counter()
        with epoch_bar(
            f"{name} task {task_index + 1}/{len(tasks)}", config.retune.optim.epochs, enabled=show_progress
        ) as bar["update"]:
            facts = method.learn(task_data(prepared, tasks[task_index], *rows[task_index]))
        scores.append(test_scores(method, prepared))
        _save_task_state(folder, task_index, method, scores[-1], facts)
        elapsed = time.perf_counter() - started
        progress(f"{name} order {order} seed {seed} task {task_index + 1}/{len(tasks)} done in {elapsed:.1f}s")
    return scores


def named_continual_metrics(metrics: dict, classes: list[str]) -> dict:
    """Replace column indices in ``continual_metrics`` output by class names (per-class forgetting, marked classes)."""
    return {
        **metrics,
        "forgetting_per_class": dict(zip(classes, metrics["forgetting_per_class"])),
        "n_test_positives": dict(zip(classes, metrics["n_test_positives"])),
        "too_few_positives": [classes[c] for c in metrics["too_few_positives"]],
    }


def summarise(
    name: str,
    prepared: PreparedScenario,
    config: ScenarioConfig,
    scores_by_run: dict[tuple[int, int], list[np.ndarray]],
) -> dict:
    """results.json for one method: the first (order, seed) run's metrics on top, every run below, mean ± sd."""
    labels = prepared.labels[prepared.test_rows]
    patients = prepared.patients[prepared.test_rows]
    per_run = []
    for index, ((order, seed), scores) in enumerate(scores_by_run.items()):
        metrics = continual_metrics(
            scores,
            labels,
            patients,
            n_bootstrap=config.n_bootstrap if index == 0 or config.bootstrap_every_run else 0,
            seed=config.seed,
            min_positives=config.min_positives,
        )
        tasks = [
            {"name": t.name, "classes": t.classes, "n_train_rows": int(len(r[0])), "n_val_rows": int(len(r[1]))}
            for t, r in zip(prepared.tasks_by_order[order], prepared.rows_by_order[order])
        ]
        named = named_continual_metrics(metrics, prepared.classes)
        if prepared.sites is not None:
            tasks = [{**task, "site": spec.site} for task, spec in zip(tasks, prepared.tasks_by_order[order])]
            named["per_site"] = site_breakdown(
                scores, labels, patients, prepared.sites[prepared.test_rows], prepared.tasks_by_order[order],
                prepared.classes, n_bootstrap=config.n_bootstrap if index == 0 or config.bootstrap_every_run else 0,
                seed=config.seed, min_positives=config.min_positives,
            )
        per_run.append({"order": order, "seed": seed, "tasks": tasks, **named})
    first = per_run[0]
    method_cls = available_methods()[name]
    keys = ("final_mean_auroc", "forgetting", "bwt", "average_incremental_auroc")
    over_runs = {key: mean_and_sd([run[key] for run in per_run]) for key in keys}
    site_keys = ("mean_auroc_after_own_task", "final_mean_auroc", "forgetting")
    site_over_runs = {
        site: {key: mean_and_sd([run["per_site"][site][key] for run in per_run]) for key in site_keys}
        for site in first.get("per_site", {})
    }
    return {
        "method": name,
        "description": method_cls.description,
        "exemplar_free": method_cls.exemplar_free,
        "scenario": config.name,
        "kind": config.kind,
        "backbone": prepared.backbone_spec,
        "classes": prepared.classes,
        **first,
        "orders": per_run,
        "over_runs": over_runs,  # mean ± sample sd over every (order, seed) run
        "final_mean_auroc_over_orders": over_runs["final_mean_auroc"],
        "forgetting_over_orders": over_runs["forgetting"],
        **({"per_site_over_runs": site_over_runs} if site_over_runs else {}),
        "n_test_images": int(len(prepared.test_rows)),
        "seed": config.seed,
        "seeds": config.training_seeds,
        "split_seed": config.split.seed,
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
    }


Job = tuple[str, int, int]  # (method, order, training seed): what ``run_job`` runs
# Runs jobs (each through ``run_method``) and yields (job, test scores after each task) as jobs finish.
SweepEngine = Callable[
    [list[Job], PreparedScenario, ScenarioConfig, Path, Progress], Iterator[tuple[Job, list[np.ndarray]]]
]


def run_sequentially(
    jobs: list[Job],
    prepared: PreparedScenario,
    config: ScenarioConfig,
    work_dir: Path,
    progress: Progress,
    show_progress: bool = False,
) -> Iterator[tuple[Job, list[np.ndarray]]]:
    """The local engine: one job after another in this process (a progress bar per task when shown)."""
    for job in jobs:
        yield job, run_job(job, prepared, config, work_dir, progress, show_progress)


def run_job(
    job: Job, prepared: PreparedScenario, config: ScenarioConfig, work_dir: Path, progress: Progress,
    show_progress: bool = False,
) -> list[np.ndarray]:
    """One (method, order, seed) job through ``run_method``: test scores after each task."""
    name, order, seed = job
    return run_method(name, order, prepared, config, work_dir, progress, show_progress, seed=seed)


def run_scenario(
    config: ScenarioConfig,
    out_dir: str | Path,
    show_progress: bool = False,
    progress: Progress = lambda message: None,
    restart: bool = False,
    engine: SweepEngine | None = None,
) -> dict[str, dict]:
    """Run every method of a scenario; write ``<method>/results.json``, the report and the config.

    Resumes each method after its last finished task when its saved states have the same results fingerprint;
    otherwise ConfigError, or with ``restart`` its states are deleted and it starts over. ``engine`` runs the
    (method, order) jobs: in turn here (default, with progress bars when shown), or as Ray tasks
    (``retune.distributed.ray_sweep``); a method's results are written as soon as all its orders are done, in the
    same form whatever the engine.
    """
    out_dir = Path(out_dir)
    check_methods(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = engine or partial(run_sequentially, show_progress=show_progress)
    prepared = prepare(config, show_progress)
    fingerprints = {name: results_fingerprint(name, config, prepared) for name in config.methods}
    for name, fingerprint in fingerprints.items():
        claim_work_dir(out_dir / WORK / name, fingerprint, restart)
    write_json_atomic(out_dir / SCENARIO_FILE, config.model_dump(mode="json"))
    seeds = config.training_seeds
    jobs = [(name, order, seed) for name in config.methods for order in config.orders for seed in seeds]
    scores: dict[Job, list[np.ndarray]] = {}
    results, final_scores = {}, {}
    runs = [(order, seed) for order in config.orders for seed in config.training_seeds]
    for job, job_scores in engine(jobs, prepared, config, out_dir / WORK, progress):
        scores[job] = job_scores
        name = job[0]
        if all((name, *run) in scores for run in runs):
            results[name] = summarise(name, prepared, config, {run: scores[(name, *run)] for run in runs})
            results[name]["results_fingerprint"] = fingerprints[name]
            final_scores[name] = scores[(name, *runs[0])][-1]
            write_json_atomic(out_dir / name / "results.json", results[name])
            final = results[name]["final_mean_auroc"]
            progress(f"{name}: final mean AUROC {'undefined' if final is None else f'{final:.3f}'}")
    results = {name: results[name] for name in config.methods}
    from retune.report.scenario_report import write_scenario_report

    write_scenario_report(results, prepared, out_dir, final_scores)
    return results


class SavedTask(BaseModel):
    """One task as results.json records it."""

    name: str | None = None
    classes: list[str]


class SavedResults(BaseModel):
    """The fields of a method's results.json that comparisons, reports and the server read (others pass through)."""

    model_config = ConfigDict(extra="allow")

    method: str
    scenario: str
    kind: str | None = None
    exemplar_free: bool
    classes: list[str]
    tasks: list[SavedTask] = Field(min_length=1)
    auroc_matrix: list[list[float | None]]
    mean_auroc_per_task: list[float | None]
    final_mean_auroc: float | None
    final_mean_auroc_ci: list[float | None] | None = None
    forgetting: float | None
    forgetting_ci: list[float | None] | None = None
    bwt: float | None
    bwt_ci: list[float | None] | None = None
    average_incremental_auroc: float | None

    @model_validator(mode="after")
    def _matrix_fits_tasks_and_classes(self) -> SavedResults:
        if len(self.auroc_matrix) != len(self.tasks) or any(len(r) != len(self.classes) for r in self.auroc_matrix):
            raise ValueError(
                f"auroc_matrix must be {len(self.tasks)} tasks x {len(self.classes)} classes "
                f"(it has {len(self.auroc_matrix)} rows of lengths {sorted({len(r) for r in self.auroc_matrix})})"
            )
        unknown = [c for task in self.tasks for c in task.classes if c not in self.classes]
        if unknown:
            raise ValueError(f"task class '{unknown[0]}' is not among the classes")
        return self


def is_scenario_folder(directory: str | Path) -> bool:
    """True for a ``retune scenario run`` output folder (it holds scenario.json); run folders hold none."""
    return (Path(directory) / SCENARIO_FILE).is_file()


def load_scenario_config(directory: str | Path) -> ScenarioConfig:
    """The config a scenario output folder ran with (its scenario.json); errors name the file and field."""
    path = Path(directory) / SCENARIO_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: no scenario.json (is this a 'retune scenario run' output folder?)")
    return parse_config(read_json(path), ScenarioConfig, str(path))


def load_results(directory: str | Path, config: ScenarioConfig | None = None) -> dict[str, dict]:
    """Every ``*/results.json`` under a scenario output folder, by method (in scenario.json's order when present).

    Each file is checked for the fields readers use; a corrupt or partial one is an error naming it.
    """
    found = {}
    for path in sorted(Path(directory).glob("*/results.json")):
        result = read_json(path)
        if not isinstance(result, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(result).__name__}")
        found[parse_config(result, SavedResults, str(path)).method] = result
    if not found:
        raise ConfigError(f"{directory}: no */results.json found (is this a 'retune scenario run' output folder?)")
    if config is None and is_scenario_folder(directory):
        config = load_scenario_config(directory)
    order = config.methods if config is not None else []
    return dict(sorted(found.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
