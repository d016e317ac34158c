"""Shared pieces of every command group: consoles, one-line errors, common options, store notice."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from retune.errors import ConfigError, RetuneError

console = Console()


err_console = Console(stderr=True)


def examples(*lines: str) -> str:
    """The epilog every command's --help ends with: example command lines, kept as they are."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def friendly_errors(command: Callable) -> Callable:
    """Print a RetuneError as one line and exit 2 instead of showing a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RetuneError as error:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def announce_store(store: Path) -> None:
    """Say which store a command writes embeddings to (it holds patient-derived data), and whether it is new."""
    state = "existing" if Path(store, "manifest.json").exists() else "new"
    err_console.print(
        escape(
            f"embedding store: {Path(store).resolve()} ({state}; patient-derived data, "
            "`retune store purge` deletes it)"
        ),
        highlight=False,
        soft_wrap=True,
    )


QUIET = typer.Option(
    False, "--quiet", "-q", help="No progress bars (they are also off when stderr is not a terminal)."
)


def progress_shown(quiet: bool) -> bool:
    """Progress bars go to stderr, only on a terminal and without --quiet."""
    return sys.stderr.isatty() and not quiet


CSV_ARGUMENT = typer.Argument(
    ..., exists=False, help="Label CSV: a path column, label columns and optionally patient_id."
)


IMAGE_ROOT = typer.Option(
    None,
    help="Folder that image paths resolve against (default: the CSV's folder). Paths may not escape it: '..', "
    "absolute paths and symlinks must resolve inside it (see --allow-outside-root).",
)


ALLOW_OUTSIDE_ROOT = typer.Option(
    False,
    "--allow-outside-root",
    help="Also read image paths that resolve outside --image-root (a CSV of absolute paths); off by default.",
)


DATA_FORMAT = typer.Option("auto", "--format", help="CSV format: auto, csv, chexpert, nih, mimic.")


METADATA_CSV = typer.Option(
    None,
    help="--format mimic only (and required there): mimic-cxr-2.0.0-metadata.csv, which images belong to each "
    "labelled study (default: none).",
)


BACKBONE = typer.Option(
    "default", help="Backbone spec; see `retune backbones`. The default is general-domain (ImageNet + MiniLM)."
)


STORE = typer.Option(
    Path("retune-store"), help="Embedding store folder (patient-derived data; `retune store purge` deletes it)."
)


MIN_POSITIVES = typer.Option(
    None,
    "--min-positives",
    min=1,
    help="Means cover only classes with at least this many positive test images (default 10); "
    "the rest are listed and marked.",
)


DEVICE = typer.Option(None, help="torch device (default: cuda when available, else cpu).")


ENGINE = typer.Option(
    "local", help="local (this process, the default) or ray (a local Ray instance, or the cluster at --address)."
)


ADDRESS = typer.Option(
    None, help="--engine ray: a cluster to join (auto, HOST:PORT or ray://HOST:PORT); default: start Ray here."
)


def check_engine(engine: str, address: str | None) -> str:
    """``engine`` if known; --address only with --engine ray (one line otherwise)."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine: unknown engine '{engine}'; valid engine names: local, ray")
    if address and engine != "ray":
        raise ConfigError("--address needs --engine ray")
    return engine


def comma_list(text: str | None, kind: type) -> list | None:
    """'a,b,c' -> [a, b, c] converted by ``kind``; None stays None (option not given)."""
    from retune.errors import ConfigError

    if text is None:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ConfigError(f"cannot read '{text}' as a comma-separated list of {kind.__name__}") from error
