"""Score a finished scenario's final models on another labelled CSV: how a user checks a result on an external site.

Every method's model after the last task of every (order, seed) run is rebuilt from its checkpoint and
scored on the CSV's images (embedded through the store once), with per-class AUROC, patient-bootstrap
CIs and the min-positives rule; images or patients that the scenario trained or validated on are
counted and reported loudly, never silently mixed in. The CSV may label only some of the scenario's classes: those
are scored, the others listed (``retune.evaluation.coverage``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retune.backbones.registry import create_backbone
from retune.evaluation import evaluate_scores, mean_and_sd
from retune.evaluation.coverage import label_coverage, per_site_metrics
from retune.experiments.prepare import GENERAL_DOMAIN_NOTE, embed_and_load, method_context, read_data
from retune.experiments.run_folder import WORK, scenario_run_folder, task_folder
from retune.io_utils import write_json_atomic
from retune.methods.base import PromptBank
from retune.methods.checkpoint import load_checkpoint
from retune.methods.registry import create_method
from retune.scenarios.runner import load_results, load_scenario_config, prepare
from retune.store import EmbeddingStore


def _row_keys(images: np.ndarray) -> set[bytes]:
    """Content-keyed store: identical images have identical embeddings, so their bytes identify the image."""
    return {row.tobytes() for row in np.ascontiguousarray(images)}


def evaluate_scenario(
    results_dir: str | Path,
    csv_path: str | Path,
    store_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    n_bootstrap: int = 1000,
    min_positives: int | None = None,
    show_progress: bool = False,
    allow_outside_root: bool = False,
) -> dict:
    """Per method: the first run's metrics with CIs on the CSV, mean ± sd of mean AUROC over runs; saved as JSON."""
    results_dir = Path(results_dir)
    config = load_scenario_config(results_dir)
    if store_dir is not None:
        config = config.model_copy(update={"store": Path(store_dir)})
    minimum = config.min_positives if min_positives is None else min_positives
    results = load_results(results_dir)
    first = next(iter(results.values()))
    learned = {c for task in first["orders"][0]["tasks"] for c in task["classes"]}
    classes = [c for c in first["classes"] if c in learned]  # the data's order, the scenario's classes
    other = {"csv": Path(csv_path), "image_root": image_root, "classes": None,
             "allow_outside_root": allow_outside_root or config.data.allow_outside_root}
    table = read_data(config.data.model_copy(update=other))
    coverage = label_coverage(classes, table.labelled_classes(), str(csv_path))
    classes = coverage.scored
    backbone = create_backbone(config.backbone, device=config.device)
    embedded = embed_and_load(table, backbone, EmbeddingStore(config.store), show_progress)
    table, images = embedded.table, embedded.images
    labels = table.labels(classes)

    prepared = prepare(config, show_progress)
    seen_rows = np.setdiff1d(np.arange(len(prepared.images)), prepared.test_rows)
    seen_images = _row_keys(prepared.images[seen_rows])
    overlap_images = int(sum(row.tobytes() in seen_images for row in np.ascontiguousarray(images)))
    overlap_patients = sorted(set(map(str, table.patients)) & set(map(str, prepared.patients[seen_rows])))
    warnings = coverage.warnings(Path(csv_path).name)
    if overlap_images:
        warnings.append(
            f"{overlap_images} of {len(images)} images were in the scenario's training or validation rows: "
            "these scores are not external"
        )
    if overlap_patients:
        warnings.append(
            f"{len(overlap_patients)} patients of {csv_path} were in the scenario's training or validation rows"
        )

    report = {}
    for name, result in results.items():
        records = []
        for run in result["orders"]:
            seed = run.get("seed", result["seed"])
            folder = task_folder(scenario_run_folder(results_dir / WORK, name, run["order"], seed), len(run["tasks"]))
            tensors, facts = load_checkpoint(folder)
            method = create_method(name, method_context(backbone, PromptBank(), seed), config.retune)
            method.load_state(tensors.get(name, {}), facts["methods"][name])
            scores = method.predict(images)[:, [method.classes.index(c) for c in classes]]
            evaluated = evaluate_scores(
                scores,
                labels,
                classes,
                table.patients,
                n_bootstrap=n_bootstrap if not records else 0,
                seed=config.seed,
                min_positives=minimum,
            )
            by_site = per_site_metrics(
                scores, labels, classes, table.patients, table.sites, 0 if records else n_bootstrap, config.seed,
                minimum,
            )
            site_block = {"per_site": by_site} if by_site else {}
            records.append({"order": run["order"], "seed": seed, **evaluated.to_dict(), **site_block})
        report[name] = {
            "method": name,
            "exemplar_free": result["exemplar_free"],
            **records[0],
            "runs": records,
            "mean_auroc_over_runs": mean_and_sd([r["mean_auroc"] for r in records]),
        }
    payload = {
        "scenario": config.name,
        "kind": config.kind,
        "csv": str(csv_path),
        "n_images": len(images),
        "n_patients": int(len(set(table.patients))),
        "backbone": backbone.spec,
        "min_positives": minimum,
        **coverage.to_dict(),
        "warnings": warnings,
        "note": GENERAL_DOMAIN_NOTE if config.backbone == "default" else "",
        "methods": report,
    }
    write_json_atomic(results_dir / f"external-{Path(csv_path).stem}.json", payload)
    return payload
