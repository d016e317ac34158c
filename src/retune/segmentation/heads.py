"""Segmentation heads over a frozen tower's multi-scale maps, in one registry, plus the from-scratch U-Net baseline
that shares the FPN decoder but learns its own encoder from pixels.

Every head maps the maps (finest first) to one logit map per structure at the finest stride; the trainer upsamples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retune.errors import unknown_name


@dataclass(frozen=True)
class HeadInputs:
    """What a head is built from: the maps' channels (finest first), how many structures, the decoder width and,
    for text-guided heads, each structure's (positive, negative) prompt embeddings (K x 2 x text_dim)."""

    channels: tuple[int, ...]
    n_structures: int
    width: int = 64
    prompts: torch.Tensor | None = None


HeadFactory = Callable[[HeadInputs], nn.Module]
HEADS: dict[str, tuple[HeadFactory, str]] = {}


def register_head(name: str, description: str) -> Callable[[HeadFactory], HeadFactory]:
    """Register ``factory(HeadInputs) -> nn.Module`` under ``name`` (``--head NAME``)."""

    def decorator(factory: HeadFactory) -> HeadFactory:
        HEADS[name] = (factory, description)
        return factory

    return decorator


def create_head(name: str, inputs: HeadInputs) -> nn.Module:
    """Build the head ``name`` names (ConfigError listing the registered heads otherwise)."""
    if name not in HEADS:
        raise unknown_name("segmentation head", name, list(HEADS))
    return HEADS[name][0](inputs)


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LinearHead(nn.Module):
    """One 1x1 convolution on the coarsest map (the baseline: what a per-pixel linear probe sees)."""

    def __init__(self, inputs: HeadInputs) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(inputs.channels[-1], inputs.n_structures, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(maps[-1])


class FPNDecoder(nn.Module):
    """A light feature-pyramid decoder (semantic FPN): lateral 1x1 projections, top-down sums, a 3x3 block per level,
    every level upsampled to the finest and summed; ``features`` gives the fused width-channel map."""

    def __init__(self, channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(_conv_block(width, width) for _ in channels)
        self.fuse = _conv_block(width, width)

    def features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = [lateral(feature_map) for lateral, feature_map in zip(self.lateral, maps)]
        for index in range(len(levels) - 2, -1, -1):
            levels[index] = levels[index] + F.interpolate(levels[index + 1], size=levels[index].shape[-2:],
                                                          mode="nearest")
        finest = levels[0].shape[-2:]
        fused = sum(
            F.interpolate(smooth(level), size=finest, mode="bilinear", align_corners=False)
            for smooth, level in zip(self.smooth, levels)
        )
        return self.fuse(fused)


class FPNHead(nn.Module):
    """FPN decoder over every frozen map and a 1x1 classifier (the Adaptor paper's kind of decoder)."""

    def __init__(self, inputs: HeadInputs) -> None:
        super().__init__()
        self.decoder = FPNDecoder(inputs.channels, inputs.width)
        self.classifier = nn.Conv2d(inputs.width, inputs.n_structures, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.decoder.features(maps))


class TextGuidedHead(nn.Module):
    """RE-tune at pixel level: the FPN's per-pixel features and each structure's positive/negative prompt embeddings
    are adapted into one space; a pixel's logit is its cosine similarity to the positive prompt minus that to the
    negative one, scaled by a learned temperature, plus a per-structure bias."""

    def __init__(self, inputs: HeadInputs) -> None:
        super().__init__()
        if inputs.prompts is None:
            raise ValueError("the text-guided head needs prompt embeddings")
        self.decoder = FPNDecoder(inputs.channels, inputs.width)
        self.register_buffer("prompts", inputs.prompts.float().clone())
        self.pixel_adaptor = nn.Conv2d(inputs.width, inputs.width, 1)
        self.text_adaptor = nn.Linear(inputs.prompts.shape[-1], inputs.width)
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # e^2.3 ~ 10, CLIP-like sharpness to start
        self.bias = nn.Parameter(torch.zeros(inputs.n_structures))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        pixels = F.normalize(self.pixel_adaptor(self.decoder.features(maps)), dim=1)
        texts = F.normalize(self.text_adaptor(self.prompts), dim=-1)  # K x 2 x width
        similarity = torch.einsum("nchw,kpc->nkphw", pixels, texts)
        logits = (similarity[:, :, 0] - similarity[:, :, 1]) * self.log_scale.exp()
        return logits + self.bias.view(1, -1, 1, 1)


class ScratchEncoder(nn.Module):
    """A small convolutional encoder learned from pixels, giving maps at strides 4, 8, 16 and 32 (the baseline's
    stand-in for the frozen tower)."""

    CHANNELS = (24, 40, 80, 160)

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_block(3, 16, stride=2)
        stages, previous = [], 16
        for channels in self.CHANNELS:
            stages.append(nn.Sequential(_conv_block(previous, channels, stride=2), _conv_block(channels, channels)))
            previous = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden, maps = self.stem(pixels), []
        for stage in self.stages:
            hidden = stage(hidden)
            maps.append(hidden)
        return maps


class ScratchUNet(nn.Module):
    """The from-scratch baseline: ``ScratchEncoder`` + the same FPN decoder and classifier as the ``fpn`` head, all
    trained (nothing frozen) on the same images."""

    def __init__(self, n_structures: int, width: int = 64) -> None:
        super().__init__()
        self.encoder = ScratchEncoder()
        self.head = FPNHead(HeadInputs(ScratchEncoder.CHANNELS, n_structures, width))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))


register_head("linear", "1x1 convolution on the coarsest frozen map (stride 32): the per-pixel linear baseline")(
    LinearHead
)
register_head("fpn", "light FPN decoder over the frozen maps at strides 4-32 (Adaptor's kind)")(FPNHead)
register_head("text", "FPN features vs each structure's positive/negative prompt through the text tower (cosine)")(
    TextGuidedHead
)
