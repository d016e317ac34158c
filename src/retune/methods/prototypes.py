"""Frozen-embedding classifiers built from class means: SimpleCIL-style prototypes and a shared-covariance Gaussian.

Both keep, per class, the count and the sum of the embeddings of its positive and of its negative
training rows (masked rows left out), plus the count and sum of every training row seen; the
Gaussian also keeps the sum of x xᵀ over every training row (one d x d matrix shared by all
classes, as FeCAM's shared-covariance variant and SLCA's classifier alignment use). These are
aggregates: adding a task's rows to the sums equals summing all rows at once. No gradient training,
no row kept.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import expit

from retune.config import ReTuneConfig
from retune.methods.base import Method, MethodContext, TaskData
from retune.methods.registry import register_method
from retune.methods.statistics import pack_symmetric, symmetric, unpack_symmetric

PROTOTYPE_TEMPERATURE = 10.0  # logit = T · (cos to positive prototype − cos to negative prototype)
SHRINKAGE_GRID = (0.01, 0.1, 0.5, 0.9, 0.99)  # shrinkage towards a scaled identity, chosen on validation rows
DEFAULT_SHRINKAGE = 0.5
EPS = 1e-12
# Share of the training variance along a discriminant direction that is at least counted as within-class. With fewer
# rows than dimensions and little shrinkage the direction separates the training rows almost perfectly, their
# within-class variance along it is near 0, and the log-odds explode: on NIH (1,119 rows, 1,280 dimensions) |logit|
# reached 6e5 and half the test probabilities were exactly 0 in float64, ties that cost 0.02-0.04 AUROC.
MIN_WITHIN_SHARE = 0.5


class ClassMeans(Method):
    """Running sums of positive and negative rows per class and of all training rows; subclasses score from them."""

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)
        dim = context.image_dim
        self.total = np.zeros(dim)
        self.n_total = 0.0
        self.sums: dict[str, np.ndarray] = {}  # class -> (2, d): sum over negative rows, sum over positive rows
        self.counts: dict[str, np.ndarray] = {}  # class -> (2,): negative, positive row counts

    def accumulate(self, task: TaskData) -> None:
        """Add the task's training rows to the sums."""
        self.add_classes(task.classes)
        images = np.asarray(task.train_x, dtype=np.float64)
        self.total = self.total + images.sum(axis=0)
        self.n_total += len(images)
        for column, name in enumerate(task.classes):
            labels = task.train_y[:, column]
            sums, counts = self.sums.get(name, np.zeros((2, len(self.total)))), self.counts.get(name, np.zeros(2))
            for value in (0, 1):
                rows = labels == value
                sums[value] = sums[value] + images[rows].sum(axis=0)
                counts[value] += rows.sum()
            self.sums[name], self.counts[name] = sums, counts

    def means(self, name: str) -> np.ndarray:
        """(2, d) negative and positive means (zero where a side has no rows)."""
        return self.sums[name] / np.maximum(self.counts[name], 1.0)[:, None]

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {
            "total": self.total,
            "sums": np.stack([self.sums[c] for c in self.classes]),
            "counts": np.stack([self.counts[c] for c in self.classes]),
        }
        return tensors, {"classes": self.classes, "n_total": self.n_total}

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        self.classes = list(facts["classes"])
        self.n_total = float(facts["n_total"])
        self.total = np.asarray(tensors["total"], dtype=np.float64)
        self.sums = dict(zip(self.classes, np.asarray(tensors["sums"], dtype=np.float64)))
        self.counts = dict(zip(self.classes, np.asarray(tensors["counts"], dtype=np.float64)))


@register_method
class SimpleCIL(ClassMeans):
    """SimpleCIL / ADAM's prototype classifier, multi-label: cosine to a class's positive minus its negative prototype.

    Embeddings and prototypes are centred on the mean of every training row seen so far.
    """

    name: ClassVar[str] = "simplecil"
    description: ClassVar[str] = "SimpleCIL prototypes: cosine to positive vs negative class means (no training)"

    def learn(self, task: TaskData) -> dict:
        self.accumulate(task)
        return {}

    def predict(self, images: np.ndarray) -> np.ndarray:
        centre = self.total / max(self.n_total, 1.0)
        centred = np.asarray(images, dtype=np.float64) - centre
        centred /= np.linalg.norm(centred, axis=1, keepdims=True) + EPS
        logits = []
        for name in self.classes:
            prototypes = self.means(name) - centre
            prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True) + EPS
            similarity = centred @ prototypes.T
            logits.append(similarity[:, 1] - similarity[:, 0])
        return expit(PROTOTYPE_TEMPERATURE * np.stack(logits, axis=1))


