"""Whether the libraries retune drives (PyTorch, torchrun, Ray, Optuna...) may print their own banners and logs.

Hidden unless ``RETUNE_VERBOSE=1``, which ``retune --verbose`` sets: an environment variable, so the processes that
torchrun and Ray start for retune inherit the choice.
"""

from __future__ import annotations

import os

VERBOSE_ENV = "RETUNE_VERBOSE"


def third_party_output_shown() -> bool:
    """True under ``retune --verbose`` (or ``RETUNE_VERBOSE=1``): third-party output as the library prints it."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
