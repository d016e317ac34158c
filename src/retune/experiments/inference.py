"""Apply a saved run to new data (evaluate on a labelled CSV, predict images), however the run was trained.

``retune train`` runs hold adaptors over cached embeddings, so images go through the embedding store.
``retune peft run`` runs hold tuned encoder tensors: the backbone is rebuilt, tuned the same way and
loaded, and images run through it (the frozen-prefix cache still serves its frozen blocks). Both give
the same ``metrics.json`` records, so ``retune compare`` reads them side by side. The loader is the one
registered for the run's kind (``experiments.kinds``); Adaptor runs are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from retune.config import DataConfig
from retune.data.splits import patient_split
from retune.data.table import PATH_COLUMN, PATIENT_COLUMN, ImageTable
from retune.errors import ConfigError, DataError, unknown_name
from retune.experiments import adaptor, peft, train  # noqa: F401  (importing them registers their run kinds)
from retune.experiments.kinds import SavedRun, loader_for
from retune.experiments.prepare import metrics_record, read_data
from retune.methods.checkpoint import load_checkpoint


def open_run(
    run_dir: str | Path, store_dir: str | Path | None = None, device: str | None = None, show_progress: bool = False
) -> SavedRun:
    """Rebuild a run directory with the loader registered for the kind its config.json records."""
    checkpoint = load_checkpoint(run_dir)
    return loader_for(checkpoint[1])(Path(run_dir), checkpoint, store_dir, device, show_progress)


def evaluate_run(
    run_dir: str | Path,
    csv_path: str | Path,
    split: str = "auto",
    store_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    n_bootstrap: int = 1000,
    show_progress: bool = False,
    allow_outside_root: bool = False,
) -> dict:
    """Evaluate a saved run on a CSV: the training CSV's test split by default, another CSV whole.

    Image paths must stay inside the image root unless ``allow_outside_root`` (or the run was trained so)."""
    run = open_run(run_dir, store_dir, show_progress=show_progress)
    train_config = run.config
    same_csv = Path(csv_path).resolve() == Path(train_config["data"]["csv"]).resolve()
    if split == "auto":
        split = "test" if same_csv else "all"
    if split not in ("all", "train", "val", "test"):
        raise unknown_name("split", split, ["all", "train", "val", "test", "auto"])
    data = DataConfig.model_validate(train_config["data"])
    other = {"csv": Path(csv_path), "image_root": image_root or data.image_root, "classes": None,
             "allow_outside_root": allow_outside_root or data.allow_outside_root}
    table = read_data(data.model_copy(update=other))
    missing = [c for c in run.classes if c not in table.classes]
    if missing:
        raise ConfigError(f"{csv_path}: has no label column for trained class(es) {', '.join(missing)}")
    scores, rows, errors = run.score(table)
    if not len(rows):
        raise DataError(f"{csv_path}: no readable image to evaluate ({len(errors)} unreadable)")
    table = table.subset(rows)
    if split != "all":
        kept = patient_split(table.patients, train_config["split"]["fractions"], train_config["split"]["seed"])[split]
        table, scores = table.subset(kept), {name: values[kept] for name, values in scores.items()}
    records = {
        name: metrics_record(
            name, run.backbone, run.classes, values, table, split, n_bootstrap, int(train_config["seed"])
        )
        for name, values in scores.items()
    }
    return {
        **records[run.main],
        "baselines": {k: v for k, v in records.items() if k != run.main},
        "csv": str(csv_path),
    }


def predict_images(
    run_dir: str | Path, image_paths: list[str | Path], store_dir: str | Path | None = None, method: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class probabilities for new images (default: the run's main method); also returns the unreadable images."""
    run = open_run(run_dir, store_dir)
    paths = [str(Path(p).resolve()) for p in image_paths]
    scores, rows, errors = run.score(ImageTable(pd.DataFrame({PATH_COLUMN: paths, PATIENT_COLUMN: paths}), []))
    method = method or run.main
    if method not in scores:
        raise unknown_name("method", method, list(scores))
    frame = pd.DataFrame(scores[method], columns=run.classes)
    frame.insert(0, "image", [paths[r] for r in rows])
    return frame, errors
