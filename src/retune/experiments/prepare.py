"""What every experiment shares: embedding a table through the store, prompt banks, method context, run records.

Data flows one way: a table is read, embedded once by a frozen backbone into the content-keyed store,
split by patient, and handed to methods with the prompts' embeddings; the builders here write the
``metrics.json`` blocks that ``retune compare`` and the reports read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retune.backbones.base import Backbone
from retune.backbones.registry import create_backbone
from retune.config import DataConfig, SplitConfig
from retune.data.readers import NO_LABELS, read_table
from retune.data.table import PATIENT_COLUMN, ImageTable, one_sided_classes
from retune.errors import ConfigError, DataError, StoreError
from retune.evaluation import DEFAULT_MIN_POSITIVES, evaluate_scores, fast_mean_auroc
from retune.evaluation.coverage import per_site_metrics
from retune.evaluation.leakage import write_training_digests
from retune.evaluation.operating_point import calibration_bins, operating_points
from retune.methods.base import MethodContext, PromptBank
from retune.methods.checkpoint import file_sha256
from retune.prompts import build_prompts, prompt_texts
from retune.store import EmbeddingStore, embed_table, hash_files, image_embeddings, text_embeddings

NO_PATIENT_COLUMN = (
    "no patient column: each image is its own patient, so the split cannot keep a patient's images together"
)
GENERAL_DOMAIN_NOTE = (
    "The 'default' backbone is general-domain (ImageNet EfficientNet-Lite0 + MiniLM), not a medical model."
)


def read_data(data: DataConfig) -> ImageTable:
    """The labelled table a data config names, through the reader registry."""
    if data.csv is None:
        raise ConfigError("no data: pass --data CSV or set data.csv in the config")
    table = read_table(
        data.csv,
        data.format,
        image_root=data.image_root,
        uncertainty=data.uncertainty,
        classes=data.classes,
        metadata_csv=data.metadata_csv,
        allow_outside_root=data.allow_outside_root,
    )
    if NO_LABELS in table.extra:
        raise DataError(table.extra[NO_LABELS])
    return table


def data_facts(data: DataConfig) -> dict:
    """Where a run's labels came from: the CSV's absolute path and SHA-256 (content decides "the training CSV")."""
    return {"csv": str(Path(data.csv).resolve()), "csv_sha256": file_sha256(data.csv)}


def is_training_csv(csv_path: str | Path, facts: dict) -> bool:
    """Whether ``csv_path`` is the CSV a run trained on: by content when the run recorded its SHA-256, else by path."""
    recorded = facts.get("data", {}).get("csv_sha256")
    if recorded:
        return Path(csv_path).is_file() and file_sha256(csv_path) == recorded
    return Path(csv_path).resolve() == Path(facts["train_config"]["data"]["csv"]).resolve()


def split_facts(split: SplitConfig, splits: dict[str, np.ndarray]) -> dict:
    """The config.json record of a patient-level split: fractions, seed, sizes."""
    sizes = {name: int(len(rows)) for name, rows in splits.items()}
    return {"fractions": list(split.fractions), "seed": split.seed, "sizes": sizes, "by": PATIENT_COLUMN}


def table_warnings(table: ImageTable, train_rows: np.ndarray | None = None) -> list[str]:
    """What metrics.json must say about the table: a split that cannot keep patients together and, given the training
    rows, each class with no positives or no negatives there (kept, never dropped silently)."""
    warnings = [NO_PATIENT_COLUMN] if table.extra.get("patient_column_missing") else []
    blank = table.extra.get("unlabelled_columns")
    if blank:
        warnings.append(f"not labelled (every value blank), so not trained or evaluated: {', '.join(blank)}")
    if train_rows is not None:
        warnings += one_sided_classes(table.labels()[train_rows], list(table.classes), "the training split")
    return warnings


@dataclass
class EmbeddedTable:
    """A table restricted to rows whose image is in the store, with their pooled embeddings."""

    table: ImageTable
    images: np.ndarray
    n_failed: int


def embed_and_load(
    table: ImageTable, backbone: Backbone, store: EmbeddingStore, show_progress: bool = False
) -> EmbeddedTable:
    """Embed what the store lacks, then return the cached vectors (failed images dropped)."""
    summary = embed_table(table, backbone, store, show_progress=show_progress)
    images, rows = image_embeddings(table, backbone.fingerprint, store)
    return EmbeddedTable(table.subset(rows), images, len(table) - len(rows) if len(summary.errors) else 0)


def prompt_bank(
    classes: list[str], prompt_spec: str, backbone: Backbone, store: EmbeddingStore
) -> tuple[PromptBank, dict]:
    """Embed each class's prompts once (cached in the store) and average them per side."""
    prompts = build_prompts(prompt_spec, classes)
    texts = prompt_texts(prompts)
    vectors = dict(zip(texts, text_embeddings(texts, backbone, store)))
    bank = PromptBank()
    for name, class_prompts in prompts.items():
        bank.positive[name] = np.mean([vectors[t] for t in class_prompts.positive], axis=0)
        bank.negative[name] = np.mean([vectors[t] for t in class_prompts.negative], axis=0)
    described = {
        name: {"positive": list(p.positive), "negative": list(p.negative), "source": p.source}
        for name, p in prompts.items()
    }
    return bank, described


