"""The ``retune`` command: thin wrappers that parse options, call the Python API and print.

Every command turns a ``RetuneError`` (bad input, unknown name, missing weights) into one red
line and a non-zero exit, never a stack trace.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from retune.data.images import DEFAULT_LIMITS
from retune.errors import ConfigError, RetuneError
from retune.report.text import format_interval

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
store_app = typer.Typer(
    help="Inspect or delete an embedding store (it holds patient-derived data).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(store_app, name="store")

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
) -> None:
    """Adapt frozen medical vision-language models with small adaptors."""


@app.command(epilog=examples("retune methods"))
@friendly_errors
def methods() -> None:
    """List the registered methods, whether each is exemplar-free, and the scenario kinds it runs in."""
    from retune.methods.registry import available_methods

    table = Table("name", "exemplar-free", "scenario kinds", "description")
    for name, cls in available_methods().items():
        kinds = ", ".join(sorted(cls.scenario_kinds))
        table.add_row(name, "yes" if cls.exemplar_free else "no (stores data)", kinds, cls.description)
    console.print(table)


@app.command(epilog=examples("retune backbones"))
@friendly_errors
def backbones() -> None:
    """List the backbone families and aliases you can pass to --backbone."""
    from retune.backbones.registry import list_backbones

    for name, info in list_backbones():
        console.print(f"[bold]{escape(name)}[/] (aligned towers: {'yes' if info.aligned else 'no'})", highlight=False)
        console.print(f"  --backbone {escape(info.example)}", highlight=False, soft_wrap=True)  # whole, never cut
        console.print(f"  {escape(info.description)}", highlight=False, overflow="fold")


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


@app.command(
    epilog=examples(
        "retune embed ../shared/data/nih-cxr14/labels.csv --store stores/nih",
        "retune embed ../shared/data/nih-cxr14/labels.csv --store stores/nih --tokens   # for adaptor run",
    )
)
@friendly_errors
def embed(
    csv_path: Path = CSV_ARGUMENT,
    backbone: str = BACKBONE,
    store: Path = STORE,
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    data_format: str = DATA_FORMAT,
    metadata_csv: Path | None = METADATA_CSV,
    batch_size: int = typer.Option(
        32, min=1, help="Images per encoder call on a GPU; on CPU at most 4 (larger batches' activations outgrow the "
        "cache)."
    ),
    workers: int | None = typer.Option(
        None,
        min=0,
        help="local: DataLoader workers; each decodes, and on CPU also encodes with one thread (default: one per "
        "core, at most 16; 0 = all in this process, which a CPU job of 256+ images also picks when its first 8 "
        "show that to be faster); "
        "ray: encoder actors (default: one per GPU, else one per 8 CPUs).",
    ),
    tokens: bool = typer.Option(
        False, help="Also store token/patch embeddings (needed by the cross-attention Adaptor)."
    ),
    max_file_mb: float = typer.Option(
        DEFAULT_LIMITS.max_bytes / 2**20, min=0, help="Largest image file read, in MiB."
    ),
    max_pixels: int = typer.Option(
        DEFAULT_LIMITS.max_pixels, min=1, help="Pixel budget of one image (DICOM: one frame), checked from its header."
    ),
    max_aspect_ratio: float = typer.Option(
        DEFAULT_LIMITS.max_aspect_ratio, min=1, help="Longest side / shortest side allowed."
    ),
    quiet: bool = QUIET,
    device: str | None = DEVICE,
    engine: str = ENGINE,
    address: str | None = ADDRESS,
) -> None:
    """Embed every image of a CSV once per backbone; reruns compute only what is missing.

    Unreadable images (also directories, devices, FIFOs, files over the size limit, images over the pixel
    budget) are listed in STORE/errors/ and skipped; the exit code is then 1.
    `--engine ray` decodes in Ray tasks and encodes in a pool of encoder actors (GPU actors on a GPU cluster),
    writing the same store; e.g. `retune embed labels.csv --store S --engine ray --workers 2` on this machine,
    or `--address auto` on a node of a running cluster (image paths and S on a shared filesystem).

    Example: retune embed labels.csv --store retune-store --max-pixels 40000000
    """
    from retune.backbones.registry import create_backbone, resolve_spec
    from retune.data.images import DecodeLimits
    from retune.data.readers import read_table
    from retune.store import EmbeddingStore, embed_table

    resolve_spec(backbone)  # an unknown name fails before the CSV is read
    encoder = None
    if check_engine(engine, address) == "ray":
        from retune.distributed.ray_embed import ray_encoder

        encoder, device = ray_encoder(address, workers), device or "cpu"  # the driver only hashes and writes
    table = read_table(
        csv_path, data_format, image_root=image_root, metadata_csv=metadata_csv, allow_outside_root=allow_outside_root
    )
    model = create_backbone(backbone, device=device)
    limits = DecodeLimits(max_bytes=int(max_file_mb * 2**20), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    announce_store(store)
    summary = embed_table(
        table,
        model,
        EmbeddingStore(store),
        batch_size=batch_size,
        workers=workers,
        tokens=tokens,
        show_progress=progress_shown(quiet),
        limits=limits,
        encoder=encoder,
    )
    for path, reason in summary.errors.itertuples(index=False):
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    console.print(escape(f"backbone {model.spec} ({model.fingerprint}): {summary.line()}"), highlight=False)
    if len(summary.errors):
        raise typer.Exit(1)


@store_app.command("info", epilog=examples("retune store info stores/nih", "retune store info stores/nih --json"))
@friendly_errors
def store_info(
    store: Path = typer.Argument(..., help="Store folder."), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show what a store holds: backbones, rows per kind, size on disk."""
    from retune.store import EmbeddingStore

    summary = EmbeddingStore(store, create=False).summary()
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    from retune.store.store import KINDS

    table = Table("fingerprint", "backbone", *KINDS)
    for fingerprint, rows in summary["rows"].items():
        spec = summary["backbones"].get(fingerprint, {}).get("spec", "?")
        table.add_row(fingerprint, escape(spec), *(str(rows.get(kind, 0)) for kind in KINDS))
    console.print(table)
    console.print(escape(f"{summary['root']}: {summary['bytes'] / 1e6:.1f} MB on disk (patient-derived data)"))


