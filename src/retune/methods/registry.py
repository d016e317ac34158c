"""Method registry: each method module registers its class; the runner builds methods by name."""

from __future__ import annotations

from retune.config import ReTuneConfig
from retune.errors import ConfigError, unknown_name
from retune.methods.base import Method, MethodContext

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _METHODS[cls.name] = cls
    return cls


def _ensure_builtins_loaded() -> None:
    import retune.methods.builtin  # noqa: F401  (importing registers every built-in method)


def available_methods() -> dict[str, type[Method]]:
    """Registered methods by name."""
    _ensure_builtins_loaded()
    return dict(sorted(_METHODS.items()))


def create_method(name: str, context: MethodContext, config: ReTuneConfig | None = None) -> Method:
    """Build a method; refuses methods the backbone cannot support (e.g. zero-shot on unaligned towers)."""
    methods = available_methods()
    if name not in methods:
        raise unknown_name("method", name, list(methods))
    cls = methods[name]
    if cls.requires_aligned and not context.aligned:
        raise ConfigError(
            f"method '{name}' needs an aligned image-text backbone (CLIP-style); this backbone's towers are not "
            "aligned"
        )
    return cls(context, config or ReTuneConfig())
