"""``python -m retune.cli ...`` (how torchrun starts DDP workers): the same app as the ``retune`` command."""

from retune.cli import app

app()
