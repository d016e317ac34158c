"""The one in-memory form every reader returns: image paths, patients and masked multi-labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PATH_COLUMN = "image_path"
PATIENT_COLUMN = "patient_id"
SITE_COLUMN = "site"  # optional: the hospital or source each image comes from, so results break down by site
SITE_COLUMN_NAMES = ("site", "source")  # the CSV column read as the site, first found wins


@dataclass
class ImageTable:
    """Rows of images with labels.

    ``frame`` has the columns ``image_path`` (absolute path as str), ``patient_id`` (str), one
    float column per class in ``classes`` holding 1.0 (positive), 0.0 (negative) or NaN (masked:
    uncertain/ignored/unlabelled; left out of losses and metrics), and optionally ``report`` (str) and
    ``site`` (str: the hospital or source of the image, from a CSV's ``site`` or ``source`` column).
    ``source`` is the file the table came from (used in error messages); ``image_root`` is the
    folder relative paths were resolved against; ``confined_root``, when set, is the folder every image
    must really lie in (symlinks followed), checked before an image is read.
    """

    frame: pd.DataFrame
    classes: list[str]
    source: Path | None = None
    image_root: Path | None = None
    extra: dict = field(default_factory=dict)
    confined_root: Path | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def paths(self) -> list[str]:
        return self.frame[PATH_COLUMN].tolist()

    @property
    def patients(self) -> np.ndarray:
        return self.frame[PATIENT_COLUMN].to_numpy()

    @property
    def sites(self) -> np.ndarray | None:
        """Each row's site, or None when the table has no site column."""
        return self.frame[SITE_COLUMN].to_numpy() if SITE_COLUMN in self.frame else None

    def labelled_classes(self) -> list[str]:
        """Classes with at least one non-blank label: a column left blank throughout labels nothing."""
        return [name for name in self.classes if self.frame[name].notna().any()]

    def labels(self, classes: list[str] | None = None) -> np.ndarray:
        """Float32 matrix (rows x classes) with NaN where the label is masked."""
        return self.frame[classes or self.classes].to_numpy(dtype=np.float32)

    def subset(self, rows: np.ndarray | list[int]) -> ImageTable:
        """A new table with only the given row positions (order kept, index reset)."""
        frame = self.frame.iloc[np.asarray(rows, dtype=int)].reset_index(drop=True)
        return ImageTable(
            frame, list(self.classes), self.source, self.image_root, dict(self.extra), self.confined_root
        )


def one_sided_classes(labels: np.ndarray, classes: list[str], where: str) -> list[str]:
    """Warnings naming each class with no positive or no negative label among ``labels`` (rows x classes, NaN masked).

    Such a class is kept (its AUROC is undefined, its head learns one side only); the warning makes it visible.
    """
    warnings = []
    for column, name in enumerate(classes):
        values = labels[:, column]
        positives, negatives = int(np.sum(values == 1)), int(np.sum(values == 0))
        if positives == 0 or negatives == 0:
            missing = "positives" if positives == 0 else "negatives"
            warnings.append(
                f"class '{name}' has no {missing} in {where} ({positives} positive, {negatives} negative labels); "
                "it is kept but cannot be learned or evaluated properly"
            )
    return warnings
