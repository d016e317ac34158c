"""The ``retune`` command: one module per command group, each a thin layer that parses options, calls
``retune.api`` and prints through ``retune.cli.tables``.

Every command turns a ``RetuneError`` (bad input, unknown name, missing weights) into one red line and a
non-zero exit, never a stack trace.
"""

from retune.cli import (  # noqa: F401  (top-level commands register here)
    runs,
    scenario,
    seg,
    serve,
    split,
    store,
    tune,
    tuning,
    vqa,
)
from retune.cli.common import click_style_help
from retune.cli.root import app

app.add_typer(store.app, name="store")
app.add_typer(scenario.app, name="scenario")
app.add_typer(tuning.adaptor_app, name="adaptor")
app.add_typer(tuning.peft_app, name="peft")
app.add_typer(split.app, name="split")
app.add_typer(vqa.app, name="vqa")
app.add_typer(seg.app, name="seg")
click_style_help(app)

__all__ = ["app"]
