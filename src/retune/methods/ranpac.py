"""RanPAC (McDonnell et al., NeurIPS 2023) for multi-label, masked targets on frozen embeddings.

A fixed random projection with a ReLU lifts each embedding to ``PROJECTION_DIM`` features h (plus a
constant 1 for the intercept); each class's head is the ridge solution w_c = (G_c + λ_c I)⁻¹ c_c from
sums accumulated over every task: G_c = Σ h hᵀ and c_c = Σ h y_c over the rows where class c was
labelled (classes labelled on the same rows share one G). λ_c is chosen among ``RIDGE_GRID`` × the mean
diagonal of G_c by the squared error on validation rows, computed from validation sums accumulated the
same way. Because every quantity is a sum over rows, learning chunk by chunk gives exactly the
solution of learning all rows at once (data-incremental streams cannot forget), and a class whose
rows do not come back keeps its head untouched (class-incremental streams cannot forget it).
No gradient training. The checkpoint holds the sums (each symmetric Gram matrix as its upper triangle, float64 so
that learning on after a reload is exact) and the heads, no rows; the projection is not stored but regenerated
from its seed and checked against its recorded SHA-256. Note that a Gram matrix of fewer rows than features
determines those rows' projected features up to a rotation.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np
from scipy.special import expit

from retune.config import ReTuneConfig
from retune.errors import StoreError
from retune.methods.base import Method, MethodContext, TaskData
from retune.methods.registry import register_method
from retune.methods.statistics import LabelledSums

PROJECTION_DIM = 1024  # RanPAC uses 10,000 on ViT-B features; sums grow with its square, so kept moderate
RIDGE_GRID = tuple(10.0**k for k in range(-6, 4))  # λ as a multiple of the mean diagonal of G
DEFAULT_RIDGE = 1.0  # used for a class without validation rows
SCORE_SCALE = 8.0  # probability = sigmoid(SCORE_SCALE · (ŷ − 0.5)): monotone in the ridge output ŷ, not calibrated


def random_projection(image_dim: int, seed: int) -> np.ndarray:
    """The fixed (image_dim x PROJECTION_DIM) float32 Gaussian projection of ``seed``: NumPy's PCG64 bit stream (which
    NumPy keeps identical across versions and platforms) through ``Generator.standard_normal`` (which NumPy may change
    in a release: checkpoints record the result's SHA-256, so such a change is refused, not silently used)."""
    generator = np.random.Generator(np.random.PCG64(seed))
    return generator.standard_normal((image_dim, PROJECTION_DIM)).astype(np.float32)


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's little-endian bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()).hexdigest()


@register_method
class RanPAC(Method):
    """Random projection + ReLU, then a closed-form ridge head per class from accumulated second moments."""

    name: ClassVar[str] = "ranpac"
    description: ClassVar[str] = (
        "RanPAC: fixed random ReLU projection + ridge heads from accumulated Gram sums (no forgetting)"
    )

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)
        self.projection_seed = context.seed
        self.projection = random_projection(context.image_dim, context.seed)
        self.train_sums = LabelledSums()
        self.val_sums = LabelledSums()
        self.heads: dict[str, np.ndarray] = {}
        self.ridge: dict[str, float] = {}

    def features(self, images: np.ndarray) -> np.ndarray:
        """[ReLU(x P), 1] in float64."""
        lifted = np.maximum(np.asarray(images, dtype=np.float32) @ self.projection, 0.0).astype(np.float64)
        return np.hstack([lifted, np.ones((len(lifted), 1))])

    def learn(self, task: TaskData) -> dict:
        self.add_classes(task.classes)
        self.train_sums.add(task.classes, self.features(task.train_x), task.train_y)
        if task.val_x is not None and len(task.val_x):
            self.val_sums.add(task.classes, self.features(task.val_x), task.val_y)
        solved = [c for c in task.classes if self.train_sums.has(c)]
        for gram, names in self.train_sums.grams.groups(solved):
            self._solve(gram, names)
        for name in task.classes:
            if name not in self.heads:  # labelled on no training row: predict 0.5 until it is
                self.heads[name] = np.zeros(PROJECTION_DIM + 1)
                self.heads[name][-1] = 0.5
                self.ridge[name] = DEFAULT_RIDGE
        return {"ridge": {name: self.ridge[name] for name in task.classes}}

    def _solve(self, gram: np.ndarray, names: list[str]) -> None:
        """Ridge heads for classes sharing ``gram``, each with its λ picked by validation squared error."""
        eigenvalues, vectors = np.linalg.eigh(gram)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        scale = max(float(np.trace(gram)) / len(gram), 1e-12)
        rotated = vectors.T @ np.stack([self.train_sums.cross[n] for n in names], axis=1)
        candidates = [(ratio, vectors @ (rotated / (eigenvalues + ratio * scale)[:, None])) for ratio in RIDGE_GRID]
        for k, name in enumerate(names):
            errors = [self._val_error(name, weights[:, k]) for _, weights in candidates]
            if any(e is not None for e in errors):
                best = int(np.nanargmin([np.inf if e is None else e for e in errors]))
            else:
                best = RIDGE_GRID.index(DEFAULT_RIDGE)
            self.ridge[name] = RIDGE_GRID[best]
            self.heads[name] = candidates[best][1][:, k]

    def _val_error(self, name: str, weights: np.ndarray) -> float | None:
        """Mean squared error of a head on the class's validation rows, from the accumulated validation sums."""
        if not self.val_sums.has(name):
            return None
        gram = self.val_sums.grams.by_class[name]
        total = weights @ gram @ weights - 2 * weights @ self.val_sums.cross[name] + self.val_sums.squares[name]
        return float(total) / self.val_sums.count[name]

    def predict(self, images: np.ndarray) -> np.ndarray:
        features = self.features(images)
        fitted = np.stack(
            [features @ self.heads[c] for c in self.classes], axis=1
        )  # per class: a class's scores never depend on the others
        return expit(SCORE_SCALE * (fitted - 0.5))

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        train_tensors, train_facts = self.train_sums.state("train.")
        val_tensors, val_facts = self.val_sums.state("val.")
        tensors = {"heads": np.stack([self.heads[c] for c in self.classes]), **train_tensors, **val_tensors}
        return tensors, {
            "classes": self.classes,
            "projection": {
                "seed": self.projection_seed,
                "shape": list(self.projection.shape),
                "sha256": array_sha256(self.projection),
            },
            "ridge": [self.ridge[c] for c in self.classes],
            "train": train_facts,
            "val": val_facts,
        }

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        self.classes = list(facts["classes"])
        if "projection" in tensors:  # saved before the projection was regenerated from its seed
            self.projection = np.asarray(tensors["projection"], dtype=np.float32)
        else:
            self.projection_seed, self.projection = self._regenerated_projection(facts["projection"])
        self.heads = dict(zip(self.classes, np.asarray(tensors["heads"], dtype=np.float64)))
        self.ridge = dict(zip(self.classes, facts["ridge"]))
        self.train_sums.load(tensors, "train.", facts["train"])
        self.val_sums.load(tensors, "val.", facts["val"])

    def _regenerated_projection(self, saved: dict) -> tuple[int, np.ndarray]:
        """(seed, projection) rebuilt from the checkpoint's facts; refuses one whose bytes differ from those trained
        with (another NumPy random stream would silently change every score)."""
        seed, (image_dim, width) = int(saved["seed"]), saved["shape"]
        if width != PROJECTION_DIM:
            raise StoreError(
                f"checkpoint of method {self.name}: projection width {width}, this version uses {PROJECTION_DIM}"
            )
        projection = random_projection(image_dim, seed)
        if array_sha256(projection) != saved["sha256"]:
            raise StoreError(
                f"checkpoint of method {self.name}: the random projection regenerated from seed {seed} differs from "
                "the one it was trained with (SHA-256 mismatch: another NumPy random stream?); refusing to load it"
            )
        return seed, projection
