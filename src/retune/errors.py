"""Errors that the CLI turns into one clear line instead of a stack trace."""

from __future__ import annotations


class RetuneError(Exception):
    """Base class: a user-facing problem with a one-line message naming the file, row or field."""


class DataError(RetuneError):
    """Bad input data: a CSV with a missing column, an unknown label, a path outside the image root."""


class ConfigError(RetuneError):
    """An unknown name (backbone, method, class, prompt set) or an invalid configuration value."""


class WeightsNotFoundError(RetuneError):
    """Model weights are missing; the message says where they were looked for and how to provide them."""


class StoreError(RetuneError):
    """The embedding store is missing, corrupt or was made by a different backbone."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """Build the standard 'unknown X; valid names are ...' error."""
    return ConfigError(f"unknown {kind} '{name}'; valid {kind} names: {', '.join(sorted(valid))}")
