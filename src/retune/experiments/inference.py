"""Apply a saved run to new data (evaluate on a labelled CSV, predict images), however the run was trained.

``retune train`` runs hold adaptors over cached embeddings, so images go through the embedding store.
``retune peft run`` runs hold tuned encoder tensors: the backbone is rebuilt, tuned the same way and
loaded, and images run through it (the frozen-prefix cache still serves its frozen blocks). Both give
the same ``metrics.json`` records, so ``retune compare`` reads them side by side. The loader is the one
registered for the run's kind (``experiments.kinds``); Adaptor runs are refused in one line.
``SavedRun.score_pixels`` scores images already in memory (the server's uploads) without the store;
``patch_scorer`` maps each patch token's prompt similarities where the backbone allows it. Evaluation
counts images the run trained or validated on (the leakage guard, ``retune.evaluation.leakage``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retune.config import DataConfig
from retune.data.image_stats import image_summary, shift_report
from retune.data.pixels import pixel_shape
from retune.data.readers import missing_images_hint
from retune.data.splits import patient_split
from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable
from retune.errors import ConfigError, DataError, unknown_name
from retune.evaluation import DEFAULT_MIN_POSITIVES
from retune.evaluation.coverage import label_coverage
from retune.evaluation.leakage import DIGESTS_FILE, file_hashes, overlap_warning, overlapping_rows
from retune.evaluation.paired import paired_auroc_difference
from retune.experiments import adaptor, peft, segmentation, train  # noqa: F401  (importing them registers their run kinds)
from retune.experiments.kinds import SavedRun, loader_for
from retune.experiments.prepare import is_training_csv, metrics_record, read_data
from retune.methods.checkpoint import load_checkpoint
from retune.methods.retune import ReTuneModel


def open_run(
    run_dir: str | Path,
    store_dir: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = False,
    cache: bool = False,
    verify: bool = True,
) -> SavedRun:
    """Rebuild a run directory with the loader registered for the kind its config.json records.

    New images are embedded in memory unless ``cache`` (then their embeddings are added to the store). A run whose
    config.json records no weights hash is refused unless ``verify`` is False (see ``load_checkpoint``).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: run directory does not exist")
    checkpoint = load_checkpoint(run_dir, verify=verify)
    saved = loader_for(checkpoint[1])(run_dir, checkpoint, store_dir, device, show_progress, cache=cache)
    return replace(saved, path=run_dir)


RunLike = str | Path | SavedRun


def evaluation_table(
    run: SavedRun, csv_path: str | Path, split: str, image_root: str | Path | None, allow_outside_root: bool = False
) -> tuple[ImageTable, str]:
    """The labelled table to evaluate, read like the run's training data, and the split (``auto`` resolved).

    The CSV may label only some of the run's classes (see ``label_coverage``). Image paths must stay inside the
    image root unless ``allow_outside_root`` (or the run was trained so)."""
    train_config = run.config
    if split == "auto":
        split = "test" if is_training_csv(csv_path, run.facts) else "all"
    if split not in ("all", "train", "val", "test"):
        raise unknown_name("split", split, ["all", "train", "val", "test", "auto"])
    data = DataConfig.model_validate(train_config["data"])
    other = {
        "csv": Path(csv_path),
        "image_root": image_root or data.image_root,
        "classes": None,
        "allow_outside_root": allow_outside_root or data.allow_outside_root,
    }
    table = read_data(data.model_copy(update=other))
    return table, split


