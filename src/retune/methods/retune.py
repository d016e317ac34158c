"""RE-tune (arXiv 2410.17827): adaptors on frozen embeddings, scored against positive and negative prompts.

For class c: s+ = cos(A_img(x), A_txt(p_c+)), s- = cos(A_img(x), A_txt(p_c-)) and
logit = tau * (s+ - s-), trained on cached vectors only with masked BCE (the paper) or, selectable, a
contrastive objective on the same similarities (CLIP InfoNCE or SigLIP, see ``losses.prompt_objective``).
New classes bring their own prompts, so learning a finding adds no output weights; the prompts anchor each class.
Variants for exemplar-free incremental learning: ``retune-distill`` (distil earlier classes'
logits on the new task's images, as LwF does), ``retune-freeze`` (freeze the image adaptor
after the first task; the shared text adaptor still moves) and ``retune-prompt`` (both adaptors and
the temperature freeze after the first task; each class owns a learnable offset on its positive and
negative prompt embeddings, as CoOp learns prompt vectors, and a later task trains only its own
classes' offsets, so a class absent from a task keeps exactly the same outputs) and ``retune-residual``
(retune-prompt plus, per class, a linear residual on the standardised frozen image embedding:
logit_c = tau * (s+ - s-) + w_c . z(x) + b_c, trained with the class's offsets and only in the class's tasks, under the
same input dropout, weight decay and early stopping as the adaptors, so the prompt score is the prior it departs from).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retune.config import ReTuneConfig
from retune.errors import ConfigError
from retune.losses import logit_distillation, masked_bce, prompt_objective
from retune.methods.adaptors import BlockDropout, build_image_adaptor, build_text_adaptor
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

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative prompt embeddings per class (classes x text_dim), before the text adaptor."""
        return self.positive, self.negative

    def similarities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarity of each adapted image to each class's adapted positive and negative prompt (N x C
        each). Under autocast only the adaptors (nearly all the FLOPs) run in bf16; norms and similarities stay
        fp32."""
        positive, negative = self.prompt_embeddings()
        image = self.image_adaptor(images).float()
        positive = self.text_adaptor(positive).float()
        negative = self.text_adaptor(negative).float()
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


class PromptOffsetModel(ReTuneModel):
    """ReTuneModel whose classes each own a learnable (positive, negative) offset added to their prompt embeddings."""

    def __init__(self, image_dim: int, text_dim: int, config: ReTuneConfig) -> None:
        super().__init__(image_dim, text_dim, config)
        self.offsets = nn.ParameterList()  # one (2 x text_dim) parameter per class, so each trains alone

    def add_prompts(self, positive: np.ndarray, negative: np.ndarray) -> None:
        super().add_prompts(positive, negative)
        for _ in range(len(positive)):
            self.offsets.append(nn.Parameter(torch.zeros(2, self.positive.shape[1])))

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(self.offsets):
            return self.positive, self.negative
        offsets = torch.stack(list(self.offsets))
        return self.positive + offsets[:, 0], self.negative + offsets[:, 1]


class PromptResidualModel(PromptOffsetModel):
    """PromptOffsetModel plus, per class c, a linear residual: logit_c = tau * (s+ - s-) + w_c . z(x) + b_c, z the
    image embedding standardised with the first task's statistics (input dropout on z while training).

    Each class's logit is computed from its own prompts and residual alone (no product over all classes), so adding
    classes cannot move an earlier class's logits, not even by float rounding.
    """

    def __init__(self, image_dim: int, text_dim: int, config: ReTuneConfig) -> None:
        if config.objective != "bce":
            raise ConfigError(f"retune-residual trains with objective bce only (got {config.objective})")
        super().__init__(image_dim, text_dim, config)
        self.register_buffer("image_mean", torch.zeros(image_dim))
        self.register_buffer("image_scale", torch.ones(image_dim))
        self.residuals = nn.ParameterList()  # one (image_dim + 1: w_c, then b_c) parameter per class
        self.residual_dropout = BlockDropout(config.adaptor.dropout)

    def set_standardisation(self, images: np.ndarray) -> None:
        """Fix the mean and scale of z from the first task's rows (every later residual sees the same z)."""
        images = images.astype(np.float64)
        self.image_mean = torch.as_tensor(images.mean(axis=0), dtype=torch.float32)
        self.image_scale = torch.as_tensor(images.std(axis=0) + 1e-6, dtype=torch.float32)

    def add_prompts(self, positive: np.ndarray, negative: np.ndarray) -> None:
        super().add_prompts(positive, negative)
        for _ in range(len(positive)):  # zero: a new class starts as its prompt score alone
            self.residuals.append(nn.Parameter(torch.zeros(len(self.image_mean) + 1)))

    def similarities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ReTuneModel's, but the text adaptor and the product run class by class."""
        positive, negative = self.prompt_embeddings()
        image = self.image_adaptor(images).float()
        pairs = [self.text_adaptor(torch.stack([positive[c], negative[c]])).float() for c in range(len(positive))]
        with torch.autocast(image.device.type, enabled=False):
            image = F.normalize(image, dim=-1)
            similarities = torch.stack([image @ F.normalize(pair, dim=-1).T for pair in pairs], dim=1)  # N x C x 2
        return similarities[..., 0], similarities[..., 1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        positive, negative = self.similarities(images)
        standardised = self.residual_dropout((images.float() - self.image_mean) / self.image_scale)
        residual = torch.stack([standardised @ row[:-1] + row[-1] for row in self.residuals], dim=1)
        return self.log_tau.exp() * (positive - negative) + residual

    def loss(
        self, images: torch.Tensor, labels: torch.Tensor, objective: str, columns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked BCE on the task's ``columns`` of the full logits (prompt term + residual), and every logit."""
        logits = self(images)
        return masked_bce(logits[:, columns], labels), logits


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
        columns = torch.tensor([self.classes.index(c) for c in task.classes])
        if self.tasks_learned > 0:
            self.freeze_for_later_task(columns)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss, logits = self.model.loss(x, y, self.config.objective, columns)
            return loss + distill(x, logits) if distill is not None else loss

        result = self.fit_task(task, columns, loss_fn)
        return {**result.facts(), "tau": self.tau}

    def freeze_for_later_task(self, columns: torch.Tensor) -> None:
        """What stops training after the first task (``columns``: this task's classes); by default nothing."""
        if self.freeze_image_after_first_task:
            for parameter in self.model.image_adaptor.parameters():
                parameter.requires_grad_(False)

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


@register_method
class ReTunePrompt(ReTune):
    """RE-tune, adaptors and temperature frozen after task 1; later tasks train only their classes' prompt offsets."""

    name: ClassVar[str] = "retune-prompt"
    description: ClassVar[str] = (
        "RE-tune, adaptors frozen after task 1; each later class learns only its own prompt offsets (CoOp-style)"
    )

    def build_model(self) -> PromptOffsetModel:
        return PromptOffsetModel(self.context.image_dim, self.context.text_dim, self.config)

    def shape_for(self, tensors: dict[str, np.ndarray]) -> None:
        super().shape_for(tensors)
        n_classes = tensors["positive"].shape[0]
        width = tensors["positive"].shape[1]
        self.model.offsets = nn.ParameterList([nn.Parameter(torch.zeros(2, width)) for _ in range(n_classes)])

    def freeze_for_later_task(self, columns: torch.Tensor) -> None:
        trainable = set(columns.tolist())
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for index, offset in enumerate(self.model.offsets):
            offset.requires_grad_(index in trainable)


@register_method
class ReTuneResidual(ReTunePrompt):
    """retune-prompt plus a per-class linear residual on the standardised frozen image embedding, trained only in the
    class's own tasks (with its prompt offsets), so earlier classes' outputs cannot move."""

    name: ClassVar[str] = "retune-residual"
    description: ClassVar[str] = (
        "retune-prompt + a per-class linear residual on the frozen image embedding (prompt score as its prior)"
    )

    def build_model(self) -> PromptResidualModel:
        return PromptResidualModel(self.context.image_dim, self.context.text_dim, self.config)

    def shape_for(self, tensors: dict[str, np.ndarray]) -> None:
        super().shape_for(tensors)
        width = tensors["image_mean"].shape[0] + 1
        n_classes = tensors["positive"].shape[0]
        self.model.residuals = nn.ParameterList([nn.Parameter(torch.zeros(width)) for _ in range(n_classes)])

    def learn(self, task: TaskData) -> dict:
        if self.tasks_learned == 0:
            self.model.set_standardisation(task.train_x)
        return super().learn(task)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Sigmoid class by class: over the whole matrix, a vectorised sigmoid rounds an element by its position (SIMD
        body or tail), so an earlier class's scores would depend on how many classes follow it."""
        self.model.eval()
        logits = self.model(torch.as_tensor(images, dtype=torch.float32))
        return torch.stack([torch.sigmoid(logits[:, c].contiguous()) for c in range(logits.shape[1])], dim=1).numpy()

    def freeze_for_later_task(self, columns: torch.Tensor) -> None:
        super().freeze_for_later_task(columns)
        trainable = set(columns.tolist())
        for index, residual in enumerate(self.model.residuals):
            residual.requires_grad_(index in trainable)
