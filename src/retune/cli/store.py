"""`retune store`: inspect or delete an embedding store (patient-derived data)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from retune.cli.common import console, examples, friendly_errors
from retune.cli.tables import print_store_summary

app = typer.Typer(
    help="Inspect or delete an embedding store (it holds patient-derived data).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("info", epilog=examples("retune store info stores/nih", "retune store info stores/nih --json"))
@friendly_errors
def store_info(
    store: Path = typer.Argument(..., metavar="STORE", help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON to stdout instead of a table."),
) -> None:
    """Show what a store holds: backbones, rows per kind, size on disk."""
    from retune.api import store_info as info

    summary = info(store)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print_store_summary(summary)


@app.command("purge", epilog=examples("retune store purge stores/nih --yes"))
@friendly_errors
def store_purge(
    store: Path = typer.Argument(..., metavar="STORE", help="Store folder to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an embedding store and everything in it (embeddings and paths derived from patient images)."""
    from retune.api import purge_store

    if not yes and not typer.confirm(f"Delete {store} and all embeddings in it?"):
        raise typer.Exit(1)
    freed = purge_store(store)
    console.print(escape(f"deleted {store} ({freed / 1e6:.1f} MB)"))
