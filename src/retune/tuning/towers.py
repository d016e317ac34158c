"""An encoder tower (image or text) of a backbone, its block sequence, and which parameters freezing the first k
blocks fixes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from retune.backbones.base import Backbone, names_under
from retune.errors import ConfigError

TOWERS = ("image", "text")
BLOCK_CONTAINER_NAMES = ("blocks", "resblocks", "layer", "layers")


@dataclass
class Tower:
    """One encoder tower: the module holding it and which of that module's names belong to it."""

    name: str
    root: nn.Module
    owns: Callable[[str], bool]

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return ((n, m) for n, m in self.root.named_modules() if n and self.owns(n))

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.root.named_parameters() if self.owns(n))


def tower_of(backbone: Backbone, tower: str) -> Tower:
    """The tower the backbone declares (``Backbone.tower``), or ConfigError if it declares none."""
    if tower not in TOWERS:
        raise ConfigError(f"unknown tower '{tower}'; valid towers: image, text")
    declared = backbone.tower(tower)
    if declared is None:
        raise ConfigError(f"backbone '{backbone.spec}': it declares no {tower} tower for tuning (Backbone.tower)")
    return Tower(tower, *declared)


def tower_blocks(tower: Tower) -> tuple[str, list[nn.Module]]:
    """The tower's block sequence (EfficientNet stages, ViT/BERT layers): the largest blocks/layers container."""
    candidates = [
        (sum(p.numel() for p in module.parameters()), name, module)
        for name, module in tower.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
        and name.rsplit(".", 1)[-1] in BLOCK_CONTAINER_NAMES
        and len(module) >= 2
    ]
    if not candidates:
        raise ConfigError(f"{tower.name} tower ({type(tower.root).__name__}): no block sequence found to freeze")
    _, name, container = max(candidates, key=lambda item: item[0])
    return name, list(container)


def resolve_freeze_blocks(value: float, n_blocks: int, tower: str) -> int:
    """``value`` as a block count: an int k (0..n) or a fraction in (0, 1) of the tower's blocks."""
    if 0 < value < 1:
        return int(round(value * n_blocks))
    if value != int(value) or value > n_blocks:
        raise ConfigError(
            f"freeze_blocks={value}: the {tower} tower has {n_blocks} blocks; give an int 0..{n_blocks} or a fraction "
            "in (0, 1)"
        )
    return int(value)


def frozen_names(tower: Tower, k: int) -> set[str]:
    """Parameter names of the stem (embeddings, everything registered before the blocks) and of the first k blocks."""
    if k == 0:
        return set()
    container, blocks = tower_blocks(tower)
    frozen_blocks = tuple(f"{container}.{i}" for i in range(k))
    in_blocks = names_under(container)
    frozen, seen_blocks = set(), False
    for name, _ in tower.named_parameters():
        seen_blocks = seen_blocks or in_blocks(name)
        if not seen_blocks or "embed" in name or names_under(*frozen_blocks)(name):
            frozen.add(name)
    return frozen
