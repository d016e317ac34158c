"""`retune tune`: Ray Tune search over RE-tune's settings."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from retune.cli.common import console, err_console, examples, friendly_errors
from retune.cli.root import app


@app.command(
    epilog=examples(
        "retune tune search.yaml --out tuned --trials 16",
        "retune train --config tuned/best.yaml --out runs/tuned   # train with the best configuration",
    )
)
@friendly_errors
def tune(
    config: Path = typer.Argument(
        ...,
        metavar="CONFIG",
        help="YAML: a `retune train` config plus search (ranges/choices), trials, searcher, scheduler.",
    ),
    out: Path = typer.Option(
        ..., help="Output folder: best.yaml (a `retune train --config` file), trials.csv, search.json."
    ),
    data: Path | None = typer.Option(None, help="Label CSV (default: data.csv of the YAML)."),
    trials: int | None = typer.Option(None, min=1, help="Configurations to try (overrides the YAML; default 8)."),
    address: str | None = typer.Option(
        None, help="A Ray cluster to run the trials on (auto, HOST:PORT or ray://HOST:PORT); default: start Ray here."
    ),
) -> None:
    """Search RE-tune's learning rate, weight decay, input dropout, adaptor width and epochs with Ray Tune.

    Optuna proposes configurations, ASHA stops trials whose validation mean AUROC lags; trials train on cached
    embeddings and are scored on the validation split only (the test split never reaches them). Example:
    `retune tune search.yaml --out tuned && retune train --config tuned/best.yaml --out run`.
    """
    from retune.api import tune as tune_api
    from retune.config import load_yaml_config, override
    from retune.distributed.ray_tune import TuneConfig

    settings = override(load_yaml_config(config, TuneConfig), {"trials": trials, "data": {"csv": data}})
    summary = tune_api(settings, out, address=address, show_progress=sys.stderr.isatty())
    best = f"validation mean AUROC {summary['best_val_mean_auroc']:.3f} with {summary['best_params']}"
    console.print(escape(f"best of {summary['trials']} trials: {best}"), highlight=False)
    if summary["failed_trials"]:
        failed = f"{summary['failed_trials']} trials failed (see {escape(str(out / 'ray'))})"
        err_console.print(f"[yellow]warning:[/] {failed}")
    console.print(escape(f"config: {out / 'best.yaml'} (chosen on validation only)"), highlight=False)
