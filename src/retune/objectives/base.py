"""What every pre-training objective shares: options, the batch it reads, the registry, and token dropping.

Objectives run on the store's cached tokens (the towers stay frozen) and train the cross-attention Adaptor's
modality towers. A batch lazily computes the towers' full-token forward once, so objectives of one mix that read
it (CLIP, FILIP, captioning) share it; objectives that change the input (masked, unimodal) run their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from retune.config import StrictModel
from retune.errors import ConfigError
from retune.methods.xattn_adaptor import CrossAttentionAdaptor


class ObjectiveOptions(StrictModel):
    """Options every objective takes: its weight in the mix (0 keeps it configured but off)."""

    weight: float = Field(1.0, ge=0.0, description="Weight of this loss in the sum.")


@dataclass
class ObjectiveContext:
    """What an objective may know when it is built: widths, heads, the training texts (unique, indexed) or, when it
    is rebuilt from a checkpoint, the facts it saved."""

    image_dim: int
    text_dim: int
    width: int
    embed_dim: int
    heads: int
    texts: list[str] = field(default_factory=list)
    train_texts: list[str] = field(default_factory=list)  # each training image's text (vocabularies count these)
    saved_facts: dict | None = None  # the objective's facts from a checkpoint, when rebuilding a trained one


@dataclass
class TowerOutputs:
    """One forward of both modality towers: token states, padding and L2-normalised pooled embeddings."""

    image_states: torch.Tensor  # B x T_img x width
    image: torch.Tensor  # B x embed_dim
    text_states: torch.Tensor  # B x T_txt x width
    text_padding: torch.Tensor  # B x T_txt, True = padding
    text: torch.Tensor  # B x embed_dim


def encode_pairs(
    adaptor: CrossAttentionAdaptor, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
) -> TowerOutputs:
    """Both towers on the given tokens (``text_mask`` True = real token)."""
    padding = ~text_mask
    image_states, image_pooled = adaptor.image_tower(image_tokens, None)
    text_states, text_pooled = adaptor.text_tower(text_tokens, padding)
    return TowerOutputs(
        image_states,
        F.normalize(adaptor.image_head(image_pooled), dim=-1),
        text_states,
        padding,
        F.normalize(adaptor.text_head(text_pooled), dim=-1),
    )


@dataclass
class PairBatch:
    """One minibatch of cached pairs. ``groups`` mark positives (rows with the same group are matching pairs:
    repeated texts, or label sets written in different phrasings); ``text_index`` indexes the unique training texts
    (captioning reads their word ids); ``text_only`` are extra texts without images (unimodal text terms)."""

    adaptor: CrossAttentionAdaptor
    image_tokens: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    groups: torch.Tensor
    text_index: torch.Tensor
    text_only: tuple[torch.Tensor, torch.Tensor] | None = None

    @cached_property
    def full(self) -> TowerOutputs:
        """The towers on every token, computed once per batch."""
        return encode_pairs(self.adaptor, self.image_tokens, self.text_tokens, self.text_mask)

    @property
    def positives(self) -> torch.Tensor:
        """B x B: True where image i and text j are a matching pair."""
        return self.groups[:, None] == self.groups[None, :]


class Objective(nn.Module):
    """A pre-training loss on a :class:`PairBatch`; its own parameters (heads, decoders) train with the adaptor."""

    name: str = ""
    Options: type[ObjectiveOptions] = ObjectiveOptions

    def __init__(self, options: ObjectiveOptions, context: ObjectiveContext) -> None:
        super().__init__()
        self.options = options

    def forward(self, batch: PairBatch) -> torch.Tensor:  # pragma: no cover - every objective overrides it
        raise NotImplementedError

    def facts(self) -> dict:
        """JSON facts saved beside the checkpoint (what ``retune adaptor caption`` and reports need)."""
        return self.options.model_dump(mode="json")


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register a pre-training objective under ``name`` (the key used in YAML mixes)."""

    def decorator(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return decorator


def objective_class(name: str) -> type[Objective]:
    """The registered objective ``name``; unknown names are one ConfigError line listing the valid ones."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; valid: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def drop_tokens(
    tokens: torch.Tensor, mask: torch.Tensor | None, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep a random ``1 - ratio`` share of each row's real tokens (at least one), FLIP-style, as shorter tensors.

    The adaptor's towers have no positional embeddings, so the kept tokens are gathered in random order. ``mask``
    (True = real token) is None for images (every token real); the result's mask marks the kept tokens, and rows
    are padded only up to the longest kept row. ``ratio`` 0 returns the inputs unchanged.
    """
    if ratio <= 0:
        return tokens, mask
    real = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask
    counts = real.sum(1)
    keep = (counts.float() * (1 - ratio)).round().long().clamp(min=1)
    noise = torch.rand(real.shape, generator=generator, device="cpu").to(tokens.device)
    order = noise.masked_fill(~real, 2.0).argsort(dim=1)[:, : int(keep.max())]  # real tokens first, random order
    kept_mask = torch.arange(order.shape[1], device=tokens.device)[None, :] < keep[:, None]
    gathered = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[2]))
    gathered = gathered * kept_mask[..., None]
    return gathered, (None if mask is None and bool(kept_mask.all()) else kept_mask)
