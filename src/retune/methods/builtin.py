"""Imports every built-in method module so their @register_method decorators run."""

from retune.methods import continual, linear_probe, prototypes, ranpac, retune, zero_shot  # noqa: F401