def method_context(backbone: Backbone, bank: PromptBank, seed: int) -> MethodContext:
    """What methods may know about the backbone; early stopping uses mean validation AUROC."""
    return MethodContext(backbone.image_dim, backbone.text_dim, backbone.aligned, bank, fast_mean_auroc, seed)


def metrics_record(
    method: str,
    backbone: Backbone,
    classes: list[str],
    scores: np.ndarray,
    table: ImageTable,
    split: str,
    n_bootstrap: int,
    seed: int,
    min_positives: int = DEFAULT_MIN_POSITIVES,
) -> dict:
    """The metrics.json block for one method on one split (the mean covers classes with >= min_positives positives);
    a table with several sites also gets the same block per site under ``per_site``."""
    labels = table.labels(classes)
    result = evaluate_scores(
        scores, labels, classes, table.patients, n_bootstrap=n_bootstrap, seed=seed, min_positives=min_positives
    )
    by_site = per_site_metrics(scores, labels, classes, table.patients, table.sites, n_bootstrap, seed, min_positives)
    return {
        "method": method,
        "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint,
        "split": split,
        **result.to_dict(),
        **({"per_site": by_site} if by_site else {}),
    }


def checked_backbone(run_dir: str | Path, facts: dict, device: str | None = None) -> Backbone:
    """The backbone a run was trained on; refuses one whose fingerprint changed (other weights or preprocessing)."""
    backbone = create_backbone(facts["backbone"]["spec"], device=device)
    expected = facts["backbone"]["fingerprint"]
    if backbone.fingerprint != expected:
        raise StoreError(
            f"{run_dir}: checkpoint was trained on backbone fingerprint {expected}, but '{backbone.spec}' now has "
            f"fingerprint {backbone.fingerprint} (different weights or preprocessing)"
        )
    return backbone


def record_training_digests(
    out_dir: Path, table: ImageTable, splits: dict[str, np.ndarray], store: EmbeddingStore
) -> int:
    """Write the leakage guard's salted digests of the training and validation images (retune.evaluation.leakage)."""
    rows = np.concatenate([splits["train"], splits["val"]])
    hashes, _ = hash_files([table.paths[row] for row in rows], store)
    return write_training_digests(out_dir, hashes.values())


def split_positives(table: ImageTable, splits: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Positive labels per class in each split (for the run card and the report)."""
    return {
        name: {cls: int(np.sum(table.labels([cls])[rows] == 1)) for cls in table.classes}
        for name, rows in splits.items()
    }


def metrics_and_report(
    out_dir: Path,
    metrics: dict,
    test_scores: dict[str, np.ndarray],
    test_labels: np.ndarray,
    val_scores: np.ndarray,
    val_labels: np.ndarray,
) -> str:
    """Add operating points (thresholds chosen on validation, applied to test) and calibration to ``metrics``, draw
    the ROC and calibration plots into ``out_dir`` and return report.html (``finish_run`` writes it and metrics.json):
    the same outputs for every run kind."""
    from retune.experiments.run_folder import CALIBRATION_PLOT, ROC_PLOT
    from retune.report.plots import plot_calibration, plot_roc_curves
    from retune.report.run_report import run_report

    classes = metrics["classes"]
    metrics["operating_points"] = operating_points(
        val_scores, val_labels, test_scores[metrics["method"]], test_labels, classes
    )
    calibration = {name: calibration_bins(scores, test_labels) for name, scores in test_scores.items()}
    metrics["calibration_ece"] = {name: bins["ece"] for name, bins in calibration.items()}
    plots = [
        plot_roc_curves(test_scores, test_labels, classes, out_dir / ROC_PLOT),
        plot_calibration(calibration, out_dir / CALIBRATION_PLOT),
    ]
    return run_report(out_dir.name, metrics, metrics["operating_points"], plots)
