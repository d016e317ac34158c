"""Shared pieces of every command group: consoles, one-line errors, common options, store notice."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

import typer
from rich.console import Console
from rich.markup import escape

from retune.errors import ConfigError, RetuneError
from retune.verbosity import VERBOSE_ENV

console = Console()


err_console = Console(stderr=True)


# click's names for value types; typer 0.2x's own help writes <str>, <int range>, <path>, <list[Path]> instead.
CLICK_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", Path: "PATH"}
CLICK_PATH_NAMES = {"file": "FILE", "dir": "DIRECTORY"}


def option_metavar(option: typer.core.TyperOption) -> str:
    """click's metavar for an option's value: its own metavar, else PATH, TEXT, INTEGER... (a range is in the
    help's [x>=0])."""
    if option.metavar is not None:
        return option.metavar
    described = option.type_descriptor
    if described.is_path:
        return CLICK_PATH_NAMES.get(described.path_type, "PATH")
    value_type = get_args(described.annotation)[0] if described.is_list else described.annotation
    return CLICK_TYPE_NAMES.get(value_type, getattr(value_type, "__name__", "value").upper())


def argument_metavar(argument: typer.core.TyperArgument) -> str:
    """click's name for an argument: its metavar, else its NAME ([NAME] when optional, NAME... for several)."""
    if argument.metavar is not None:
        return argument.metavar
    name = argument.name.upper() if argument.required else f"[{argument.name.upper()}]"
    return f"{name}..." if argument.nargs != 1 else name


class ClickStyleOption(typer.core.TyperOption):
    """An option whose value reads ``--data PATH``, ``--split TEXT`` where typer 0.2x writes ``<path>``, ``<str>``."""

    def display_type_rich(self, ctx: typer.Context) -> str:
        return option_metavar(self)


class ClickStyleArgument(typer.core.TyperArgument):
    """An argument shown by its metavar alone (``CSV``, ``RUN...``) where typer 0.2x writes ``{CSV}`` in the usage
    and ``CSV <path>`` in its row."""

    def display_type_rich(self, ctx: typer.Context) -> str:
        return ""

    def get_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [self.metavar]  # set from argument_metavar by ClickStyleHelp


class ClickStyleHelp(typer.core.TyperCommand):
    """A command whose --help (and the CLI reference built from it) reads like click's:
    ``retune compare [OPTIONS] RUN...``, ``--data PATH``, ``--n-bootstrap INTEGER``; texts and defaults are typer's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # typer builds its own parameter classes; these only change how they are shown
            if type(param) is typer.core.TyperOption:
                param.__class__ = ClickStyleOption
            elif type(param) is typer.core.TyperArgument:
                param.metavar = argument_metavar(param)
                param.__class__ = ClickStyleArgument


def click_style_help(app: typer.Typer) -> None:
    """Every command of ``app`` and of its command groups prints click-style help (``ClickStyleHelp``)."""
    for command in app.registered_commands:
        if command.cls in (None, typer.core.TyperCommand):  # typer's default, not a command's own class
            command.cls = ClickStyleHelp
    for group in app.registered_groups:
        click_style_help(group.typer_instance)


def examples(*lines: str) -> str:
    """The epilog every command's --help ends with: example command lines, kept as they are."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def friendly_errors(command: Callable) -> Callable:
    """Print a RetuneError, or an operating-system error such as a read-only output folder (naming its file), as
    one line and exit 2 instead of showing a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RetuneError as error:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as error:
            err_console.print(f"[bold red]error:[/] {escape(os_error_line(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@contextmanager
def said_on_interrupt(message: str) -> Iterator[None]:
    """Ctrl-C during the block: one line saying what was saved and how to resume, then exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


# Warnings and logs of the libraries underneath that say nothing a retune user can act on.
NOISY_MESSAGES = (r".*Grad strides do not match.*", r".*source code of class.*", r".*TypedStorage is deprecated.*")
NOISY_MODULES = r"(torch|torchvision|timm|transformers|mlflow|starlette|fastapi|pydantic|ray|peft|open_clip)(\.|$)"
NOISY_LOGGERS = ("mlflow", "alembic", "ray", "transformers", "timm", "urllib3", "torch.distributed")


def third_party_noise(shown: bool) -> None:
    """Hide (default) or show (--verbose) third-party warnings and logs, here and (through RETUNE_VERBOSE) in the
    processes torchrun and Ray start; ``retune.distributed`` reads the same switch for their banners."""
    action = "default" if shown else "ignore"
    for pattern in NOISY_MESSAGES:
        warnings.filterwarnings(action, message=pattern)
    warnings.filterwarnings(action, module=NOISY_MODULES)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if shown else logging.ERROR)
    os.environ[VERBOSE_ENV] = "1" if shown else "0"


def os_error_line(error: OSError) -> str:
    """``<file>: <reason>`` for an operating-system error (e.g. ``runs/x: Read-only file system``)."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename else reason


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
    ..., exists=False, metavar="CSV", help="Label CSV: a path column, label columns and optionally patient_id."
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


NO_VERIFY = typer.Option(
    False,
    "--no-verify",
    help="Load a run whose config.json records no weights hash (its weights cannot be checked; said loudly).",
)


def warn_unverified(no_verify: bool, run: Path) -> None:
    """The loud line a user who passed --no-verify reads before anything is scored."""
    if no_verify:
        err_console.print(
            f"[bold red]warning:[/] {escape(f'--no-verify: {run} is loaded without checking its weights hash')}",
            highlight=False,
            soft_wrap=True,
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