def evaluate_run(
    run: RunLike,
    csv_path: str | Path,
    split: str = "auto",
    store_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    n_bootstrap: int = 1000,
    show_progress: bool = False,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    exclude_overlap: bool = False,
    cache: bool = False,
    allow_outside_root: bool = False,
) -> dict:
    """Evaluate a saved run on a CSV: the training CSV's test split by default, another CSV whole.

    Scored: the run's classes the CSV labels; ``unlabelled_classes`` / ``unlearned_classes`` list the run's classes
    the CSV does not label and the CSV's classes the run never learned (also as warnings). Blank cells are masked.
    ``site_shift`` compares the images' sizes and colours with the run's training images (a loud warning when they
    differ a lot).

    Images that the run trained or validated on (by content, see ``retune.evaluation.leakage``) are counted,
    recorded under ``overlap`` and warned about; ``exclude_overlap`` drops them from the metrics.
    """
    run = run if isinstance(run, SavedRun) else open_run(run, store_dir, show_progress=show_progress, cache=cache)
    train_config = run.config
    table, split = evaluation_table(run, csv_path, split, image_root, allow_outside_root)
    coverage = label_coverage(run.classes, table.labelled_classes(), str(csv_path))
    scores, rows, errors = run.score(table)
    if not len(rows):
        raise DataError(
            f"{csv_path}: no readable image to evaluate ({len(errors)} unreadable){missing_images_hint(table)}"
        )
    table = table.subset(rows)
    if split != "all":
        kept = patient_split(table.patients, train_config["split"]["fractions"], train_config["split"]["seed"])[split]
        table, scores = table.subset(kept), {name: values[kept] for name, values in scores.items()}
    overlap, warnings = check_overlap(run.path, table, exclude_overlap)
    if exclude_overlap and overlap["rows"] is not None:
        kept = np.flatnonzero(~overlap["rows"])
        if not len(kept):
            raise DataError(f"{csv_path}: every evaluated image is a training or validation image of {run.path}")
        table, scores = table.subset(kept), {name: values[kept] for name, values in scores.items()}
    del overlap["rows"]
    seed = int(train_config["seed"])
    shift, shift_warnings = shift_report(run.facts.get("data", {}).get("image_summary"), image_summary(table.paths))
    columns = [run.classes.index(name) for name in coverage.scored]
    records = {
        name: metrics_record(
            name, run.backbone, coverage.scored, values[:, columns], table, split, n_bootstrap, seed, min_positives
        )
        for name, values in scores.items()
    }
    return {
        **records[run.main],
        "baselines": {k: v for k, v in records.items() if k != run.main},
        "csv": str(csv_path),
        **coverage.to_dict(),
        "overlap": overlap,
        "site_shift": shift,
        "warnings": coverage.warnings(Path(csv_path).name) + shift_warnings + warnings,
    }


def check_overlap(run_dir: str | Path, table: ImageTable, exclude: bool) -> tuple[dict, list[str]]:
    """The leakage guard on an evaluation table: ({n_images, of, excluded, checked, rows}, warnings)."""
    rows = overlapping_rows(run_dir, file_hashes(table.paths))
    if rows is None:
        unchecked = {"checked": False, "n_images": None, "of": len(table), "excluded": False, "rows": None}
        return unchecked, [
            f"{run_dir} has no {DIGESTS_FILE} (made before the leakage guard, or removed): "
            "overlap with training images was not checked"
        ]
    count = int(rows.sum())
    warnings = [overlap_warning(count, len(table), exclude)] if count else []
    return {
        "checked": True,
        "n_images": count,
        "of": len(table),
        "excluded": bool(exclude and count),
        "rows": rows,
    }, warnings


def paired_comparison(
    run_a: str | Path,
    run_b: str | Path,
    csv_path: str | Path,
    split: str = "auto",
    n_bootstrap: int = 1000,
    image_root: str | Path | None = None,
    show_progress: bool = False,
    min_positives: int = DEFAULT_MIN_POSITIVES,
) -> dict:
    """Main-method AUROC of run A minus run B on the same images (A's split of the CSV), paired patient-bootstrap CI.

    The images are those both runs could score; images either run trained or validated on are left out and counted.
    The mean difference covers the classes with ``min_positives`` positives among them, as every other mean does.
    """
    first, second = open_run(run_a, show_progress=show_progress), open_run(run_b, show_progress=show_progress)
    train_config = first.config
    table, split = evaluation_table(first, csv_path, split, image_root)
    if split != "all":
        fractions, seed = train_config["split"]["fractions"], train_config["split"]["seed"]
        table = table.subset(patient_split(table.patients, fractions, seed)[split])
    shared = [name for name in first.classes if name in second.classes]
    coverage = label_coverage(shared, table.labelled_classes(), str(csv_path))
    classes = coverage.scored
    scored = []
    for run in (first, second):
        scores, rows, _ = run.score(table)
        full = np.full((len(table), len(run.classes)), np.nan)
        full[rows] = scores[run.main]
        scored.append(full[:, [run.classes.index(name) for name in classes]])
    usable = ~np.isnan(scored[0]).any(axis=1) & ~np.isnan(scored[1]).any(axis=1)
    overlaps = {}
    for run_dir in (run_a, run_b):
        overlap, _ = check_overlap(run_dir, table, exclude=True)
        overlaps[str(run_dir)] = overlap["n_images"]
        if overlap["rows"] is not None:
            usable &= ~overlap["rows"]
    kept = np.flatnonzero(usable)
    if not len(kept):
        raise DataError(f"{csv_path}: no image that both runs can score and neither trained on")
    table = table.subset(kept)
    result = paired_auroc_difference(
        scored[0][kept],
        scored[1][kept],
        table.labels(classes),
        classes,
        table.patients,
        n_bootstrap,
        int(train_config["seed"]),
        min_positives=min_positives,
    )
    return {
        "run_a": str(run_a),
        "method_a": first.main,
        "run_b": str(run_b),
        "method_b": second.main,
        "split": split,
        "csv": str(csv_path),
        "excluded_training_overlap": overlaps,
        **coverage.to_dict(),
        **result,
    }


