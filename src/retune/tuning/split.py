"""The image tower cut after block k (so the frozen blocks' output can be cached) and differentiable forward passes."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from retune.backbones.base import Backbone
from retune.data.pixels import pixel_shape
from retune.errors import ConfigError
from retune.tuning.towers import tower_blocks, tower_of


def differentiable(encode: Callable) -> Callable:
    """A backbone's ``encode_images``/``encode_texts`` without its ``inference_mode`` decorator (same code, with
    grads)."""
    inner = getattr(encode.__func__, "__wrapped__", None)
    if inner is None:
        raise ConfigError(
            f"{encode.__qualname__} is not an inference-mode wrapped encoder; cannot run it with gradients"
        )
    return inner.__get__(encode.__self__)


# BlockSplit hooks and swaps modules of a shared backbone: serialise them across threads
_SPLIT_LOCK = threading.RLock()


class _PrefixReached(Exception):
    """Raised by the capture hook to stop a forward pass once the first k blocks have run."""


class _Emit(nn.Module):
    """Stand-in for block 0: ignores its input and emits the cached activations (as a 1-tuple where blocks return
    tuples)."""

    def __init__(self, activations: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.activations, self.as_tuple = activations, as_tuple

    def forward(self, hidden, *args, **kwargs):
        activations = self.activations.to(device=hidden.device, dtype=hidden.dtype)
        return (activations,) if self.as_tuple else activations


class _PassThrough(nn.Module):
    """Stand-in for blocks 1..k-1: hands its input on unchanged."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden, *args, **kwargs):
        return (hidden,) if self.as_tuple else hidden


class BlockSplit:
    """The image tower cut after block k, for any tower whose blocks run in sequence (timm convnets, ViTs, HF
    encoders).

    ``prefix``: the first k blocks' output, captured by a forward hook that stops the pass there. ``top``: the
    tower's own forward with blocks[:k] swapped for stand-ins that emit the cached activations, so what follows
    (later blocks, norms, pooling, projection) is exactly the backbone's code. The stem then runs on blank pixels:
    a cheap first layer whose output the stand-ins discard.
    """

    def __init__(self, backbone: Backbone, k: int) -> None:
        tower = tower_of(backbone, "image")
        name, blocks = tower_blocks(tower)
        if not 0 < k <= len(blocks):
            raise ConfigError(f"cannot split the image tower after block {k}: it has {len(blocks)} blocks")
        self.backbone, self.k, self.blocks = backbone, k, blocks
        self.container = dict(tower.root.named_modules())[name]
        self.pixel_shape = pixel_shape(backbone)
        probe, self.as_tuple = self._capture(torch.zeros(2, *self.pixel_shape))
        if probe.shape[0] != 2:
            raise ConfigError(
                f"backbone '{backbone.spec}': block {k} of the image tower does not put the batch first (shape "
                f"{tuple(probe.shape)}), "
                "so its activations cannot be cached per image: set cache_prefix: false"
            )
        self.activation_shape = tuple(probe.shape[1:])

    def _capture(self, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        captured: list = []

        def stop_after(module, args, output):
            captured.append(output)
            raise _PrefixReached

        with _SPLIT_LOCK:
            handle = self.blocks[self.k - 1].register_forward_hook(stop_after)
            try:
                self.backbone.encode_images(pixels)
            except _PrefixReached:
                pass
            finally:
                handle.remove()
        if not captured:
            raise ConfigError(
                f"backbone '{self.backbone.spec}': encode_images never ran image block {self.k - 1}, so its output "
                "cannot be cached"
            )
        output = captured[0]
        as_tuple = isinstance(output, tuple)
        return (output[0] if as_tuple else output).float().clone(), as_tuple

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """Activations after the first k blocks (no gradients)."""
        return self._capture(pixels)[0]

    def top(self, activations: torch.Tensor) -> torch.Tensor:
        """Pooled image features from cached activations, with gradients through the unfrozen blocks and adapters."""
        stand_ins = [_Emit(activations, self.as_tuple)] + [_PassThrough(self.as_tuple) for _ in range(self.k - 1)]
        blank = torch.zeros(len(activations), *self.pixel_shape, device=self.backbone.device)
        encode = differentiable(self.backbone.encode_images)
        with _SPLIT_LOCK:  # the swap is visible to every user of this backbone: one split pass at a time
            originals = [self.container[i] for i in range(self.k)]
            try:
                for i, stand_in in enumerate(stand_ins):
                    self.container[i] = stand_in
                return encode(blank).pooled
            finally:
                for i, original in enumerate(originals):
                    self.container[i] = original


def image_split(backbone: Backbone, k: int) -> BlockSplit:
    """The forward split used to cache the first k image blocks, or ConfigError saying why this tower cannot be
    split."""
    try:
        return BlockSplit(backbone, k)
    except ConfigError as error:
        raise ConfigError(f"caching the frozen image blocks: {error}") from None


def can_cache_prefix(backbone: Backbone, k: int) -> bool:
    """Whether the first k image blocks' output can be cached per image for this backbone."""
    try:
        image_split(backbone, k)
    except ConfigError:
        return False
    return True


def image_features_fn(backbone: Backbone, k: int, inputs_are_prefix: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """inputs (pixels, or cached first-k-block activations) -> pooled image features with gradients where trainable.

    On pixels the whole tower runs; autograd records nothing in the frozen part (no parameter there needs a gradient).
    """
    if inputs_are_prefix:
        return image_split(backbone, k).top
    encode = differentiable(backbone.encode_images)
    return lambda pixels: encode(pixels).pooled


def prompt_features_fn(backbone: Backbone, prompts: dict) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Re-encode every class's prompts through the (trainable) text tower; returns averaged positive and negative
    rows."""
    encode = differentiable(backbone.encode_texts)
    texts = list(dict.fromkeys(t for p in prompts.values() for t in (*p.positive, *p.negative)))
    index = {t: i for i, t in enumerate(texts)}

    def averaging(side: str) -> torch.Tensor:
        weights = torch.zeros(len(prompts), len(texts))
        for row, class_prompts in enumerate(prompts.values()):
            members = [index[t] for t in getattr(class_prompts, side)]
            weights[row, members] = 1.0 / len(members)
        return weights.to(backbone.device)

    positive, negative = averaging("positive"), averaging("negative")

    def features() -> tuple[torch.Tensor, torch.Tensor]:
        vectors = encode(texts).pooled
        return positive @ vectors, negative @ vectors

    return features
