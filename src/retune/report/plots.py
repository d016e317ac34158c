"""Matplotlib figures saved as PNG (headless Agg backend): ROC curves, AUROC matrices, task curves."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retune.data.table import ImageTable  # noqa: E402
from retune.evaluation import roc_curve_points  # noqa: E402
from retune.io_utils import atomic_path  # noqa: E402


def _save(figure: plt.Figure, target: Path) -> Path:
    with atomic_path(target) as temp:
        figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return target


def plot_roc_curves(scores_by_method: dict[str, np.ndarray], table: ImageTable, classes: list[str], target: str | Path) -> Path:
    """One panel per class with every method's ROC curve; undefined classes are marked, not drawn."""
    labels = table.labels(classes)
    columns = min(5, len(classes))
    rows = math.ceil(len(classes) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for index, name in enumerate(classes):
        axis = axes[index // columns][index % columns]
        valid = labels[:, index][~np.isnan(labels[:, index])]
        if len(np.unique(valid)) < 2:
            axis.text(0.5, 0.5, "undefined\n(no positives or\nno negatives)", ha="center", va="center")
        else:
            for method, scores in scores_by_method.items():
                fpr, tpr = roc_curve_points(scores[:, index], labels[:, index])
                axis.plot(fpr, tpr, label=method, linewidth=1.2)
            axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(f"{name} (n+={int(np.nansum(labels[:, index]))})", fontsize=9)
        axis.set_xlabel("1 - specificity", fontsize=8)
        axis.set_ylabel("sensitivity", fontsize=8)
        axis.tick_params(labelsize=7)
    for index in range(len(classes), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, loc="upper center", ncol=len(names), bbox_to_anchor=(0.5, 1.02))
    figure.tight_layout()
    return _save(figure, Path(target))
