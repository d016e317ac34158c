"""Imports every built-in method module so their @register_method decorators run."""

from retune.methods import linear_probe, retune, zero_shot  # noqa: F401