@register_method
class SharedCovarianceGaussian(ClassMeans):
    """Per class, linear discriminant analysis between its positive and negative means with one shared covariance.

    The covariance is that of every training row seen (shrunk towards a scaled identity); for a
    binary class the discriminant direction Σ⁻¹(μ₊ − μ₋) is the same as with the within-class
    covariance. The log-odds come from the two projected class means, the projected within-class
    variance (at least ``MIN_WITHIN_SHARE`` of the total along the direction) and the class prevalence. The
    shrinkage is chosen per task on its validation rows.
    """

    name: ClassVar[str] = "gaussian"
    description: ClassVar[str] = (
        "Shared-covariance Gaussian (LDA) per class from accumulated means and covariance (FeCAM/SLCA-style)"
    )

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context, config)
        self.second_moment = np.zeros((context.image_dim, context.image_dim))
        self.shrinkage: dict[str, float] = {}
        self._heads: tuple[np.ndarray, np.ndarray] | None = None  # derived (weights, bias); rebuilt after each change
        self._spectrum: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (covariance, eigenvalues, vectors)

    def learn(self, task: TaskData) -> dict:
        self.accumulate(task)
        images = np.asarray(task.train_x, dtype=np.float64)
        # exactly symmetric (so one stored triangle restores it bit for bit); not in place: state() hands it out
        self.second_moment = self.second_moment + symmetric(images.T @ images)
        self._spectrum = None
        chosen = DEFAULT_SHRINKAGE
        if task.val_x is not None and len(task.val_x):
            columns = [self.classes.index(c) for c in task.classes]
            scores = []
            for shrinkage in SHRINKAGE_GRID:
                self.shrinkage.update(dict.fromkeys(task.classes, shrinkage))
                self._heads = None
                score = self.context.val_score(self.predict(task.val_x)[:, columns], task.val_y)
                scores.append(-np.inf if score is None else score)
            chosen = SHRINKAGE_GRID[int(np.argmax(scores))]
        self.shrinkage.update(dict.fromkeys(task.classes, chosen))
        self._heads = None
        return {"shrinkage": chosen}

    def covariance(self) -> np.ndarray:
        mean = self.total / max(self.n_total, 1.0)
        return self.second_moment / max(self.n_total, 1.0) - np.outer(mean, mean)

    def heads(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights d x C, bias C) of the per-class log-odds, from the current sums."""
        if self._heads is not None:
            return self._heads
        if self._spectrum is None:  # one eigendecomposition per change of the sums, shared by every shrinkage tried
            covariance = self.covariance()
            eigenvalues, vectors = np.linalg.eigh(covariance)
            self._spectrum = (covariance, np.clip(eigenvalues, 0.0, None), vectors)
        covariance, eigenvalues, vectors = self._spectrum
        level = max(float(eigenvalues.mean()), EPS)
        weights, bias = np.zeros((len(self.total), len(self.classes))), np.zeros(len(self.classes))
        for c, name in enumerate(self.classes):
            negatives, positives = self.counts[name]
            prevalence = (positives + 0.5) / (positives + negatives + 1.0)
            bias[c] = np.log(prevalence / (1 - prevalence))
            if positives == 0 or negatives == 0:
                continue
            alpha = self.shrinkage.get(name, DEFAULT_SHRINKAGE)
            shrunk = (1 - alpha) * eigenvalues + alpha * level
            negative_mean, positive_mean = self.means(name)
            gap = positive_mean - negative_mean
            direction = vectors @ ((vectors.T @ gap) / shrunk)
            spread = direction @ covariance @ direction  # wᵀ Σ w: total variance along w
            between = prevalence * (1 - prevalence) * (direction @ gap) ** 2
            within = max(spread - between, MIN_WITHIN_SHARE * spread, EPS)  # pooled within-class variance along w
            slope = (direction @ gap) / within
            weights[:, c] = slope * direction
            bias[c] -= slope * direction @ (positive_mean + negative_mean) / 2
        self._heads = (weights, bias)
        return self._heads

    def predict(self, images: np.ndarray) -> np.ndarray:
        weights, bias = self.heads()
        return expit(np.asarray(images, dtype=np.float64) @ weights + bias)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors, facts = super().state()
        tensors["second_moment"] = pack_symmetric(self.second_moment)
        return tensors, {**facts, "shrinkage": [self.shrinkage.get(c, DEFAULT_SHRINKAGE) for c in self.classes]}

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        super().load_state(tensors, facts)
        self.second_moment = unpack_symmetric(tensors["second_moment"])
        self.shrinkage = dict(zip(self.classes, facts["shrinkage"]))
        self._heads = self._spectrum = None
