"""Continual-learning baselines on one shared model: naive fine-tuning, LwF, EWC and the joint upper bound.

All four train the same network (RE-tune's image adaptor + one linear output per class) with the
same masked-BCE loop; they differ only in a regulariser (LwF, EWC), in what they train on
(joint keeps every task's rows and is therefore not exemplar-free) and in whether the model
restarts from scratch each task (joint).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from retune.config import ReTuneConfig
from retune.losses import Regulariser, logit_distillation, masked_bce
from retune.methods.adaptors import build_image_adaptor, shared_width
from retune.methods.base import MethodContext, TaskData
from retune.methods.registry import register_method
from retune.methods.torch_method import TorchMethod

NEW_OUTPUT_STD = 0.01
FISHER_CHUNK = 64  # rows per vectorised per-sample-gradient pass


class SharedHeadModel(nn.Module):
    """RE-tune's image adaptor (same width) followed by a linear layer with one output per class."""

    def __init__(self, image_dim: int, text_dim: int, config: ReTuneConfig) -> None:
        super().__init__()
        self.image_adaptor = build_image_adaptor(config.adaptor, image_dim, text_dim)  # same image side as RE-tune
        width = shared_width(config.adaptor.image, config.adaptor.text, image_dim, text_dim, config.adaptor.shared_dim)
        self.head_weight = nn.Parameter(torch.zeros(0, width))
        self.head_bias = nn.Parameter(torch.zeros(0))

    def add_outputs(self, n: int) -> None:
        """Append ``n`` outputs (small random weights, zero bias); existing outputs keep their weights."""
        if n <= 0:
            return
        new_weight = torch.randn(n, self.head_weight.shape[1]) * NEW_OUTPUT_STD
        self.head_weight = nn.Parameter(torch.cat([self.head_weight.detach(), new_weight]))
        self.head_bias = nn.Parameter(torch.cat([self.head_bias.detach(), torch.zeros(n)]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.linear(self.image_adaptor(images), self.head_weight, self.head_bias)


def empirical_fisher(
    model: nn.Module, columns: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over rows of each parameter's squared per-row gradient of the masked BCE."""
    model.eval()
    parameters = {name: value.detach() for name, value in model.named_parameters()}

    def loss_of_row(params: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return masked_bce(functional_call(model, params, (image[None],))[0, columns], label)

    per_row_grads = vmap(grad(loss_of_row), in_dims=(None, 0, 0))
    fisher = {name: torch.zeros_like(value) for name, value in parameters.items()}
    for start in range(0, len(images), FISHER_CHUNK):
        grads = per_row_grads(parameters, images[start : start + FISHER_CHUNK], labels[start : start + FISHER_CHUNK])
        for name, value in grads.items():
            fisher[name] += value.pow(2).sum(dim=0)
    return {name: value / max(len(images), 1) for name, value in fisher.items()}


class SharedHeadMethod(TorchMethod):
    """One learn loop for the shared-model baselines; subclasses change hooks, not the loop."""

    restart_each_task: ClassVar[bool] = False  # train a fresh model on every task (joint)

    def build_model(self) -> SharedHeadModel:
        return SharedHeadModel(self.context.image_dim, self.context.text_dim, self.config)

    def shape_for(self, tensors: dict[str, np.ndarray]) -> None:
        self.model.add_outputs(len(self.classes))

    def training_data(self, task: TaskData) -> TaskData:
        """The rows to fit on this task: by default only the task's own."""
        return task

    def regulariser(self, data: TaskData, previous: list[str]) -> Regulariser | None:
        """Extra loss term that protects earlier classes; none for naive fine-tuning."""
        return None

    def after_fit(self, data: TaskData, columns: torch.Tensor) -> None:
        """Hook run once the task is learned (EWC measures parameter importance here)."""

    def learn(self, task: TaskData) -> dict:
        previous = list(self.classes)
        new = self.add_classes(task.classes)
        if self.restart_each_task:
            torch.manual_seed(self.context.seed + self.tasks_learned)
            self.model = self.build_model()
            self.model.add_outputs(len(self.classes))
        else:
            self.model.add_outputs(len(new))
        data = self.training_data(task)
        extra = self.regulariser(data, previous)
        columns = torch.tensor([self.classes.index(c) for c in data.classes], dtype=torch.long)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = self.model(x)
            loss = masked_bce(logits[:, columns], y)
            return loss + extra(x, logits) if extra is not None else loss

        result = self.fit_task(data, columns, loss_fn)
        self.after_fit(data, columns)
        return {**result.facts(), "n_train_rows": len(data.train_x)}


@register_method
class Naive(SharedHeadMethod):
    """Sequential fine-tuning on each task's classes only: the lower bound for forgetting."""

    name: ClassVar[str] = "naive"
    description: ClassVar[str] = "Shared adaptor + linear head fine-tuned task after task (lower bound)"


@register_method
class LwF(SharedHeadMethod):
    """Learning without Forgetting (Li & Hoiem 2016): distil the previous model's old-class logits on new images."""

    name: ClassVar[str] = "lwf"
    description: ClassVar[str] = "Learning without Forgetting: distil earlier classes' logits on the new task's images"
    distill_weight: ClassVar[float] = 1.0

    def regulariser(self, data: TaskData, previous: list[str]) -> Regulariser | None:
        # Every earlier class, relabelled ones too: in data-incremental tasks all classes recur.
        old_columns = torch.tensor([self.classes.index(c) for c in previous], dtype=torch.long)
        temperature = self.config.continual.distill_temperature
        return logit_distillation(self.model, old_columns, self.distill_weight, temperature)


@register_method
class EWC(SharedHeadMethod):
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017) with one anchor and a summed, mean-normalised Fisher.

    Each task's diagonal Fisher is divided by the mean of its non-zero entries (so ``continual.ewc_lambda``
    does not depend on the loss or feature scale) and added to the earlier tasks' sum; the penalty
    is averaged over the anchored parameters (so it does not depend on the adaptor's size); the
    anchor is the parameters after the latest task. Output rows added later are not penalised.
    """

    name: ClassVar[str] = "ewc"
    description: ClassVar[str] = (
        "Elastic Weight Consolidation: quadratic penalty weighted by the summed diagonal Fisher"
    )

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context, config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def regulariser(self, data: TaskData, previous: list[str]) -> Regulariser | None:
        if not self.fisher:
            return None

        def penalty(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            total = logits.new_zeros(())
            count = 0
            for name, parameter in self.model.named_parameters():
                anchored = self.anchor[name]
                total = total + (self.fisher[name] * (parameter[: len(anchored)] - anchored).pow(2)).sum()
                count += anchored.numel()
            # averaged over anchored parameters, so lambda does not grow with model size
            return self.config.continual.ewc_lambda / 2 * total / count

        return penalty

    def after_fit(self, data: TaskData, columns: torch.Tensor) -> None:
        task_fisher = empirical_fisher(
            self.model,
            columns,
            torch.as_tensor(data.train_x, dtype=torch.float32),
            torch.as_tensor(data.train_y, dtype=torch.float32),
        )
        nonzero = torch.cat([value[value > 0] for value in task_fisher.values()])
        scale = nonzero.mean() if len(nonzero) else torch.tensor(1.0)
        for name, value in task_fisher.items():
            summed = value / scale
            if name in self.fisher:
                summed[: len(self.fisher[name])] += self.fisher[name]
            self.fisher[name] = summed
        self.anchor = {name: value.detach().clone() for name, value in self.model.named_parameters()}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors, facts = super().state()
        for prefix, stored in (("fisher.", self.fisher), ("anchor.", self.anchor)):
            tensors.update({prefix + name: value.numpy() for name, value in stored.items()})
        return tensors, facts

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        super().load_state(tensors, facts)
        names = [name for name, _ in self.model.named_parameters()]
        self.fisher = {
            name: torch.as_tensor(tensors["fisher." + name]) for name in names if "fisher." + name in tensors
        }
        self.anchor = {
            name: torch.as_tensor(tensors["anchor." + name]) for name in names if "anchor." + name in tensors
        }


@register_method
class Joint(SharedHeadMethod):
    """Upper bound: keeps every task's rows and retrains a fresh model on their union after each task."""

    name: ClassVar[str] = "joint"
    description: ClassVar[str] = (
        "Joint training on all tasks' rows so far (upper bound; stores data, not exemplar-free)"
    )
    exemplar_free: ClassVar[bool] = False
    restart_each_task: ClassVar[bool] = True

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context, config)
        self.seen_tasks: list[TaskData] = []

    def training_data(self, task: TaskData) -> TaskData:
        self.seen_tasks.append(task)
        train_x, train_y = self._union([(t.train_x, t.train_y, t.classes) for t in self.seen_tasks])
        with_val = [(t.val_x, t.val_y, t.classes) for t in self.seen_tasks if t.val_x is not None and len(t.val_x)]
        val_x, val_y = self._union(with_val) if with_val else (None, None)
        return TaskData(tuple(self.classes), train_x, train_y, val_x, val_y)

    def _union(self, parts: list[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]) -> tuple[np.ndarray, np.ndarray]:
        """Stack rows of several tasks; a row's label is NaN (masked) for every class its task did not reveal."""
        labels = []
        for images, task_labels, classes in parts:
            full = np.full((len(images), len(self.classes)), np.nan, dtype=np.float32)
            full[:, [self.classes.index(c) for c in classes]] = task_labels
            labels.append(full)
        return np.concatenate([images for images, _, _ in parts]), np.concatenate(labels)
