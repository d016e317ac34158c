"""Numbers as people read them: one formatter for "value [lo, hi]" everywhere (CLI tables, HTML, benchmarks)."""

from __future__ import annotations


def format_interval(value: float | None, interval: list[float] | None, signed: bool = False) -> str:
    """``0.712 [0.650, 0.770]`` (3 decimals; ``+`` sign when ``signed``); "undefined" when there is no value."""
    if value is None:
        return "undefined"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text


def classes_covered(n_in_mean: int, n_classes: int, min_positives: int = 1) -> str:
    """Which classes a mean AUROC covers, e.g. ``7 of 14 classes with >= 10 test positives``."""
    rule = f">= {min_positives} test positives" if min_positives > 1 else "positives and negatives in test"
    return f"{n_in_mean} of {n_classes} classes with {rule}"


def mean_label(n_in_mean: int, n_classes: int, min_positives: int = 1) -> str:
    """The label of a mean AUROC that says which classes it covers, e.g. ``mean (7 of 14 classes with >= 10 test
    positives)``; every table, card and page labels its means with this, so a reader never takes 7 classes for 14."""
    return f"mean ({classes_covered(n_in_mean, n_classes, min_positives)})"


def record_classes_covered(record: dict) -> str:
    """``classes_covered`` of a metrics record (metrics.json, a baseline, an evaluation, a paired comparison)."""
    n_classes = len(record.get("classes", []))
    covered = record.get("n_classes_in_mean", n_classes - len(record.get("undefined_classes", [])))
    return classes_covered(covered, n_classes, record.get("min_positives", 1))


def record_mean_label(record: dict) -> str:
    """``mean_label`` of a metrics record: the classes its mean covers."""
    return f"mean ({record_classes_covered(record)})"
