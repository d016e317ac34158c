"""Progress bars (rich) with a rate column, silent when disabled or when output is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

EpochUpdate = Callable[[int, float, "float | None"], None]


def _stderr() -> Console:
    """Progress goes to stderr, so stdout stays clean for tables and --json."""
    return Console(stderr=True)


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, unit: str = "items"
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows done/total, rate in ``unit``/s, elapsed and remaining time."""
    if not enabled or total == 0:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False, console=_stderr()) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:.1f} {unit}/s" if speed else "")

        yield advance


@contextmanager
def epoch_bar(
    description: str, max_epochs: int, enabled: bool = True, score: str = "AUROC"
) -> Iterator[EpochUpdate]:
    """Yield ``update(epoch, train_loss, val_score)`` for one training: epoch of max, loss, validation ``score``
    (AUROC unless said), time.

    Early stopping ends a fit before ``max_epochs``; the bar then shows the epoch it stopped at.
    """
    if not enabled:
        yield lambda epoch, loss, score: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn(f"val {score} {{task.fields[val]}}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False, console=_stderr()) as progress:
        task = progress.add_task(description, total=max_epochs, loss="-", val="-")

        def update(epoch: int, loss: float, score: float | None) -> None:
            progress.update(task, completed=epoch, loss=f"{loss:.4f}", val="-" if score is None else f"{score:.3f}")

        yield update
