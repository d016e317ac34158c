"""`retune serve`: runs and scenario results over HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from retune.cli.common import DEVICE, err_console, examples, friendly_errors
from retune.cli.root import app


@app.command(
    epilog=examples(
        "retune serve runs/nih   # then open http://127.0.0.1:8000/",
        "curl -F images=@chest.png http://127.0.0.1:8000/v1/runs/nih/predict",
        "retune serve runs/nih results/nih-class   # a run and a scenario's results (runs page: /runs)",
        "curl http://127.0.0.1:8000/v1/scenarios/nih-class",
    )
)
@friendly_errors
def serve(
    folders: list[Path] = typer.Argument(
        ..., metavar="FOLDER...",
        help="Run folders made by `retune train` or `retune peft run`, and/or scenario output folders made by "
        "`retune scenario run` (recognised by their scenario.json; shown on the runs page and under "
        "/v1/scenarios). Each is served by its folder name.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Any non-loopback address requires --token."),
    port: int = typer.Option(8000, help="TCP port."),
    token: str | None = typer.Option(
        None,
        envvar="RETUNE_TOKEN",
        help="Bearer token (16+ characters) required on every API call and page; or set RETUNE_TOKEN "
        "(default: none, loopback only).",
    ),
    max_upload_mb: float = typer.Option(64.0, help="Largest upload accepted, in MiB (413 above)."),
    batch_window_ms: float = typer.Option(5.0, help="How long a queued image waits for others to share its batch."),
    max_batch: int = typer.Option(32, help="Most images per encoder batch (1 turns batching off)."),
    store: Path | None = typer.Option(
        None, help="Embedding store of `retune train` runs (default: the one each run was trained with)."
    ),
    device: str | None = DEVICE,
) -> None:
    """Serve runs over HTTP: a web page (/) to drop an X-ray and see findings and an explanation map, a runs page
    (/runs: each run's metrics and ROC curves, each scenario's comparison table and AUROC-matrix heatmaps), and a
    JSON API under /v1 with local docs at /docs. Each folder is loaded once at startup; nothing is written to it.

    After `retune serve runs/nih`, open http://127.0.0.1:PORT/ (PORT: --port) or send
    `curl -F images=@chest.png http://127.0.0.1:PORT/v1/runs/nih/predict`.
    """
    from retune.api import serve as serve_folders
    from retune.config import override
    from retune.server import ServeConfig

    settings = override(
        ServeConfig(),
        {
            "host": host,
            "port": port,
            "token": token,
            "max_upload_mb": max_upload_mb,
            "batch_window_ms": batch_window_ms,
            "max_batch": max_batch,
            "device": device,
        },
    )
    serve_folders(folders, settings, store, announce=lambda line: err_console.print(escape(line), highlight=False))
