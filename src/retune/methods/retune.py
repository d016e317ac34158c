"""RE-tune (arXiv 2410.17827): adaptors on frozen embeddings, scored against positive and negative prompts.

For class c: s+ = cos(A_img(x), A_txt(p_c+)), s- = cos(A_img(x), A_txt(p_c-)) and
logit = tau * (s+ - s-), trained on cached vectors only with masked BCE (the paper) or, selectable, a
contrastive objective on the same similarities (CLIP InfoNCE or SigLIP, see ``losses.prompt_objective``).
New classes bring their own prompts, so learning a finding adds no output weights; the prompts anchor each class.
Variants for exemplar-free incremental learning: ``retune-distill`` (distil earlier classes'
logits on the new task's images, as LwF does) and ``retune-freeze`` (freeze the image adaptor
after the first task, so earlier classes can only move through their own prompts).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retune.config import ReTuneConfig
from retune.losses import logit_distillation, prompt_objective
from retune.methods.adaptors import build_image_adaptor, build_text_adaptor
from retune.methods.base import TaskData
from retune.methods.registry import register_method
from retune.methods.torch_method import TorchMethod


class ReTuneModel(nn.Module):
    """Image adaptor + text adaptor + temperature (+ SigLIP bias), with the class prompts held as buffers."""

    def __init__(self, image_dim: int, text_dim: int, config: ReTuneConfig) -> None:
        super().__init__()
        self.image_adaptor = build_image_adaptor(config.adaptor, image_dim, text_dim)
        self.text_adaptor = build_text_adaptor(config.adaptor, image_dim, text_dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.tau)), requires_grad=config.learn_tau)
        self.logit_bias = nn.Parameter(torch.zeros(()), requires_grad=config.objective == "siglip")
        self.register_buffer("positive", torch.zeros(0, text_dim))
        self.register_buffer("negative", torch.zeros(0, text_dim))

    def add_prompts(self, positive: np.ndarray, negative: np.ndarray) -> None:
        """Append prompt embeddings (rows = new classes)."""
        self.positive = torch.cat([self.positive, torch.as_tensor(positive, dtype=torch.float32)])
        self.negative = torch.cat([self.negative, torch.as_tensor(negative, dtype=torch.float32)])

    def similarities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarity of each adapted image to each class's adapted positive and negative prompt (N x C
        each). Under autocast only the adaptors (nearly all the FLOPs) run in bf16; norms and similarities stay
        fp32."""
        image = self.image_adaptor(images).float()
        positive = self.text_adaptor(self.positive).float()
        negative = self.text_adaptor(self.negative).float()
        with torch.autocast(image.device.type, enabled=False):
            image, positive, negative = (F.normalize(side, dim=-1) for side in (image, positive, negative))
            return image @ positive.T, image @ negative.T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        positive, negative = self.similarities(images)
        return self.log_tau.exp() * (positive - negative)

    def loss(
        self, images: torch.Tensor, labels: torch.Tensor, objective: str, columns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss on the task's ``columns``, logits of every class): the logits feed distillation of earlier
        classes."""
        positive, negative = self.similarities(images)
        scale = self.log_tau.exp()
        loss = prompt_objective(objective, positive[:, columns], negative[:, columns], labels, scale, self.logit_bias)
        return loss, scale * (positive - negative)


@register_method
class ReTune(TorchMethod):
    """RE-tune: prompt-anchored image and text adaptors trained with masked BCE (or a contrastive objective)."""

    name: ClassVar[str] = "retune"
    description: ClassVar[str] = (
        "RE-tune adaptors with positive/negative prompts (arXiv 2410.17827); objective bce, clip or siglip"
    )
    distill_weight: ClassVar[float] = 0.0
    freeze_image_after_first_task: ClassVar[bool] = False
    optional_tensors: ClassVar[tuple[str, ...]] = ("logit_bias",)  # runs saved before the siglip objective existed

    def build_model(self) -> ReTuneModel:
        return ReTuneModel(self.context.image_dim, self.context.text_dim, self.config)

    def shape_for(self, tensors: dict[str, np.ndarray]) -> None:
        self.model.positive = torch.zeros(tensors["positive"].shape)
        self.model.negative = torch.zeros(tensors["negative"].shape)

    def learn(self, task: TaskData) -> dict:
        previous = list(self.classes)
        # Distil every earlier class, relabelled ones too: in data-incremental tasks all classes recur.
        old_columns = torch.tensor([self.classes.index(c) for c in previous], dtype=torch.long)
        temperature = self.config.continual.distill_temperature
        distill = logit_distillation(self.model, old_columns, self.distill_weight, temperature)  # before new prompts
        new = self.add_classes(task.classes)
        if new:
            self.model.add_prompts(*self.context.prompts.matrices(new))
        if self.freeze_image_after_first_task and self.tasks_learned > 0:
            for parameter in self.model.image_adaptor.parameters():
                parameter.requires_grad_(False)
        columns = torch.tensor([self.classes.index(c) for c in task.classes])

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss, logits = self.model.loss(x, y, self.config.objective, columns)
            return loss + distill(x, logits) if distill is not None else loss

        result = self.fit_task(task, columns, loss_fn)
        return {**result.facts(), "tau": self.tau}

    @property
    def tau(self) -> float:
        return float(self.model.log_tau.detach().exp())

    def facts(self) -> dict:
        return {**super().facts(), "tau": self.tau}


@register_method
class ReTuneDistill(ReTune):
    """RE-tune + distillation of earlier classes' logits on the current task's images (exemplar-free)."""

    name: ClassVar[str] = "retune-distill"
    description: ClassVar[str] = "RE-tune with LwF-style logit distillation on earlier classes"
    distill_weight: ClassVar[float] = 1.0


@register_method
class ReTuneFreeze(ReTune):
    """RE-tune that freezes the image adaptor after the first task; later tasks train the text side."""

    name: ClassVar[str] = "retune-freeze"
    description: ClassVar[str] = "RE-tune with the image adaptor frozen after task 1"
    freeze_image_after_first_task: ClassVar[bool] = True
