"""The root ``retune`` Typer app and its ``--version`` callback; command groups attach to it in ``retune.cli``."""

from __future__ import annotations

import typer

from retune.verbosity import VERBOSE_ENV

app = typer.Typer(
    help=(
        "Adapt frozen medical vision-language models with small adaptors.\n\n"
        "Typical flow: `retune embed labels.csv --store S` (each image through the frozen encoders "
        "once), then `retune train`, `retune evaluate`, `retune predict`, or `retune scenario run` for "
        "exemplar-free incremental learning. `retune demo` runs everything offline on synthetic phantoms."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: switches render as flags (rich shows "<bool>"), examples keep lines
)


def show_version(value: bool) -> None:
    if value:
        from retune import __version__

        print(f"retune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        envvar=VERBOSE_ENV,
        help="Also show third-party warnings, logs and banners (PyTorch, torchrun, Ray, MLflow...; default: hidden).",
    ),
) -> None:
    """Adapt frozen medical vision-language models with small adaptors."""
    from retune.cli.common import third_party_noise

    third_party_noise(shown=verbose)