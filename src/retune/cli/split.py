"""`retune split`: a run's or a scenario's patient-level split as a CSV."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from retune.cli.common import console, examples, friendly_errors
from retune.errors import ConfigError

app = typer.Typer(help="Patient-level splits of runs and scenarios.", no_args_is_help=True, rich_markup_mode=None)


@app.command(
    "export",
    epilog=examples(
        "retune split export --run runs/nih --split test --out nih-test.csv",
        "retune split export --scenario results/nih-class --split test --out scenario-test.csv",
    ),
)
@friendly_errors
def split_export(
    out: Path = typer.Option(..., help="CSV to write (the original CSV's rows and columns for the split)."),
    run: Path | None = typer.Option(
        None, help="A run folder made by `retune train` or `retune peft run` (default: none; give this or --scenario)."
    ),
    scenario: Path | None = typer.Option(
        None, help="A scenario output folder made by `retune scenario run` (default: none; give this or --run)."
    ),
    split: str = typer.Option("test", help="train, val or test."),
) -> None:
    """Write the rows of a run's or scenario's split, rebuilt exactly as training built it (the CSV must be
    unchanged and its images still in the store), e.g. to evaluate another model on the same test patients."""
    from retune.api import export_split

    if (run is None) == (scenario is None):
        raise ConfigError("give exactly one of --run or --scenario")
    summary = export_split(run or scenario, split, out)
    console.print(
        escape(f"wrote {summary['n_rows']} rows ({summary['n_patients']} patients) of the {split} split to {out}"),
        highlight=False,
    )
    if Path(summary["image_root"]) != out.resolve().parent:
        console.print(escape(f"its image paths are as in {summary['csv']}: use --image-root {summary['image_root']}"))
