"""Linear probe: one scikit-learn logistic regression per class on frozen image embeddings.

Each class's model is fitted on the task that brings the class and refitted only when a later
task brings it again (data-incremental: on that task's rows alone), so in class-incremental
scenarios it cannot forget: the bar every incremental method must beat. The inverse
regularisation strength C is picked per class on the validation split.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from retune.config import ReTuneConfig
from retune.methods.base import Method, MethodContext, TaskData
from retune.methods.registry import register_method

C_GRID = (0.001, 0.01, 0.1, 1.0)
DEFAULT_C = 0.01  # used when there is no validation split


@register_method
class LinearProbe(Method):
    """Standardised features + per-class L2 logistic regression (C chosen on validation AUROC)."""

    name: ClassVar[str] = "linear_probe"
    description: ClassVar[str] = "Per-class logistic regression on frozen image embeddings (cannot forget)"

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: dict[str, np.ndarray] = {}
        self.bias: dict[str, float] = {}

    def _standardise(self, images: np.ndarray) -> np.ndarray:
        return (images - self.mean) / self.scale

    def learn(self, task: TaskData) -> dict:
        if self.mean is None:  # fixed after the first task so earlier classes' models stay valid
            self.mean = task.train_x.mean(axis=0)
            self.scale = task.train_x.std(axis=0) + 1e-6
        self.add_classes(task.classes)
        train_x = self._standardise(task.train_x)
        val_x = self._standardise(task.val_x) if task.val_x is not None and len(task.val_x) else None
        chosen = {}
        for column, name in enumerate(task.classes):
            chosen[name] = self._fit_class(
                name, train_x, task.train_y[:, column], val_x, None if val_x is None else task.val_y[:, column]
            )
        return {"C": chosen}

    def _fit_class(
        self, name: str, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None
    ) -> float | None:
        valid = ~np.isnan(train_y)
        y = train_y[valid]
        if len(np.unique(y)) < 2:  # nothing to learn: predict the training prevalence
            self.weights[name] = np.zeros(train_x.shape[1], dtype=np.float32)
            prevalence = float(y.mean()) if len(y) else 0.5
            self.bias[name] = float(np.log((prevalence + 1e-6) / (1 - prevalence + 1e-6)))
            return None
        grid = C_GRID if val_x is not None else (DEFAULT_C,)
        best: tuple[float, float, LogisticRegression] | None = None
        for c_value in grid:
            model = LogisticRegression(C=c_value, max_iter=2000, random_state=self.context.seed).fit(train_x[valid], y)
            score = (
                -np.inf
                if val_x is None
                else self.context.val_score(model.decision_function(val_x)[:, None], val_y[:, None])
            )
            score = -np.inf if score is None else score
            if best is None or score > best[0]:
                best = (score, c_value, model)
        _, c_value, model = best
        self.weights[name] = model.coef_[0].astype(np.float32)
        self.bias[name] = float(model.intercept_[0])
        return c_value

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = self._standardise(images)
        logits = np.stack([images @ self.weights[c] + self.bias[c] for c in self.classes], axis=1)
        return expit(logits)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {
            "mean": self.mean,
            "scale": self.scale,
            "weights": np.stack([self.weights[c] for c in self.classes]),
            "bias": np.array([self.bias[c] for c in self.classes]),
        }
        return tensors, {"classes": self.classes}

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        self.classes = list(facts["classes"])
        self.mean, self.scale = tensors["mean"], tensors["scale"]
        self.weights = dict(zip(self.classes, tensors["weights"]))
        self.bias = dict(zip(self.classes, tensors["bias"].tolist()))