def predict_images(
    run: RunLike,
    image_paths: list[str | Path],
    store_dir: str | Path | None = None,
    method: str | None = None,
    cache: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class probabilities for new images (default: the run's main method); also returns the unreadable images."""
    run = run if isinstance(run, SavedRun) else open_run(run, store_dir, cache=cache)
    paths = [str(Path(p).resolve()) for p in image_paths]
    scores, rows, errors = run.score(ImageTable(pd.DataFrame({PATH_COLUMN: paths, PATIENT_COLUMN: paths}), []))
    method = method or run.main
    if method not in scores:
        raise unknown_name("method", method, list(scores))
    frame = pd.DataFrame(scores[method], columns=run.classes)
    frame.insert(0, "image", [paths[r] for r in rows])
    if method == run.main:  # the stored thresholds were chosen for the main method's scores
        frame.attrs["thresholds"] = dict(run.facts.get("thresholds") or {})
        frame.attrs["threshold_rule"] = run.facts.get("threshold_rule")
    return frame, errors


PatchScorer = Callable[[torch.Tensor], np.ndarray]  # one preprocessed image (1 x C x H x W) -> classes x rows x cols


def patch_scorer(run: SavedRun) -> PatchScorer | None:
    """Each patch token's similarity to every class's positive minus its negative prompt, through the RE-tune adaptors.

    Offered only where it means what the pooled score means: a RE-tune head, and a backbone whose patch tokens form a
    square grid in the pooled embedding's space with the pooled vector as their mean (the default EfficientNet's 7 x 7
    feature map). Elsewhere (ViT hidden states before the projection, other heads) it is None.
    """
    backbone, head = run.backbone, run.head
    if not isinstance(head, ReTuneModel):
        return None
    probe = backbone.encode_images(torch.zeros(1, *pixel_shape(backbone)), tokens=True)
    tokens = probe.tokens
    side = round(tokens.shape[1] ** 0.5) if tokens is not None else 0
    if tokens is None or tokens.shape[-1] != backbone.image_dim or side * side != tokens.shape[1]:
        return None  # no patch tokens, tokens in another space, or not a square grid
    if not torch.allclose(tokens.float().mean(dim=1), probe.pooled.float(), atol=1e-4, rtol=1e-3):
        return None  # the pooled vector is not the tokens' mean (e.g. a class token or a projection)

    def score(pixels: torch.Tensor) -> np.ndarray:
        patches = backbone.encode_images(pixels.to(backbone.device), tokens=True).tokens[0].float()
        with torch.no_grad():
            positive, negative = head.similarities(patches)
        return (positive - negative).T.reshape(-1, side, side).cpu().numpy()

    return score


def prediction_records(frame: pd.DataFrame) -> list[dict]:
    """One {"image": path, "probabilities": {class: p}, "decisions": {class: p >= threshold or None}} per row, full
    precision (for --json and .json files); decisions use the run's validation-chosen thresholds."""
    thresholds = frame.attrs.get("thresholds") or {}
    records = []
    for row in frame.itertuples(index=False):
        probabilities = {name: float(value) for name, value in zip(frame.columns[1:], row[1:])}
        decisions = {
            name: bool(value >= thresholds[name]) if name in thresholds else None
            for name, value in probabilities.items()
        }
        records.append({"image": row[0], "probabilities": probabilities, "decisions": decisions})
    return records


def write_predictions(frame: pd.DataFrame, output: Path) -> None:
    """Write the probabilities in the format the extension names (full precision), atomically."""
    from retune.io_utils import atomic_path

    suffix = output.suffix.lower()
    with atomic_path(output) as temp:
        if suffix == ".parquet":
            frame.to_parquet(temp, index=False)
        elif suffix == ".json":
            temp.write_text(json.dumps(prediction_records(frame), indent=2) + "\n")
        else:
            frame.to_csv(temp, index=False)
