"""A weighted mix of objectives around one cross-attention Adaptor, and its pre-training on cached token pairs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from retune.config import OptimConfig
from retune.methods.xattn_adaptor import CrossAttentionAdaptor, PairData
from retune.objectives.base import ObjectiveContext, ObjectiveOptions, PairBatch, objective_class
from retune.training.loop import FitResult, fit


class ObjectiveMix(nn.Module):
    """The adaptor (what downstream tasks use) and the objectives that train it, each with its weight."""

    def __init__(
        self, adaptor: CrossAttentionAdaptor, mix: dict[str, ObjectiveOptions], context: ObjectiveContext
    ) -> None:
        super().__init__()
        self.adaptor = adaptor
        self.objectives = nn.ModuleDict(
            {name: objective_class(name)(options, context) for name, options in mix.items() if options.weight > 0}
        )

    def loss(self, batch: PairBatch) -> torch.Tensor:
        """Sum over objectives of weight x loss."""
        return sum(objective.options.weight * objective(batch) for objective in self.objectives.values())


@dataclass
class TokenPairs:
    """Cached pairs plus what the objectives need beyond ``PairData``: each row's positive group, and optional
    text-only token rows."""

    pairs: PairData
    groups: torch.Tensor  # N, long: equal groups are matching pairs
    text_only: tuple[torch.Tensor, torch.Tensor] | None = None  # (M x T x D tokens, M x T mask)

    def batch(self, adaptor: CrossAttentionAdaptor, rows: torch.Tensor, generator: torch.Generator) -> PairBatch:
        """The rows' tokens with text padding cut at the batch's longest text, and a quarter as many random text-only
        rows (at least one)."""
        texts = self.pairs.text_index[rows]
        mask = self.pairs.text_mask[texts]
        length = int(mask.sum(1).max())
        text_only = None
        if self.text_only is not None:
            tokens, only_mask = self.text_only
            picked = torch.randint(len(tokens), (max(1, len(rows) // 4),), generator=generator).to(tokens.device)
            only_mask = only_mask[picked]
            only_length = int(only_mask.sum(1).max())
            text_only = (tokens[picked, :only_length], only_mask[:, :only_length])
        return PairBatch(
            adaptor,
            self.pairs.image_tokens[rows],
            self.pairs.text_tokens[texts, :length],
            mask[:, :length],
            self.groups[rows],
            texts,
            text_only,
        )


@dataclass
class PretrainResult:
    """The fit, and the wall-clock and CPU seconds of each epoch's training steps (CPU time of this process: what
    an epoch costs whatever else the machine runs)."""

    fit: FitResult
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_cpu_seconds: list[float] = field(default_factory=list)


def pretrain_mix(
    model: ObjectiveMix,
    train: TokenPairs,
    optim: OptimConfig,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> PretrainResult:
    """Train the adaptor and the objectives' own parameters for ``optim.epochs`` epochs (no early stopping: every
    mix trains the same number of steps, so epoch times compare); the last epoch's weights are kept."""
    rows = torch.arange(len(train.groups), device=train.groups.device)
    generator = torch.Generator().manual_seed(seed)
    marks = [(time.perf_counter(), time.process_time())]

    def loss_fn(batch_rows: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return model.loss(train.batch(model.adaptor, batch_rows, generator))

    def on_epoch(epoch: int, loss: float, score: float | None) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    result = fit(model, model.parameters(), loss_fn, rows, rows, optim, seed=seed, progress=progress,
                 on_epoch=on_epoch)
    wall, cpu = ([round(b[i] - a[i], 4) for a, b in zip(marks, marks[1:])] for i in (0, 1))
    return PretrainResult(result, wall, cpu)
