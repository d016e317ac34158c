"""Partially labelled evaluation data: which of a model's classes a CSV labels, and results broken down by site.

Real external sites label a subset of findings. A model is scored on the classes both the model learned and the
CSV labels; the model's other classes are listed as unlabelled, the CSV's other classes as unlearned, and only a CSV
that labels none of the model's classes is refused. Blank cells stay "not labelled" for that image (NaN, masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retune.errors import ConfigError
from retune.evaluation.metrics import evaluate_scores


@dataclass(frozen=True)
class LabelCoverage:
    """The classes a model and a labelled CSV share (scored) and those only one side has."""

    scored: list[str]  # learned and labelled: in the model's class order
    unlabelled: list[str]  # learned, but the CSV has no column for it or leaves it blank throughout
    unlearned: list[str]  # labelled, but the model never learned it

    def to_dict(self) -> dict:
        return {"unlabelled_classes": list(self.unlabelled), "unlearned_classes": list(self.unlearned)}

    def warnings(self, source: str) -> list[str]:
        """One line per side that is not scored, naming the classes (never a silent drop)."""
        lines = []
        if self.unlabelled:
            lines.append(f"{source} does not label {len(self.unlabelled)} learned class(es), not scored: "
                         f"{', '.join(self.unlabelled)}")
        if self.unlearned:
            lines.append(f"{source} labels {len(self.unlearned)} class(es) the model never learned, not scored: "
                         f"{', '.join(self.unlearned)}")
        return lines


def label_coverage(learned: list[str], labelled: list[str], source: str) -> LabelCoverage:
    """Split ``learned`` (the model's classes) by ``labelled`` (the CSV's classes with any non-blank label).

    ConfigError (one line naming the file) when the CSV labels none of the learned classes.
    """
    scored = [name for name in learned if name in labelled]
    if not scored:
        found = ", ".join(labelled) if labelled else "none"
        raise ConfigError(
            f"{source}: labels none of the model's classes ({', '.join(learned)}); its labelled classes: {found}"
        )
    return LabelCoverage(
        scored=scored,
        unlabelled=[name for name in learned if name not in labelled],
        unlearned=[name for name in labelled if name not in learned],
    )


def per_site_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    patients: np.ndarray,
    sites: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
    min_positives: int,
) -> dict[str, dict]:
    """``evaluate_scores`` on each site's rows ({} without a site column or with a single site: the whole is it)."""
    if sites is None or len(np.unique(sites)) < 2:
        return {}
    return {
        str(site): evaluate_scores(
            scores[rows], labels[rows], classes, patients[rows], n_bootstrap=n_bootstrap, seed=seed,
            min_positives=min_positives,
        ).to_dict()
        for site in np.unique(sites)
        for rows in [np.flatnonzero(sites == site)]
    }
