"""Zero-shot (CheXzero style): softmax over a class's positive and negative prompt similarities.

Only meaningful when the image and text towers share one space (CLIP-like backbones).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import expit

from retune.config import ReTuneConfig
from retune.methods.base import Method, MethodContext, TaskData
from retune.methods.registry import register_method

ZERO_SHOT_SCALE = 100.0  # CLIP's learned logit scale saturates at 100


def _normalise(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True).clip(min=1e-12)


@register_method
class ZeroShot(Method):
    """No training: p(c) = softmax(100 * [cos(x, p_c+), cos(x, p_c-)])[0]."""

    name: ClassVar[str] = "zero_shot"
    description: ClassVar[str] = "Positive vs negative prompt softmax, no training (aligned backbones only)"
    requires_aligned: ClassVar[bool] = True

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)
        self.positive = np.zeros((0, context.text_dim), dtype=np.float32)
        self.negative = np.zeros((0, context.text_dim), dtype=np.float32)

    def learn(self, task: TaskData) -> dict:
        new = self.add_classes(task.classes)
        if new:
            positive, negative = self.context.prompts.matrices(new)
            self.positive = np.concatenate([self.positive, _normalise(positive)])
            self.negative = np.concatenate([self.negative, _normalise(negative)])
        return {}

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = _normalise(images)
        margin = ZERO_SHOT_SCALE * (images @ self.positive.T - images @ self.negative.T)
        return expit(margin)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"positive": self.positive, "negative": self.negative}, {"classes": self.classes}

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        self.classes = list(facts["classes"])
        self.positive, self.negative = tensors["positive"], tensors["negative"]