@store_app.command("purge", epilog=examples("retune store purge stores/nih --yes"))
@friendly_errors
def store_purge(
    store: Path = typer.Argument(..., help="Store folder to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an embedding store and everything in it (embeddings and paths derived from patient images)."""
    from retune.store import purge_store

    if not yes and not typer.confirm(f"Delete {store} and all embeddings in it?"):
        raise typer.Exit(1)
    freed = purge_store(store)
    console.print(escape(f"deleted {store} ({freed / 1e6:.1f} MB)"))


def print_metrics(metrics: dict) -> None:
    """Per-class AUROC table with CIs for RE-tune and every baseline, side by side."""
    methods = {metrics["method"]: metrics, **metrics.get("baselines", {})}
    table = Table("class", "n+", *[f"{name} AUROC [95% CI]" for name in methods], title=f"split: {metrics['split']}")

    too_few = set(metrics.get("too_few_positives", []))
    for name in metrics["classes"]:
        label = name + (" *" if name in too_few else "")
        row = [label, str(metrics["per_class"][name]["n_pos"])]
        row += [
            format_interval(m["per_class"][name]["auroc"], m["per_class"][name]["auroc_ci"]) for m in methods.values()
        ]
        table.add_row(*row)
    counted = ""
    if "n_classes_in_mean" in metrics:
        counted = f" ({metrics['n_classes_in_mean']} classes with >= {metrics['min_positives']} positives)"
    means = [f"[bold]{format_interval(m['mean_auroc'], m['mean_auroc_ci'])}" for m in methods.values()]
    table.add_row(f"[bold]mean{counted}", "", *means)
    console.print(table)
    if too_few:
        console.print(f"* fewer than {metrics['min_positives']} positives: listed, not in the mean", highlight=False)
    if metrics.get("note"):
        console.print(f"[dim]{metrics['note']}[/]")
    for warning in metrics.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


@app.command(
    epilog=examples(
        "retune train --data ../shared/data/nih-cxr14/labels.csv --store stores/nih --out runs/nih",
        "retune train --data ../shared/data/nih-cxr14/labels.csv --out runs/clip --objective clip --lr 1e-3",
    )
)
@friendly_errors
def train(
    data: Path | None = typer.Option(
        None, help="Label CSV to train on (default: data.csv of --config; one of the two is needed)."
    ),
    out: Path = typer.Option(
        ..., help="Run directory: checkpoint.safetensors, config.json, metrics.json, roc_curves.png."
    ),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    config: Path | None = typer.Option(
        None,
        help="YAML with any TrainConfig fields (retune.adaptor, retune.optim, split, baselines...); "
        "default: built-in defaults.",
    ),
    store: Path | None = typer.Option(None, help="Embedding store folder (default: retune-store)."),
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    data_format: str | None = typer.Option(
        None, "--format", help="CSV format: auto, csv, chexpert, nih, mimic (default: auto)."
    ),
    metadata_csv: Path | None = METADATA_CSV,
    prompts: str | None = typer.Option(None, help="Prompt set: manual, template, or a YAML file (default: manual)."),
    objective: str | None = typer.Option(
        None,
        help="RE-tune loss: bce (the paper; default), clip (InfoNCE on label-defined image-prompt pairs) or siglip.",
    ),
    seed: int | None = typer.Option(None, help="Seed for training and the patient split (default: 0)."),
    min_positives: int | None = MIN_POSITIVES,
    epochs: int | None = typer.Option(
        None, help="Maximum training epochs of RE-tune and its baselines (default 300, early stopping on validation)."
    ),
    lr: float | None = typer.Option(None, help="Learning rate (default 3e-4)."),
    quiet: bool = QUIET,
    device: str | None = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Train RE-tune and its baselines on cached embeddings; evaluate on a patient-level test split (70/10/20).

    Images are embedded once into the store first (skipped when already there).
    """
    from retune.api import train as train_api
    from retune.config import TrainConfig, load_yaml_config, override

    settings = load_yaml_config(config, TrainConfig) if config else TrainConfig()
    settings = override(
        settings,
        {
            "backbone": backbone,
            "store": store,
            "device": device,
            "seed": seed,
            "split": {"seed": seed},
            "min_positives": min_positives,
            "data": {
                "csv": data,
                "image_root": image_root,
                "format": data_format,
                "metadata_csv": metadata_csv,
                "allow_outside_root": allow_outside_root or None,
            },
        },
    )
    settings.retune = override(
        settings.retune, {"prompts": prompts, "objective": objective, "optim": {"epochs": epochs, "lr": lr}}
    )
    announce_store(settings.store)
    metrics = train_api(settings, out, show_progress=progress_shown(quiet)).metrics
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(metrics)
        saved = f"run saved to {out} (report.html, RUN_CARD.md; MLflow: retune ui {out})"
        console.print(escape(saved), highlight=False)


@app.command(
    epilog=examples(
        "retune evaluate --run runs/nih --data ../shared/data/nih-cxr14/labels.csv            # its test split",
        "retune evaluate --run runs/nih --data other_site.csv --exclude-overlap --json",
    )
)
@friendly_errors
def evaluate(
    run: Path = typer.Option(..., help="Run directory made by `retune train` or `retune peft run`."),
    data: Path = typer.Option(..., help="Label CSV to evaluate on."),
    split: str = typer.Option(
        "auto", help="all, train, val, test; auto = test for the training CSV, all for another CSV."
    ),
    store: Path | None = typer.Option(None, help="Embedding store (default: the one the run was trained with)."),
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    n_bootstrap: int = typer.Option(1000, min=0, help="Patient bootstrap replicates for the CIs."),
    min_positives: int = typer.Option(
        10,
        "--min-positives",
        min=1,
        help="The mean covers only classes with at least this many positive images; the rest are listed and marked.",
    ),
    exclude_overlap: bool = typer.Option(
        False,
        "--exclude-overlap",
        help="Drop images the run trained or validated on (matched by content) from the metrics.",
    ),
    cache: bool = typer.Option(
        False, "--cache", help="Add new images' embeddings to the store (default: keep them in memory only)."
    ),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON to stdout."),
) -> None:
    """Evaluate a trained run (RE-tune and baselines, or a PEFT run): per-class AUROC/AUPRC, patient-bootstrap CIs.

    Evaluation images that are (by content, even under another name) training or validation images of the run are
    counted and warned about loudly, and recorded under "overlap" in the JSON; --exclude-overlap leaves them out.
    """
    from retune.api import load_run

    metrics = load_run(run, store=store, cache=cache).evaluate(
        data,
        split=split,
        image_root=image_root,
        n_bootstrap=n_bootstrap,
        show_progress=progress_shown(quiet),
        exclude_overlap=exclude_overlap,
        min_positives=min_positives,
        allow_outside_root=allow_outside_root,
    )
    if as_json:
        print(json.dumps(metrics, indent=2))
        for warning in metrics.get("warnings", []):
            err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    else:
        print_metrics(metrics)


OUTPUT_FORMATS = (".csv", ".json", ".parquet")


@app.command(
    epilog=examples(
        "retune predict --run runs/nih image1.png image2.dcm",
        "retune predict --run runs/nih scans/*.png --output predictions.parquet",
    )
)
@friendly_errors
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM)."),
    run: Path = typer.Option(..., help="Run directory made by `retune train` or `retune peft run`."),
    store: Path | None = typer.Option(None, help="Embedding store (default: the run's)."),
    method: str | None = typer.Option(
        None, help="Which of the run's methods predicts (default: its main one, e.g. retune or peft-lora)."
    ),
    output: Path | None = typer.Option(
        None,
        help="Also write the probabilities to a .csv, .json or .parquet file (the extension decides; "
        "default: print only).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the probabilities as JSON to stdout instead of a table."
    ),
    cache: bool = typer.Option(
        False, "--cache", help="Add new images' embeddings to the store (default: keep them in memory only)."
    ),
) -> None:
    """Per-class probabilities for new images; unreadable images are reported and skipped (exit code 1).

    New images are embedded in memory and forgotten; nothing is added to the store unless --cache.
    """
    from retune.api import load_run
    from retune.errors import ConfigError

    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(
            f"--output {output}: unknown extension '{output.suffix}'; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    frame = load_run(run, store=store, cache=cache).predict(images, method=method)
    errors = frame.attrs["unreadable"]
    for path, reason in errors:
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    if as_json:
        print(json.dumps(prediction_records(frame), indent=2))
    else:
        print_predictions(frame)
    if output is not None:
        write_predictions(frame, output)
        err_console.print(escape(f"wrote {output}"), highlight=False)
    if len(errors):
        raise typer.Exit(1)


def prediction_records(frame) -> list[dict]:
    """One {"image": path, "probabilities": {class: p}} per row, full precision (for --json and .json files)."""
    return [
        {"image": row[0], "probabilities": {name: float(value) for name, value in zip(frame.columns[1:], row[1:])}}
        for row in frame.itertuples(index=False)
    ]


def write_predictions(frame, output: Path) -> None:
    """Write the probabilities in the format the extension names (full precision), atomically."""
    from retune.io_utils import atomic_path

    suffix = output.suffix.lower()
    with atomic_path(output) as temp:
        if suffix == ".parquet":
            frame.to_parquet(temp, index=False)
        elif suffix == ".json":
            temp.write_text(json.dumps(prediction_records(frame), indent=2) + "\n")
        else:
            frame.to_csv(temp, index=False)


def shorten_left(text: str, width: int) -> str:
    """``text`` cut from the left to ``width`` characters (file names differ at their end)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def print_predictions(frame) -> None:
    """A table that stays readable at 80 columns: images as rows when the findings fit, findings as rows otherwise."""
    names = [shorten_left(Path(path).name, 24) for path in frame["image"]]
    classes = list(frame.columns[1:])
    needed = max(map(len, ["image", *names])) + 4 + sum(max(len(name), 5) + 3 for name in classes)
    if needed <= console.width:
        table = Table("image", *classes)
        for name, row in zip(names, frame.itertuples(index=False)):
            table.add_row(escape(name), *(f"{value:.3f}" for value in row[1:]))
        console.print(table)
        return
    label_width = max(map(len, ["finding", *classes])) + 4
    short = [shorten_left(name, 12) for name in names]
    per_table = max(
        1, (console.width - label_width) // (max(map(len, short)) + 3)
    )  # image columns that fit beside the names
    for start in range(0, len(names), per_table):
        table = Table("finding", *(escape(name) for name in short[start : start + per_table]))
        for name in classes:
            table.add_row(escape(name), *(f"{value:.3f}" for value in frame[name].iloc[start : start + per_table]))
        console.print(table)


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
        ...,
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

    Example: `retune serve runs/nih results/nih-class`, then open http://127.0.0.1:8000/ or
    `curl -F images=@chest.png http://127.0.0.1:8000/v1/runs/nih/predict`.
    """
    from retune.config import override
    from retune.server import ServeConfig
    from retune.server.app import serve as serve_folders

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


def metric_records(payload: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Every metrics record (a dict with mean_auroc and per_class) inside a metrics.json, with a label."""
    if "mean_auroc" in payload and "per_class" in payload:
        found = [(prefix or payload.get("method", "?"), payload)]
    else:
        found = []
    for key, value in payload.items():
        if not isinstance(value, dict) or key == "per_class":
            continue
        if key == "baselines":  # baseline records are labelled by their own method name
            found += metric_records(value)
        else:
            label = value.get("method", key) if "mean_auroc" in value else key
            found += metric_records(value, f"{prefix}/{label}" if prefix else label)
    return found


def flat_settings(payload: dict, prefix: str = "") -> dict[str, str]:
    """Nested config values as ``a.b.c -> text`` (lists and scalars as text)."""
    flat = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return flat


def run_settings(run: Path) -> dict[str, str]:
    """What decides a run's results, flattened: its training config, backbone and methods (from config.json)."""
    config = (run if run.is_dir() else run.parent) / "config.json"
    if not config.exists():
        return {}
    facts = json.loads(config.read_text())
    settings = flat_settings(facts.get("train_config", {}))
    settings["backbone.fingerprint"] = str(facts.get("backbone", {}).get("fingerprint", ""))
    settings["methods"] = ", ".join(facts.get("methods", {}))
    if "tuning" in facts:
        settings.update(flat_settings(facts["tuning"], "tuning."))
    return settings


def print_setting_differences(runs: list[Path]) -> None:
    """Only the settings whose values differ between the runs (objective, method, backbone, options...)."""
    settings = [run_settings(run) for run in runs]
    keys = sorted({key for one in settings for key in one})
    differing = [key for key in keys if len({one.get(key, "-") for one in settings}) > 1]
    if not differing:
        console.print("[dim]the runs' recorded settings are identical[/]")
        return
    table = Table("setting that differs", *(escape(shorten_left(str(run), 28)) for run in runs), title="settings")
    for key in differing:
        table.add_row(escape(key), *(escape(one.get(key, "-")) for one in settings))
    console.print(table)


@app.command(
    epilog=examples(
        "retune compare runs/bce runs/clip",
        "retune compare runs/bce runs/clip --data ../shared/data/nih-cxr14/labels.csv   # paired AUROC difference",
    )
)
@friendly_errors
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories (or metrics.json files) of any method: train, adaptor, peft."
    ),
    data: Path | None = typer.Option(
        None,
        help="Label CSV for a paired comparison of exactly two runs on the same images (default: side by side only).",
    ),
    split: str = typer.Option(
        "auto", help="With --data: all, train, val, test; auto = test for the first run's training CSV, else all."
    ),
    n_bootstrap: int = typer.Option(
        1000, min=0, help="With --data: patient bootstrap replicates for the CI of the difference."
    ),
    as_json: bool = typer.Option(False, "--json", help="With --data: print the paired comparison as JSON."),
) -> None:
    """Put runs side by side: mean AUROC with CI and the settings that differ; with --data, is A better than B?

    The paired comparison scores both runs' main methods on the same images (images either run trained on are left
    out) and gives the AUROC difference A - B with a patient-bootstrap CI: a CI excluding 0 means a real difference.
    """
    from retune.errors import ConfigError

    for run in runs:
        path = run / "metrics.json" if run.is_dir() else run
        if not run.exists():
            raise ConfigError(f"{run}: does not exist")
        if run.is_dir() and not path.exists() and any(run.glob("*/results.json")):
            raise ConfigError(f"{run} is a scenario output folder; use `retune scenario compare {run}`")
        if not path.exists():
            raise ConfigError(f"{path}: no metrics.json here")
    if data is not None:
        if len(runs) != 2:
            raise ConfigError(f"--data compares exactly two runs (got {len(runs)})")
        from retune.experiments.inference import paired_comparison

        result = paired_comparison(
            runs[0], runs[1], data, split=split, n_bootstrap=n_bootstrap, show_progress=progress_shown(False)
        )
        if as_json:
            print(json.dumps(result, indent=2))
            return
        print_paired(result)
        return
    table = Table("run", "method", "split", "backbone", "mean AUROC [95% CI]", "n images")
    for run in runs:
        path = run / "metrics.json" if run.is_dir() else run
        for label, record in metric_records(json.loads(path.read_text())):
            table.add_row(
                escape(str(run)),
                escape(label),
                str(record.get("split", "")),
                escape(str(record.get("backbone", ""))),
                format_interval(record.get("mean_auroc"), record.get("mean_auroc_ci")),
                str(record.get("n_images", "")),
            )
    console.print(table)
    if len(runs) > 1:
        print_setting_differences(runs)


def print_paired(result: dict) -> None:
    """Per-class and mean AUROC difference A - B with paired CIs."""
    console.print(
        escape(
            f"A = {result['run_a']} ({result['method_a']})\nB = {result['run_b']} ({result['method_b']})\n"
            f"{result['n_images']} images of {result['n_patients']} patients ({result['split']} split)"
        ),
        highlight=False,
    )
    table = Table("class", "AUROC A - B [95% CI]")
    for name, record in result["per_class"].items():
        table.add_row(escape(name), format_interval(record["difference"], record["difference_ci"]))
    table.add_row(
        f"[bold]mean ({len(result['classes'])} classes)",
        "[bold]" + format_interval(result["difference"], result["difference_ci"]),
    )
    console.print(table)
    console.print(
        escape(
            f"mean AUROC A {format_interval(result['mean_auroc_a'], None)}, "
            f"B {format_interval(result['mean_auroc_b'], None)}; "
            "a CI that excludes 0 means a difference beyond resampling noise"
        ),
        highlight=False,
    )
    for run, count in result["excluded_training_overlap"].items():
        if count:
            err_console.print(
                f"[yellow]warning:[/] {escape(f'{count} images left out: {run} trained or validated on them')}",
                highlight=False,
            )


def rounded(payload, digits: int = 3):
    """``payload`` with every float rounded to ``digits`` decimals (for numbers inside human-readable lines)."""
    if isinstance(payload, float):
        return round(payload, digits)
    if isinstance(payload, dict):
        return {key: rounded(value, digits) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [rounded(value, digits) for value in payload]
    return payload


@app.command(epilog=examples("retune ui runs/nih", "retune ui results/nih-class --port 5001"))
@friendly_errors
def ui(
    folder: Path = typer.Argument(
        ..., help="A run or scenario output folder (uses its mlruns/), or an mlruns folder itself."
    ),
    port: int = typer.Option(5000, min=1, max=65535, help="Port of the web UI."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind; the runs hold patient-derived metrics, so keep it local."
    ),
) -> None:
    """Browse a folder's MLflow runs (settings, per-class AUROC with CIs, curves, plots, report) in the MLflow UI.

    The same as `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file://FOLDER/mlruns --host 127.0.0.1`.
    """
    import os
    import subprocess

    from retune.errors import ConfigError

    store = folder / "mlruns" if (folder / "mlruns").is_dir() else folder
    if not store.is_dir():
        raise ConfigError(f"{store}: does not exist (expected a run folder with mlruns/ or an mlruns folder)")
    if not any(store.glob("*/meta.yaml")):
        raise ConfigError(
            f"{store}: not an MLflow file store (no experiment folders with meta.yaml); "
            "pass a run folder made by retune"
        )
    try:
        import mlflow.server  # noqa: F401  (absent with mlflow-skinny)
    except ImportError as error:
        raise ConfigError(f"the MLflow UI needs the full mlflow package ({error}); pip install mlflow") from None
    err_console.print(
        escape(f"MLflow UI for {store.resolve()} on http://{host}:{port} (Ctrl-C stops it)"), highlight=False
    )
    environment = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store.resolve().as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    raise typer.Exit(subprocess.call(command, env=environment))


def _comma_list(text: str | None, kind: type) -> list | None:
    """'a,b,c' -> [a, b, c] converted by ``kind``; None stays None (option not given)."""
    from retune.errors import ConfigError

    if text is None:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ConfigError(f"cannot read '{text}' as a comma-separated list of {kind.__name__}") from error


scenario_app = typer.Typer(
    help="Exemplar-free incremental learning: run a scenario, compare results.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(scenario_app, name="scenario")


def print_comparison(results: dict[str, dict], markdown: bool = False) -> None:
    """The side-by-side table of final mean AUROC, forgetting and BWT with CIs (rich, or Markdown for a README)."""
    from retune.report.scenario_report import classes_in_means, comparison_header, comparison_rows, per_task_rows

    first = next(iter(results.values()))
    if markdown:
        print(f"{first['scenario']} ({first.get('kind')}-incremental, {len(first['tasks'])} tasks, "
              f"{first['n_test_images']} test images); {classes_in_means(first)}\n")
        for header, rows in ((comparison_header(results), comparison_rows(results)), per_task_rows(results)):
            lines = [header, ["---"] * len(header), *rows]
            print("\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n")
        return
    header = comparison_header(results)
    table = Table(
        title=f"scenario {first['scenario']} ({first.get('kind')}-incremental, {len(first['tasks'])} tasks, "
        f"{first['n_test_images']} test images)"
    )
    table.add_column(header[0], no_wrap=True)
    for name in header[1:]:
        table.add_column(name)
    for row in comparison_rows(results):
        table.add_row(*row)
    console.print(table)
    console.print(escape(classes_in_means(first)), highlight=False)
    header, rows = per_task_rows(results)
    curve = Table(*header, title="mean AUROC after each task (mean ± sd over runs)")
    for row in rows:
        curve.add_row(*row)
    console.print(curve)
    if first.get("note"):
        console.print(f"[dim]{first['note']}[/]")


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
    from retune.report.tracking import default_tracking_uri

    sweep = None  # the local engine, with progress bars when shown
    if check_engine(engine, address) == "ray":
        from retune.distributed.ray_sweep import ray_sweep

        sweep = ray_sweep(address)
    announce_store(settings.store)
    results = run_scenario(
        settings,
        out,
        show_progress=progress_shown(quiet),
        track=track,
        engine=sweep,
        restart=restart,
        progress=(lambda message: None)
        if quiet
        else lambda message: err_console.print(f"[dim]{escape(message)}[/]", highlight=False),
    )
    print_comparison(results)
    if track:
        console.print(
            escape(f"MLflow: {settings.tracking_uri or default_tracking_uri(out)} (browse: retune ui {out})"),
            highlight=False,
        )
    console.print(escape(f"report: {out / 'report.html'}"), highlight=False)
    return results


@scenario_app.command(
    "run",
    epilog=examples(
        "retune scenario run configs/nih-class-incremental.yaml --out results/nih-class",
        "retune scenario run configs/nih-data-incremental.yaml --out results/quick --methods retune,naive",
    ),
)
@friendly_errors
def scenario_run(
    config: Path = typer.Argument(
        ..., help="Scenario YAML (tasks, or generate: {kind: class|label|data, n_tasks: N})."
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
    Example: retune scenario run configs/nih-class-incremental.yaml --out results/nih-class --orders 0,1,2,3,4
    Means cover classes with >= --min-positives (default 10) test positives; mean ± sd is over (order, seed) runs.
    """
    from retune.config import load_yaml_config, override
    from retune.scenarios.spec import ScenarioConfig

    check_engine(engine, address)
    settings = load_yaml_config(config, ScenarioConfig)
    settings = override(settings, {"store": store, "tracking_uri": tracking_uri, "min_positives": min_positives,
                                   "methods": _comma_list(methods, str), "orders": _comma_list(orders, int),
                                   "seeds": _comma_list(seeds, int), "data": {"csv": data}})
    execute_scenario(settings, out, restart=restart, engine=engine, address=address, quiet=quiet)


@scenario_app.command("compare", epilog=examples("retune scenario compare results/nih-class results/nih-data"))
@friendly_errors
def scenario_compare(
    directories: list[Path] = typer.Argument(..., help="Scenario output folders."),
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


@scenario_app.command(
    "evaluate",
    epilog=examples(
        "retune scenario evaluate results/nih-class --data site-b/labels.csv",
        "retune scenario evaluate results/nih-class --data site-b/labels.csv --min-positives 5 --json",
    ),
)
@friendly_errors
def scenario_evaluate(
    results: Path = typer.Argument(..., help="A finished `retune scenario run` output folder."),
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

    Writes RESULTS/external-<csv>.json. Example: retune scenario evaluate results/nih-class --data site-b/labels.csv
    Images or patients the scenario trained or validated on are counted and warned about.
    """
    from retune.scenarios.external import evaluate_scenario

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
    several = any(len(m["runs"]) > 1 for m in payload["methods"].values())
    title = (
        f"scenario {payload['scenario']} final models on {payload['csv']} "
        f"({payload['n_images']} images, {payload['n_patients']} patients)"
    )
    columns = ["method", "mean AUROC [95% CI] (first run)", "classes in mean"]
    table = Table(*columns, *(["mean ± sd over runs"] if several else []), title=title)
    for name, record in payload["methods"].items():
        value, interval = record["mean_auroc"], record["mean_auroc_ci"]
        shown = "undefined" if value is None else f"{value:.3f}"
        if value is not None and interval:
            shown += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
        over = record["mean_auroc_over_runs"]
        spread = f"{over['mean']:.3f} ± {over['std']:.3f} (n={over['n']})" if over["mean"] is not None else "undefined"
        label = name + ("" if record["exemplar_free"] else " (not exemplar-free)")
        table.add_row(label, shown, str(record["n_classes_in_mean"]), *([spread] if several else []))
    console.print(table)
    left_out = next(iter(payload["methods"].values()))["too_few_positives"]
    if left_out:
        console.print(
            escape(f"too few positives (< {payload['min_positives']}), not in the means: {', '.join(left_out)}"),
            highlight=False,
        )
    if payload["note"]:
        console.print(f"[dim]{payload['note']}[/]")
    for warning in payload["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


adaptor_app = typer.Typer(
    help="The Adaptor framework: a cross-attention adaptor pre-trained on cached image and text tokens.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(adaptor_app, name="adaptor")


@adaptor_app.command(
    "run",
    epilog=examples(
        "retune adaptor run --data ../shared/data/nih-cxr14/labels.csv --store stores/nih --out runs/adaptor",
        "retune adaptor run --data ../shared/data/nih-cxr14/labels.csv --out runs/siglip --loss siglip --epochs 20",
    ),
)
@friendly_errors
def adaptor_run(
    out: Path = typer.Option(
        ..., help="Run directory: metrics.json (retrieval R@K, probes at each label fraction), checkpoint.safetensors."
    ),
    config: Path | None = typer.Option(
        None,
        help="YAML with AdaptorExperimentConfig fields (layers, heads, width, loss, label_fractions...); "
        "default: built-in defaults.",
    ),
    data: Path | None = typer.Option(
        None,
        help="Label CSV (default: data.csv of --config); its `report` column gives the texts, "
        "else sentences are built from the labels.",
    ),
    loss: str | None = typer.Option(None, help="Contrastive objective: clip (InfoNCE; default) or siglip (sigmoid)."),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    store: Path | None = typer.Option(
        None, help="Embedding store folder, token embeddings are cached there (default: retune-store)."
    ),
    epochs: int | None = typer.Option(None, min=1, help="Pre-training epochs (default: 60)."),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Pre-train the Adaptor contrastively from cached tokens, then report retrieval R@1/5/10 and probes with
    1/10/100% of the labels."""
    from retune.config import AdaptorExperimentConfig, load_yaml_config, override
    from retune.experiments.adaptor import run_adaptor_experiment

    settings = load_yaml_config(config, AdaptorExperimentConfig) if config else AdaptorExperimentConfig()
    settings = override(
        settings,
        {"loss": loss, "backbone": backbone, "store": store, "data": {"csv": data}, "optim": {"epochs": epochs}},
    )
    announce_store(settings.store)
    metrics = run_adaptor_experiment(settings, out, show_progress=progress_shown(quiet))
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    retrieval = metrics["retrieval"]["adaptor"]
    console.print(escape(f"retrieval (test split, adaptor): {json.dumps(rounded(retrieval))}"), highlight=False)
    table = Table("labels", "adaptor + probe: mean AUROC [95% CI]", "frozen + probe: mean AUROC [95% CI]")
    for fraction, records in metrics["label_fractions"].items():
        table.add_row(
            f"{float(fraction):.0%}",
            *(
                format_interval(records[name].get("mean_auroc"), records[name].get("mean_auroc_ci"))
                for name in ("adaptor", "frozen")
            ),
        )
    console.print(table)
    if metrics.get("note"):
        console.print(f"[dim]{escape(metrics['note'])}[/]")


peft_app = typer.Typer(
    help="Tune the encoders themselves: LoRA, IA3, prefix (text) or visual prompt (ViT image) tuning, "
    "or freezing the first k blocks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(peft_app, name="peft")


@peft_app.command(
    "run",
    epilog=examples(
        "retune peft run --data ../shared/data/nih-cxr14/labels.csv --store stores/nih --out runs/lora --method lora",
        "retune peft run --data ../shared/data/nih-cxr14/labels.csv --out runs/f6 --method freeze --freeze-blocks 6",
    ),
)
@friendly_errors
def peft_run(
    out: Path = typer.Option(
        ...,
        help="Run directory: metrics.json (with trainable parameters and peak memory), checkpoint.safetensors, "
        "config.json.",
    ),
    config: Path | None = typer.Option(
        None, help="YAML with PeftExperimentConfig fields (default: built-in defaults)."
    ),
    data: Path | None = typer.Option(None, help="Label CSV (default: data.csv of --config)."),
    method: str | None = typer.Option(
        None,
        help="lora (default), ia3, prefix (text tower), prompt (visual prompt tokens, ViT image towers) or freeze.",
    ),
    tower: str | None = typer.Option(None, help="Tower to tune: image (default), text or both."),
    freeze_blocks: float | None = typer.Option(
        None,
        help="Freeze the first k blocks (int) or a fraction of them; frozen image blocks are cached in the store "
        "(default: 0).",
    ),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    store: Path | None = typer.Option(None, help="Embedding store folder (default: retune-store)."),
    epochs: int | None = typer.Option(
        None, min=1, help="Training epochs; images pass through the tuned encoder every epoch (default: 2)."
    ),
    lr: float | None = typer.Option(
        None, help="Learning rate (default: 1e-3 for adapters and prompts, 1e-4 for freeze)."
    ),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
    nproc: int | None = typer.Option(
        None,
        min=1,
        help="Train with N processes (PyTorch DDP: gloo on CPU, nccl with one GPU each) through torchrun on this "
        "machine; batch size is per process. Same as `torchrun --nproc_per_node N -m retune.cli peft run ...` "
        "(default: one process).",
    ),
) -> None:
    """Train PEFT adapters (or the unfrozen top blocks) under the RE-tune head and evaluate like `retune train`."""
    from retune.config import PeftExperimentConfig, load_yaml_config, override
    from retune.distributed.ddp import drop_option, launch
    from retune.experiments.peft import run_peft_experiment

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch(nproc, drop_option(sys.argv[1:], "--nproc")))

    settings = load_yaml_config(config, PeftExperimentConfig) if config else PeftExperimentConfig()
    settings = override(
        settings,
        {
            "method": method,
            "tower": tower,
            "freeze_blocks": freeze_blocks,
            "backbone": backbone,
            "store": store,
            "epochs": epochs,
            "lr": lr,
            "data": {"csv": data},
        },
    )
    announce_store(settings.store)
    metrics = run_peft_experiment(settings, out, show_progress=progress_shown(quiet))
    if not metrics:  # a DDP process other than rank 0: rank 0 reports
        return
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    print_metrics(metrics)
    console.print(
        f"trainable parameters: {metrics['trainable_parameters']:,} ({metrics['trainable_percent']:.2f}%), peak "
        f"memory {metrics['peak_memory_mb']:.0f} MB ({metrics['peak_memory_source']})",
        highlight=False,
    )


@app.command(
    epilog=examples(
        "retune tune search.yaml --out tuned --trials 16",
        "retune train --config tuned/best.yaml --out runs/tuned   # train with the best configuration",
    )
)
@friendly_errors
def tune(
    config: Path = typer.Argument(
        ..., help="YAML: a `retune train` config plus search (ranges/choices), trials, searcher, scheduler."
    ),
    out: Path = typer.Option(
        ..., help="Output folder: best.yaml (a `retune train --config` file), trials.csv, search.json."
    ),
    data: Path | None = typer.Option(None, help="Label CSV (default: data.csv of the YAML)."),
    trials: int | None = typer.Option(None, min=1, help="Configurations to try (overrides the YAML; default 8)."),
    address: str | None = ADDRESS,
) -> None:
    """Search RE-tune's learning rate, weight decay, input dropout, adaptor width and epochs with Ray Tune.

    Optuna proposes configurations, ASHA stops trials whose validation mean AUROC lags; trials train on cached
    embeddings and are scored on the validation split only (the test split never reaches them). Example:
    `retune tune search.yaml --out tuned && retune train --config tuned/best.yaml --out run`.
    """
    from retune.config import load_yaml_config, override
    from retune.distributed.ray_tune import TuneConfig, tune_run

    settings = override(load_yaml_config(config, TuneConfig), {"trials": trials, "data": {"csv": data}})
    summary = tune_run(settings, out, address=address, show_progress=sys.stderr.isatty())
    best = f"validation mean AUROC {summary['best_val_mean_auroc']:.3f} with {summary['best_params']}"
    console.print(escape(f"best of {summary['trials']} trials: {best}"), highlight=False)
    if summary["failed_trials"]:
        failed = f"{summary['failed_trials']} trials failed (see {escape(str(out / 'ray'))})"
        err_console.print(f"[yellow]warning:[/] {failed}")
    console.print(escape(f"config: {out / 'best.yaml'} (chosen on validation only)"), highlight=False)


@app.command(
    epilog=examples(
        "retune demo",
        "retune demo --data ../shared/data/nih-cxr14/labels.csv --store stores/nih --out results/nih-demo",
    )
)
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for the data, the store, the results and report.html."),
    data: Path | None = typer.Option(
        None,
        help="Your label CSV instead of synthetic phantoms (default: 400 phantoms made in OUT), "
        "e.g. ../shared/data/nih-cxr14/labels.csv.",
    ),
    n_images: int = typer.Option(400, min=40, help="Synthetic phantoms to generate (ignored with --data)."),
    n_tasks: int = typer.Option(3, min=1, help="Class-incremental tasks."),
    store: Path | None = typer.Option(
        None,
        help="Embedding store to reuse (default: OUT/store); with --data, pass the store you embedded that CSV into.",
    ),
    quiet: bool = QUIET,
    device: str | None = DEVICE,
) -> None:
    """The main job, offline: a class-incremental scenario with every method on the default backbone.

    Without --data it runs on synthetic chest phantoms (made here, seeded); prints the comparison table
    and writes OUT/report.html.
    """
    from retune.config import DataConfig
    from retune.data.phantoms import write_phantom_dataset
    from retune.scenarios.spec import GeneratorSpec, ScenarioConfig

    csv_path = data if data is not None else write_phantom_dataset(out / "phantoms", n=n_images, seed=0)
    settings = ScenarioConfig(
        name="demo-phantoms" if data is None else f"demo-{csv_path.stem}",
        store=store or out / "store",
        data=DataConfig(csv=csv_path),
        generate=GeneratorSpec(kind="class", n_tasks=n_tasks),
        device=device,
    )
    execute_scenario(settings, out, restart=True, quiet=quiet)  # a demo always starts over (its inputs may differ)


if __name__ == "__main__":
    app()
