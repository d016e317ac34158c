"""The RE-tune head on partly trainable encoders, and what a tuned run holds (trainable tensors only)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from retune.backbones.base import Backbone
from retune.methods.retune import ReTuneModel


def _key(name: str) -> str:
    return name.replace(".", "__")


class TunedReTune(nn.Module):
    """RE-tune head on partly trainable encoders; ``state_dict`` holds the head and the trainable encoder tensors
    only."""

    def __init__(
        self,
        head: ReTuneModel,
        image_features: Callable,
        prompt_features: Callable | None,
        encoder_parameters: dict[str, nn.Parameter],
    ) -> None:
        super().__init__()
        self.head = head
        # shared with the backbone
        self.encoder = nn.ParameterDict({_key(name): p for name, p in encoder_parameters.items()})
        self.image_features = image_features
        self.prompt_features = prompt_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.prompt_features is not None:
            self.head.positive, self.head.negative = self.prompt_features()
        return self.head(self.image_features(inputs))

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
        """The RE-tune head's objective (bce, clip, siglip) on every class, through the trainable encoder parts."""
        if self.prompt_features is not None:
            self.head.positive, self.head.negative = self.prompt_features()
        features = self.image_features(inputs).float()
        return self.head.loss(features, labels.to(features.device), objective, torch.arange(labels.shape[1]))[0]

    @torch.no_grad()
    def freeze_prompts(self) -> None:
        """Store the tuned text tower's final prompt embeddings in the head's buffers (for the checkpoint)."""
        if self.prompt_features is not None:
            positive, negative = self.prompt_features()
            self.head.positive, self.head.negative = positive.detach(), negative.detach()


def trainable_encoder_parameters(backbone: Backbone) -> dict[str, nn.Parameter]:
    """Encoder parameters that require grad after tuning was applied, by ``attribute.name``."""
    found = {}
    for attribute, module in vars(backbone).items():
        if isinstance(module, nn.Module):
            found.update({f"{attribute}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
    return found


def parameter_report(backbone: Backbone, model: TunedReTune) -> dict:
    """Trainable and total parameter counts (encoders incl. adapters + head) and the trainable percentage."""
    unique = {id(p): p for module in [*backbone.modules, model] for p in module.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(100.0 * trainable / total, 4),
    }
