"""Matplotlib figures saved as PNG (headless Agg backend): ROC curves, AUROC matrices, task curves."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retune.evaluation import roc_curve_points  # noqa: E402
from retune.io_utils import atomic_path  # noqa: E402

LINE_STYLES = (
    "-",
    "--",
    "-.",
    ":",
)  # with MARKERS, keeps overlapping methods apart in print and for colour-blind readers
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
PlotTarget = str | os.PathLike | BinaryIO  # a PNG file to write, or a stream to write the PNG into


def _save(figure: plt.Figure, target: PlotTarget) -> PlotTarget:
    """Write the figure as PNG to a file (atomically) or into an open binary stream (the server's in-memory plots),
    then close it."""
    if isinstance(target, str | os.PathLike):
        target = Path(target)
        with atomic_path(target) as temp:
            figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
    else:
        figure.savefig(target, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return target


def plot_roc_curves(
    scores_by_method: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], target: str | Path
) -> Path:
    """One panel per class with every method's ROC curve; undefined classes are marked, not drawn."""
    columns = min(5, len(classes))
    rows = math.ceil(len(classes) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for index, name in enumerate(classes):
        axis = axes[index // columns][index % columns]
        valid = labels[:, index][~np.isnan(labels[:, index])]
        if len(np.unique(valid)) < 2:
            axis.text(0.5, 0.5, "undefined\n(no positives or\nno negatives)", ha="center", va="center")
        else:
            for number, (method, scores) in enumerate(scores_by_method.items()):
                fpr, tpr = roc_curve_points(scores[:, index], labels[:, index])
                axis.plot(fpr, tpr, label=method, linewidth=1.2, linestyle=LINE_STYLES[number % len(LINE_STYLES)])
            axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(f"{name} (n+={int(np.nansum(labels[:, index]))})", fontsize=9)
        axis.set_xlabel("1 - specificity", fontsize=8)
        axis.set_ylabel("sensitivity", fontsize=8)
        axis.tick_params(labelsize=7)
    for index in range(len(classes), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, names = next(
        (a.get_legend_handles_labels() for a in axes.flat if a.get_legend_handles_labels()[0]), ([], [])
    )
    figure.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    if handles:  # below the panels, in the space kept free for it
        figure.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    return _save(figure, Path(target))


def plot_auroc_matrix(
    matrix: list[list[float | None]],
    classes: list[str],
    task_names: list[str],
    title: str,
    target: PlotTarget,
    introduced: list[int] | None = None,
) -> PlotTarget:
    """Heatmap of R[t][c] (AUROC after task t on class c). ``introduced[c]``, the 0-based task that first trained
    class c, separates "not yet learned" (light grey, "·") from "undefined" (learned, but no test positives or
    negatives: hatched, "n/a")."""
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    figure, axis = plt.subplots(figsize=(0.55 * len(classes) + 2.5, 0.45 * len(task_names) + 2.2))
    image = axis.imshow(values, vmin=0.4, vmax=1.0, cmap="viridis", aspect="auto")
    for (t, c), value in np.ndenumerate(values):
        if not np.isnan(value):
            colour = "white" if value < 0.75 else "black"
            axis.text(c, t, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
        elif introduced is not None and t < introduced[c]:
            axis.add_patch(plt.Rectangle((c - 0.5, t - 0.5), 1, 1, facecolor="#eeeeee", edgecolor="white"))
            axis.text(c, t, "·", ha="center", va="center", fontsize=8, color="#888888")
        else:
            hatched = plt.Rectangle(
                (c - 0.5, t - 0.5), 1, 1, facecolor="white", edgecolor="#cc6666", hatch="///", linewidth=0
            )
            axis.add_patch(hatched)
            axis.text(c, t, "n/a", ha="center", va="center", fontsize=6, color="#aa3333")
    axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(task_names)), task_names, fontsize=7)
    axis.set_xlabel("class, in the order tasks introduced them (test split)")
    axis.set_ylabel("after task")
    axis.set_title(title + "\n· not yet learned   n/a undefined (no test positives or negatives)", fontsize=8)
    figure.colorbar(image, ax=axis, label="AUROC")
    figure.tight_layout()
    return _save(figure, target)


def plot_mean_auroc_per_task(runs_by_method: dict[str, list[list[float | None]]], target: str | Path) -> Path:
    """Mean AUROC over seen classes after each task, per method: one line for a single run; for several (order,
    seed) runs, their mean with a min-max band and each run as a thin line, so the plot matches the tables."""
    figure, axis = plt.subplots(figsize=(7.5, 4))
    n_tasks = max((len(run) for runs in runs_by_method.values() for run in runs), default=1)
    n_runs = max((len(runs) for runs in runs_by_method.values()), default=1)
    for index, (method, runs) in enumerate(runs_by_method.items()):
        values = np.array([[np.nan if v is None else v for v in run] for run in runs], dtype=float)
        steps = range(1, values.shape[1] + 1)
        style = {"marker": MARKERS[index % len(MARKERS)], "linestyle": LINE_STYLES[index % len(LINE_STYLES)]}
        if len(runs) == 1:
            axis.plot(steps, values[0], label=method, **style)
            continue
        with warnings.catch_warnings():  # a task where every run is undefined stays a gap (NumPy warns of it)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = np.nanmean(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        (line,) = axis.plot(steps, mean, label=f"{method} (mean of {len(runs)} runs)", **style)
        axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        for run in values:
            axis.plot(steps, run, color=line.get_color(), linewidth=0.6, alpha=0.5)
    axis.set_xticks(range(1, n_tasks + 1))
    axis.set_xlabel("after task")
    axis.set_ylabel("mean AUROC over seen classes (test)")
    if n_runs > 1:
        axis.set_title("mean over (order, seed) runs; band: min-max; thin lines: each run", fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the panel, never over the lines
    figure.tight_layout()
    return _save(figure, Path(target))


def plot_calibration(bins_by_method: dict[str, dict], target: str | Path) -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability per bin, one line per method."""
    figure, axis = plt.subplots(figsize=(5, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8, label="perfectly calibrated")
    for index, (method, bins) in enumerate(bins_by_method.items()):
        points = [(p, o) for p, o in zip(bins["mean_predicted"], bins["observed"]) if p is not None]
        if points:
            axis.plot(
                *zip(*points),
                marker=MARKERS[index % len(MARKERS)],
                linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                label=f"{method} (ECE {bins['ece']:.3f})",
            )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("mean predicted probability (bin)")
    axis.set_ylabel("observed positive rate (test)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return _save(figure, Path(target))
