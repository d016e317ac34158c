"""`retune scenario`: run exemplar-free incremental scenarios, compare them, score them elsewhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from retune.cli.common import (
    ADDRESS,
    ALLOW_OUTSIDE_ROOT,
    ENGINE,
    IMAGE_ROOT,
    MIN_POSITIVES,
    QUIET,
    announce_store,
    check_engine,
    comma_list,
    console,
    err_console,
    examples,
    friendly_errors,
    progress_shown,
    said_on_interrupt,
)
from retune.cli.tables import print_comparison, print_external

app = typer.Typer(
    help="Exemplar-free incremental learning: run a scenario, compare results.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def finished_runs(settings, out: Path) -> tuple[int, int]:
    """(runs whose every task is saved in OUT/work, all (method, order, seed) runs of the scenario)."""
    from retune.scenarios.runner import run_folder

    n_tasks = len(settings.tasks) or settings.generate.n_tasks
    runs = [
        run_folder(out / "work", method, order, seed)
        for method in settings.methods
        for order in settings.orders
        for seed in settings.training_seeds
    ]
    return sum((run / f"task{n_tasks}" / "done.json").is_file() for run in runs), len(runs)


def execute_scenario(
    settings,
    out: Path,
    track: bool = True,
    restart: bool = False,
    engine: str = "local",
    address: str | None = None,
    quiet: bool = False,
) -> dict:
    """Run a scenario, track it in MLflow, print the comparison (shared by `scenario run` and `demo`)."""
    from retune.api import run_scenario
    from retune.experiments.run_folder import tracking_uri

    check_engine(engine, address)
    announce_store(settings.store)
    done, total = finished_runs(settings, out)
    if done and not restart:
        err_console.print(escape(f"resuming: {done} of {total} runs done"), highlight=False)
    interrupted = f"finished tasks are saved in {out / 'work'}; rerun the same command to resume after them"
    with said_on_interrupt(interrupted):
        results = run_scenario(
            settings,
            out,
            show_progress=progress_shown(quiet),
            track=track,
            engine=engine,
            address=address,
            restart=restart,
            progress=(lambda message: None)
            if quiet
            else lambda message: err_console.print(f"[dim]{escape(message)}[/]", highlight=False),
        )
    print_comparison(results)
    if track:
        console.print(
            escape(f"MLflow: {tracking_uri(out, settings.tracking_uri)} (browse: retune ui {out})"),
            highlight=False,
        )
    console.print(escape(f"report: {out / 'report.html'}"), highlight=False)
    return results


@app.command(
    "run",
    epilog=examples(
        "retune scenario run configs/nih-class-incremental.yaml --out results/nih-class",
        "retune scenario run configs/nih-data-incremental.yaml --out results/quick --methods retune,naive",
        "retune scenario run configs/nih-class-incremental.yaml --out results/nih-class --orders 0,1,2,3,4",
    ),
)
@friendly_errors
def scenario_run(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="Scenario YAML (tasks, or generate: {kind: class|label|data, n_tasks: N})."
    ),
    out: Path = typer.Option(..., help="Output folder: <method>/results.json, report.html, plots/, mlruns/."),
    data: Path | None = typer.Option(None, help="Label CSV (default: data.csv of the YAML)."),
    store: Path | None = typer.Option(None, help="Embedding store (default: store of the YAML, else retune-store)."),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated methods, e.g. retune,ranpac,naive (default: the YAML's; `retune methods` lists all).",
    ),
    orders: str | None = typer.Option(
        None, help="Comma-separated class-order / chunking seeds, e.g. 0,1,2,3,4 (default: the YAML's orders)."
    ),
    seeds: str | None = typer.Option(
        None, help="Comma-separated training seeds; one run per (order, seed) (default: the YAML's seeds, else seed)."
    ),
    min_positives: int | None = MIN_POSITIVES,
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: a local file store in OUT/mlruns)."
    ),
    restart: bool = typer.Option(
        False, help="Delete OUT's saved task states and start over (needed when config, data or code changed)."
    ),
    engine: str = ENGINE,
    address: str | None = ADDRESS,
    quiet: bool = QUIET,
) -> None:
    """Run every method through the scenario's tasks on cached embeddings.

    A rerun into the same OUT resumes after the last finished task, only when nothing that determines the
    results changed; otherwise it stops with one line, and --restart starts over. `--engine ray` runs every
    (method, order, seed) as a Ray task over the same code: results.json holds the same numbers as a local run (OUT
    and the store on a shared filesystem when --address names a cluster).
    Means cover classes with >= --min-positives (default 10) test positives; mean ± sd is over (order, seed) runs.
    """
    from retune.config import load_yaml_config, override
    from retune.scenarios.spec import ScenarioConfig

    check_engine(engine, address)
    settings = load_yaml_config(config, ScenarioConfig)
    settings = override(settings, {"store": store, "tracking_uri": tracking_uri, "min_positives": min_positives,
                                   "methods": comma_list(methods, str), "orders": comma_list(orders, int),
                                   "seeds": comma_list(seeds, int), "data": {"csv": data}})
    execute_scenario(settings, out, restart=restart, engine=engine, address=address, quiet=quiet)


@app.command("compare", epilog=examples("retune scenario compare results/nih-class results/nih-data"))
@friendly_errors
def scenario_compare(
    directories: list[Path] = typer.Argument(..., metavar="FOLDER...", help="Scenario output folders."),
    min_positives: int | None = typer.Option(
        None,
        "--min-positives",
        min=1,
        help="Recompute the means from the saved AUROC matrices with another threshold (point estimates; CIs "
        "need a rerun with that --min-positives). Default: the threshold the scenario ran with.",
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown tables (for a README) instead."),
) -> None:
    """Print the side-by-side table of scenario runs (mean ± sd over (order, seed) runs, mean AUROC per task)."""
    from retune.report.scenario_report import with_min_positives
    from retune.scenarios.runner import load_results

    for directory in directories:
        results = load_results(directory)
        if min_positives is not None:
            results = {name: with_min_positives(result, min_positives) for name, result in results.items()}
        print_comparison(results, markdown)


@app.command(
    "evaluate",
    epilog=examples(
        "retune scenario evaluate results/nih-class --data site-b/labels.csv",
        "retune scenario evaluate results/nih-class --data site-b/labels.csv --min-positives 5 --json",
    ),
)
@friendly_errors
def scenario_evaluate(
    results: Path = typer.Argument(..., metavar="RESULTS", help="A finished `retune scenario run` output folder."),
    data: Path = typer.Option(
        ..., help="Another labelled CSV (patients never seen in training), e.g. an external site's."
    ),
    store: Path | None = typer.Option(None, help="Embedding store (default: the scenario's)."),
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    n_bootstrap: int = typer.Option(1000, min=0, help="Patient bootstrap replicates for the first run's CIs."),
    min_positives: int | None = MIN_POSITIVES,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON to stdout."),
) -> None:
    """Score every method's final model of a finished scenario on another CSV, with CIs.

    Writes RESULTS/external-<csv>.json (examples below).
    Images or patients the scenario trained or validated on are counted and warned about.
    """
    from retune.api import evaluate_scenario

    payload = evaluate_scenario(
        results,
        data,
        store_dir=store,
        image_root=image_root,
        n_bootstrap=n_bootstrap,
        min_positives=min_positives,
        show_progress=sys.stderr.isatty(),
        allow_outside_root=allow_outside_root,
    )
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    print_external(payload)
