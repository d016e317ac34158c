"""Site-incremental (domain-incremental) scenarios: each task is one hospital with the classes it labels.

The sites come from one CSV each (``sites: [{name, csv}]``) or from one CSV's ``site`` column. Each site is split
by patient on its own (the same fractions and seed), so every site has its own test patients; after every task the
runner scores all test rows, and ``site_breakdown`` reads each site's AUROC matrix, final mean AUROC and forgetting
since its own task (the first site's AUROC after the last task against after its own task) from them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retune.backbones.base import Backbone
from retune.data.splits import patient_split
from retune.data.table import SITE_COLUMN, ImageTable
from retune.errors import ConfigError, DataError
from retune.evaluation import continual_metrics, evaluate_scores
from retune.experiments.prepare import EmbeddedTable, embed_and_load, read_data
from retune.scenarios.spec import ScenarioConfig, TaskSpec
from retune.store import EmbeddingStore


def read_sites(
    config: ScenarioConfig, backbone: Backbone, store: EmbeddingStore, show_progress: bool = False
) -> tuple[EmbeddedTable, list[str]]:
    """Every site's rows embedded into one table with a ``site`` column, and the site names in task order."""
    if config.sites and config.sites[0].csv is not None:
        parts = []
        for site in config.sites:
            update = {"csv": site.csv, "image_root": site.image_root, "classes": site.classes}
            embedded = embed_and_load(read_data(config.data.model_copy(update=update)), backbone, store, show_progress)
            embedded.table.frame[SITE_COLUMN] = site.name
            parts.append(embedded)
        return _concatenate(parts), [site.name for site in config.sites]
    embedded = embed_and_load(read_data(config.data), backbone, store, show_progress)
    return embedded, _site_names(embedded.table, config)


def _site_names(table: ImageTable, config: ScenarioConfig) -> list[str]:
    """The sites of one CSV's site column: those the config lists (in its order), else all in order of appearance."""
    source = table.source.name if table.source is not None else "data"
    if table.sites is None:
        raise ConfigError(
            f"{source}: no 'site' or 'source' column; a site-incremental scenario needs sites (add the column, or "
            "list sites with a csv each)"
        )
    present = list(pd.unique(table.sites))
    if len(present) < 2:
        raise DataError(
            f"{source}: column '{SITE_COLUMN}' has one value ('{present[0]}'); a site-incremental scenario needs at "
            "least two sites"
        )
    names = [site.name for site in config.sites] or present
    for name in names:
        if name not in present:
            raise ConfigError(f"sites: '{name}' is not in {source}'s site column ({', '.join(present)})")
    return names


def _concatenate(parts: list[EmbeddedTable]) -> EmbeddedTable:
    """One table of several sites' tables: classes in order of first appearance, NaN where a site has no column."""
    classes = list(dict.fromkeys(name for part in parts for name in part.table.classes))
    frame = pd.concat([part.table.frame for part in parts], ignore_index=True)
    first = parts[0].table
    table = ImageTable(frame, classes, first.source, first.image_root, {}, None)
    return EmbeddedTable(
        table, np.concatenate([part.images for part in parts]), sum(part.n_failed for part in parts)
    )


def site_split(
    patients: np.ndarray, sites: np.ndarray, names: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """A patient-level train/val/test split of each site on its own; a site with no rows or no test patients is an
    error naming it."""
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for name in names:
        rows = np.flatnonzero(sites == name)
        if not len(rows):
            raise DataError(f"site '{name}' has no rows")
        own = patient_split(patients[rows], fractions, seed)
        if not len(own["test"]):
            n_patients = len(np.unique(patients[rows]))
            raise DataError(
                f"site '{name}': no test patients ({n_patients} patients, split fractions {list(fractions)}); "
                "give it more patients"
            )
        for part, selected in own.items():
            splits[part].append(rows[selected])
    return {part: np.sort(np.concatenate(chosen)) for part, chosen in splits.items()}


def site_tasks(config: ScenarioConfig, names: list[str], labels: np.ndarray, sites: np.ndarray,
               classes: list[str]) -> list[TaskSpec]:
    """One task per site, in order, with the classes the config gives it or else every class it labels."""
    listed = {site.name: site.classes for site in config.sites}
    tasks = []
    for name in names:
        rows = sites == name
        labelled = [c for i, c in enumerate(classes) if not np.isnan(labels[rows, i]).all()]
        tasks.append(TaskSpec(name=name, site=name, classes=listed.get(name) or labelled))
    return tasks


def site_breakdown(
    scores_per_task: list[np.ndarray],
    labels: np.ndarray,
    patients: np.ndarray,
    sites: np.ndarray,
    tasks: list[TaskSpec],
    classes: list[str],
    n_bootstrap: int,
    seed: int,
    min_positives: int,
) -> dict[str, dict]:
    """Per site (test rows): AUROC matrix and mean after each task, final mean with CI, forgetting since its own task
    (best mean from its own task on, minus the final one; per class too), and after each task the per-class metrics
    of the classes learned so far; CIs from a bootstrap over patients."""
    task_sites = [task.site for task in tasks]
    breakdown = {}
    for name in dict.fromkeys(task_sites):
        rows = np.flatnonzero(sites == name)
        own = task_sites.index(name)
        options = {"n_bootstrap": n_bootstrap, "seed": seed, "min_positives": min_positives}
        site_scores = [scores[rows] for scores in scores_per_task]
        whole = continual_metrics(site_scores, labels[rows], patients[rows], **options)
        since = continual_metrics(site_scores[own:], labels[rows], patients[rows], **options)
        breakdown[name] = {
            "own_task": own + 1,
            "n_test_images": int(len(rows)),
            "n_test_patients": int(len(np.unique(patients[rows]))),
            "auroc_matrix": whole["auroc_matrix"],
            "mean_auroc_per_task": whole["mean_auroc_per_task"],
            "mean_auroc_after_own_task": whole["mean_auroc_per_task"][own],
            "final_mean_auroc": whole["final_mean_auroc"],
            "final_mean_auroc_ci": whole["final_mean_auroc_ci"],
            "forgetting": since["forgetting"],
            "forgetting_ci": since["forgetting_ci"],
            "forgetting_per_class": {
                c: value for c, value in zip(classes, since["forgetting_per_class"]) if value is not None
            },
            "n_test_positives": dict(zip(classes, whole["n_test_positives"])),
            "too_few_positives": [classes[c] for c in whole["too_few_positives"]],
            "n_classes_in_mean": whole["n_classes_in_mean"],
            "metrics_after_task": [
                _learned_metrics(scores, labels[rows], patients[rows], classes, options) for scores in site_scores
            ],
        }
    return breakdown


def _learned_metrics(scores: np.ndarray, labels: np.ndarray, patients: np.ndarray, classes: list[str],
                     options: dict) -> dict:
    """``evaluate_scores`` (per-class AUROC with CIs) over the classes learned so far (score columns without NaN)."""
    learned = np.flatnonzero(~np.isnan(scores).any(axis=0))
    return evaluate_scores(
        scores[:, learned], labels[:, learned], [classes[c] for c in learned], patients, **options
    ).to_dict()
