"""One place that turns a backbone spec string into a loaded, frozen backbone.

A spec is ``family`` or ``family:source``, like open_clip's ``hf-hub:`` prefixes:
``default``, ``open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``,
``hf:openai/clip-vit-base-patch32``, ``hf:/path/to/local/dir``,
``hf-pair:microsoft/rad-dino+microsoft/BiomedVLP-CXR-BERT-specialized``, ``biovil``.
Aliases map friendly names (``biomedclip``) to full specs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from retune.backbones.base import Backbone, BackboneInfo
from retune.errors import unknown_name

BackboneFactory = Callable[[str], Backbone]

_FACTORIES: dict[str, tuple[BackboneFactory, BackboneInfo]] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(family: str, info: BackboneInfo) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(source) -> Backbone`` under a family prefix."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _FACTORIES[family] = (factory, info)
        return factory

    return decorator


def register_alias(alias: str, spec: str) -> None:
    """Let users type a short name (e.g. ``biomedclip``) for a full spec."""
    _ALIASES[alias] = spec


def _ensure_builtins_loaded() -> None:
    # Importing the family modules runs their @register_backbone decorators.
    import retune.backbones.families  # noqa: F401


def resolve_spec(spec: str) -> tuple[str, str]:
    """Split a spec (after alias expansion) into (family, source)."""
    _ensure_builtins_loaded()
    spec = _ALIASES.get(spec, spec)
    family, _, source = spec.partition(":")
    if family not in _FACTORIES:
        raise unknown_name("backbone", family, list(_FACTORIES) + list(_ALIASES))
    return family, source


@contextmanager
def _quiet_weight_loading() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar (retune shows its own progress); restored afterwards."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def create_backbone(spec: str, device: str | None = None) -> Backbone:
    """Load the backbone a spec names, frozen, on ``device`` (default: CUDA when present)."""
    from retune.devices import pick_device

    family, source = resolve_spec(spec)
    with _quiet_weight_loading():
        backbone = _FACTORIES[family][0](source)
    backbone.spec = _ALIASES.get(spec, spec)
    return backbone.freeze().to(pick_device(device))


def list_backbones() -> list[tuple[str, BackboneInfo]]:
    """Registered families with their descriptions, plus aliases as (alias, info of target)."""
    _ensure_builtins_loaded()
    rows = [(family, info) for family, (_, info) in sorted(_FACTORIES.items())]
    for alias, target in sorted(_ALIASES.items()):
        family = target.partition(":")[0]
        info = _FACTORIES[family][1]
        rows.append((alias, BackboneInfo(info.family, f"alias for {target}", alias, info.aligned)))
    return rows
