"""The skeleton shared by methods that train a torch module on cached vectors (RE-tune and its variants, the
continual baselines): model construction, one fit per task seeded by task index, sigmoid prediction, and a
safetensors state of the module's tensors plus JSON facts."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from retune.config import ReTuneConfig
from retune.errors import StoreError
from retune.methods.base import Method, MethodContext, TaskData
from retune.training.loop import FitResult, fit


class TorchMethod(Method):
    """A method whose whole state is ``self.model`` (an nn.Module whose forward gives logits per class) and its class
    list."""

    # added in later versions: a checkpoint without them keeps the fresh model's values
    optional_tensors: tuple[str, ...] = ()

    def __init__(self, context: MethodContext, config: ReTuneConfig) -> None:
        super().__init__(context)
        self.config = config
        self.model = self.build_model()
        self.tasks_learned = 0

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh, untrained model for this method."""

    @abstractmethod
    def shape_for(self, tensors: dict[str, np.ndarray]) -> None:
        """Grow ``self.model`` to the saved shapes (prompt rows, output rows) before its tensors are loaded."""

    def fit_task(
        self, data: TaskData, columns: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> FitResult:
        """Fit ``self.model`` on one task's rows; early stopping scores the task's ``columns`` on its validation
        rows."""
        # float16 rows stay float16 (no float32 copy of a large matrix); ``fit`` widens each batch
        compact = data.train_x.dtype == np.float16
        train_x = torch.as_tensor(data.train_x, dtype=torch.float16 if compact else torch.float32)
        train_y = torch.as_tensor(data.train_y, dtype=torch.float32)
        val_score = None
        if data.val_x is not None and len(data.val_x):
            val_x = torch.as_tensor(data.val_x, dtype=torch.float32)
            if self.config.optim.early_stopping == "loss":
                val_y = torch.as_tensor(data.val_y, dtype=torch.float32)
                val_score = lambda: -float(loss_fn(val_x, val_y))  # noqa: E731
            else:
                val_score = lambda: self.context.val_score(self.model(val_x)[:, columns].numpy(), data.val_y)  # noqa: E731
        result = fit(
            self.model,
            self.model.parameters(),
            loss_fn,
            train_x,
            train_y,
            self.config.optim,
            val_score,
            self.context.seed + self.tasks_learned,
            on_epoch=self.context.on_epoch,
        )
        self.tasks_learned += 1
        return result

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        return torch.sigmoid(self.model(torch.as_tensor(images, dtype=torch.float32))).numpy()

    def facts(self) -> dict:
        """JSON facts saved next to the tensors."""
        return {"classes": self.classes, "tasks_learned": self.tasks_learned}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {name: value.detach().cpu().numpy() for name, value in self.model.state_dict().items()}, self.facts()

    def load_state(self, tensors: dict[str, np.ndarray], facts: dict) -> None:
        self.classes = list(facts["classes"])
        self.tasks_learned = int(facts.get("tasks_learned", 1))
        self.model = self.build_model()
        self.shape_for(tensors)
        fresh = self.model.state_dict()
        missing = [name for name in fresh if name not in tensors and name not in self.optional_tensors]
        if missing:
            raise StoreError(f"checkpoint of method {self.name} lacks tensor(s) {', '.join(missing)}")
        self.model.load_state_dict(
            {name: torch.as_tensor(tensors[name]) if name in tensors else value for name, value in fresh.items()}
        )
