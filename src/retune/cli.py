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

app = typer.Typer(
    help=(
        "Adapt frozen medical vision-language models with small adaptors.\n\n"
        "Typical flow: `retune embed labels.csv --store S` (each image through the frozen encoders "
        "once), then `retune train`, `retune evaluate`, `retune predict`, or `retune scenario run` for "
        "exemplar-free incremental learning. `retune demo` runs everything offline on synthetic phantoms."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(
    help="Inspect or delete an embedding store (it holds patient-derived data).", no_args_is_help=True
)
app.add_typer(store_app, name="store")

console = Console()
err_console = Console(stderr=True)


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


@app.command()
@friendly_errors
def methods() -> None:
    """List the registered methods, whether each is exemplar-free, and the scenario kinds it runs in."""
    from retune.methods.registry import available_methods

    table = Table("name", "exemplar-free", "scenario kinds", "description")
    for name, cls in available_methods().items():
        kinds = ", ".join(sorted(cls.scenario_kinds))
        table.add_row(name, "yes" if cls.exemplar_free else "no (stores data)", kinds, cls.description)
    console.print(table)


@app.command()
@friendly_errors
def backbones() -> None:
    """List the backbone families and aliases you can pass to --backbone."""
    from retune.backbones.registry import list_backbones

    table = Table("name", "aligned", "example spec", "description")
    for name, info in list_backbones():
        table.add_row(name, "yes" if info.aligned else "no", info.example, info.description)
    console.print(table)


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
    None, help="--format mimic only: mimic-cxr-2.0.0-metadata.csv (which images belong to each labelled study)."
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


@app.command()
@friendly_errors
def embed(
    csv_path: Path = CSV_ARGUMENT,
    backbone: str = BACKBONE,
    store: Path = STORE,
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    data_format: str = DATA_FORMAT,
    metadata_csv: Path | None = METADATA_CSV,
    batch_size: int = typer.Option(32, min=1, help="Images per encoder call."),
    workers: int | None = typer.Option(
        None,
        min=0,
        help="local: DataLoader decoding workers (default: cores - 1); "
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
    table = read_table(csv_path, data_format, image_root=image_root, metadata_csv=metadata_csv,
                       allow_outside_root=allow_outside_root)
    model = create_backbone(backbone, device=device)
    limits = DecodeLimits(max_bytes=int(max_file_mb * 2**20), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    summary = embed_table(
        table,
        model,
        EmbeddingStore(store),
        batch_size=batch_size,
        workers=workers,
        tokens=tokens,
        show_progress=sys.stderr.isatty(),
        limits=limits,
        encoder=encoder,
    )
    for path, reason in summary.errors.itertuples(index=False):
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    console.print(escape(f"backbone {model.spec} ({model.fingerprint}): {summary.line()}"), highlight=False)
    if len(summary.errors):
        raise typer.Exit(1)


@store_app.command("info")
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


@store_app.command("purge")
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

    from retune.report.text import format_interval as cell

    too_few = set(metrics.get("too_few_positives", []))
    for name in metrics["classes"]:
        label = name + (" *" if name in too_few else "")
        row = [label, str(metrics["per_class"][name]["n_pos"])]
        row += [cell(m["per_class"][name]["auroc"], m["per_class"][name]["auroc_ci"]) for m in methods.values()]
        table.add_row(*row)
    counted = ""
    if "n_classes_in_mean" in metrics:
        counted = f" ({metrics['n_classes_in_mean']} classes with >= {metrics['min_positives']} positives)"
    means = [f"[bold]{cell(m['mean_auroc'], m['mean_auroc_ci'])}" for m in methods.values()]
    table.add_row(f"[bold]mean{counted}", "", *means)
    console.print(table)
    if too_few:
        console.print(f"* fewer than {metrics['min_positives']} positives: listed, not in the mean", highlight=False)
    if metrics.get("note"):
        console.print(f"[dim]{metrics['note']}[/]")
    for warning in metrics.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


@app.command()
@friendly_errors
def train(
    data: Path | None = typer.Option(None, help="Label CSV to train on (overrides data.csv of --config)."),
    out: Path = typer.Option(
        ..., help="Run directory: checkpoint.safetensors, config.json, metrics.json, roc_curves.png."
    ),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    config: Path | None = typer.Option(
        None, help="YAML with any TrainConfig fields (retune.adaptor, retune.optim, split, baselines...)."
    ),
    store: Path | None = typer.Option(None, help="Embedding store folder (default: retune-store)."),
    image_root: Path | None = IMAGE_ROOT,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    data_format: str | None = typer.Option(None, "--format", help="CSV format: auto, csv, chexpert, nih, mimic."),
    metadata_csv: Path | None = METADATA_CSV,
    prompts: str | None = typer.Option(None, help="Prompt set: manual, template, or a YAML file."),
    objective: str | None = typer.Option(
        None, help="RE-tune loss: bce (the paper), clip (InfoNCE on label-defined image-prompt pairs) or siglip."
    ),
    seed: int | None = typer.Option(None, help="Seed for training and the patient split."),
    min_positives: int | None = MIN_POSITIVES,
    device: str | None = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Train RE-tune and its baselines on cached embeddings; evaluate on a patient-level test split (70/10/20).

    Images are embedded once into the store first (skipped when already there).
    """
    from retune.config import TrainConfig, load_yaml_config, override
    from retune.experiments.train import train_run

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
    settings.retune = override(settings.retune, {"prompts": prompts, "objective": objective})
    metrics = train_run(settings, out, show_progress=sys.stderr.isatty())
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(metrics)
        console.print(escape(f"run saved to {out}"))


@app.command()
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
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON to stdout."),
) -> None:
    """Evaluate a trained run (RE-tune and its baselines, or a PEFT run) with per-class AUROC/AUPRC and
    patient-bootstrap CIs."""
    from retune.experiments.inference import evaluate_run

    metrics = evaluate_run(
        run,
        data,
        split=split,
        store_dir=store,
        image_root=image_root,
        n_bootstrap=n_bootstrap,
        show_progress=sys.stderr.isatty(),
        min_positives=min_positives,
        allow_outside_root=allow_outside_root,
    )
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(metrics)


@app.command()
@friendly_errors
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM)."),
    run: Path = typer.Option(..., help="Run directory made by `retune train` or `retune peft run`."),
    store: Path | None = typer.Option(None, help="Embedding store (default: the run's)."),
    method: str | None = typer.Option(
        None, help="Which of the run's methods predicts (default: its main one, e.g. retune or peft-lora)."
    ),
    output: Path | None = typer.Option(None, help="Also write the probabilities to this CSV or Parquet file."),
) -> None:
    """Per-class probabilities for new images; unreadable images are reported and skipped (exit code 1)."""
    from retune.experiments.inference import predict_images

    frame, errors = predict_images(run, [str(p) for p in images], store_dir=store, method=method)
    for path, reason in errors.itertuples(index=False):
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    table = Table("image", *frame.columns[1:])
    for row in frame.itertuples(index=False):
        table.add_row(Path(row[0]).name, *(f"{value:.3f}" for value in row[1:]))
    console.print(table)
    if output is not None:
        from retune.io_utils import atomic_path

        with atomic_path(output) as temp:
            frame.to_parquet(temp, index=False) if output.suffix == ".parquet" else frame.to_csv(temp, index=False)
    if len(errors):
        raise typer.Exit(1)


@app.command()
@friendly_errors
def serve(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories made by `retune train` or `retune peft run` (served by folder name)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Any non-loopback address requires --token."),
    port: int = typer.Option(8000, help="TCP port."),
    token: str | None = typer.Option(
        None,
        envvar="RETUNE_TOKEN",
        help="Bearer token (16+ characters) required on every API call and page; or set RETUNE_TOKEN.",
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
    (/runs), and a JSON API under /v1 with local docs at /docs. Each run is loaded once at startup.

    Example: `retune serve runs/nih`, then open http://127.0.0.1:8000/ or
    `curl -F images=@chest.png http://127.0.0.1:8000/v1/runs/nih/predict`.
    """
    from retune.config import override
    from retune.server import ServeConfig
    from retune.server.app import serve as serve_runs

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
    serve_runs(runs, settings, store, announce=lambda line: err_console.print(escape(line), highlight=False))


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


@app.command()
@friendly_errors
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories (or metrics.json files) of any method: train, adaptor, peft."
    ),
) -> None:
    """Put any runs side by side: mean AUROC with CI, split and backbone of every method they hold."""
    from retune.errors import ConfigError

    table = Table("run", "method", "split", "backbone", "mean AUROC [95% CI]", "n images")
    for run in runs:
        path = run / "metrics.json" if run.is_dir() else run
        if not path.exists():
            raise ConfigError(f"{path}: no metrics.json here")
        for label, record in metric_records(json.loads(path.read_text())):
            shown = _mean_cell(record)
            table.add_row(
                escape(str(run)),
                escape(label),
                str(record.get("split", "")),
                escape(str(record.get("backbone", ""))),
                shown,
                str(record.get("n_images", "")),
            )
    console.print(table)


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
    help="Exemplar-free incremental learning: run a scenario, compare results.", no_args_is_help=True
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
    settings, out: Path, track: bool = True, restart: bool = False, engine: str = "local", address: str | None = None
) -> dict:
    """Run a scenario, track it in MLflow, print the comparison (shared by `scenario run` and `demo`)."""
    from retune.report.tracking import log_scenario_results
    from retune.scenarios.runner import run_scenario, run_sequentially

    sweep = run_sequentially
    if check_engine(engine, address) == "ray":
        from retune.distributed.ray_sweep import ray_sweep

        sweep = ray_sweep(address)
    results = run_scenario(
        settings,
        out,
        show_progress=sys.stderr.isatty(),
        engine=sweep,
        progress=lambda message: err_console.print(f"[dim]{escape(message)}[/]", highlight=False),
        restart=restart,
    )
    print_comparison(results)
    if track:
        uri = log_scenario_results(results, out, settings.tracking_uri)
        console.print(escape(f"MLflow: {uri}"), highlight=False)
    console.print(escape(f"report: {out / 'report.html'}"), highlight=False)
    return results


@scenario_app.command("run")
@friendly_errors
def scenario_run(
    config: Path = typer.Argument(
        ..., help="Scenario YAML (tasks, or generate: {kind: class|label|data, n_tasks: N})."
    ),
    out: Path = typer.Option(..., help="Output folder: <method>/results.json, report.html, plots/, mlruns/."),
    data: Path | None = typer.Option(None, help="Label CSV (overrides data.csv of the YAML)."),
    store: Path | None = typer.Option(None, help="Embedding store (overrides the YAML)."),
    methods: str | None = typer.Option(
        None, help="Comma-separated methods (overrides the YAML), e.g. retune,ranpac,naive (`retune methods`)"
    ),
    orders: str | None = typer.Option(
        None, help="Comma-separated class-order / chunking seeds (overrides the YAML), e.g. 0,1,2,3,4."
    ),
    seeds: str | None = typer.Option(
        None, help="Comma-separated training seeds (overrides the YAML); one run per (order, seed)."
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
    execute_scenario(settings, out, restart=restart, engine=engine, address=address)


@scenario_app.command("compare")
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


@scenario_app.command("evaluate")
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
)
app.add_typer(adaptor_app, name="adaptor")


@adaptor_app.command("run")
@friendly_errors
def adaptor_run(
    out: Path = typer.Option(
        ..., help="Run directory: metrics.json (retrieval R@K, probes at each label fraction), checkpoint.safetensors."
    ),
    config: Path | None = typer.Option(
        None, help="YAML with AdaptorExperimentConfig fields (layers, heads, width, loss, label_fractions...)."
    ),
    data: Path | None = typer.Option(
        None, help="Label CSV; its `report` column gives the texts, else sentences are built from the labels."
    ),
    loss: str | None = typer.Option(None, help="Contrastive objective: clip (InfoNCE) or siglip (sigmoid)."),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    store: Path | None = typer.Option(None, help="Embedding store folder (token embeddings are cached there)."),
    epochs: int | None = typer.Option(None, min=1, help="Pre-training epochs."),
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
    metrics = run_adaptor_experiment(settings, out, show_progress=sys.stderr.isatty())
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    retrieval = metrics["retrieval"]["adaptor"]
    console.print(escape(f"retrieval (test split, adaptor): {json.dumps(retrieval)}"), highlight=False)
    table = Table("labels", "adaptor + probe: mean AUROC [95% CI]", "frozen + probe: mean AUROC [95% CI]")
    for fraction, records in metrics["label_fractions"].items():
        table.add_row(f"{float(fraction):.0%}", *(_mean_cell(records[name]) for name in ("adaptor", "frozen")))
    console.print(table)
    if metrics.get("note"):
        console.print(f"[dim]{escape(metrics['note'])}[/]")


def _mean_cell(record: dict) -> str:
    from retune.report.text import format_interval

    return format_interval(record.get("mean_auroc"), record.get("mean_auroc_ci"))


peft_app = typer.Typer(
    help="Tune the encoders themselves: LoRA, IA3, prefix (text) or visual prompt (ViT image) tuning, or freezing the "
         "first k blocks.",
    no_args_is_help=True,
)
app.add_typer(peft_app, name="peft")


@peft_app.command("run")
@friendly_errors
def peft_run(
    out: Path = typer.Option(
        ...,
        help="Run directory: metrics.json (with trainable parameters and peak memory), checkpoint.safetensors, "
             "config.json.",
    ),
    config: Path | None = typer.Option(None, help="YAML with PeftExperimentConfig fields."),
    data: Path | None = typer.Option(None, help="Label CSV (overrides data.csv)."),
    method: str | None = typer.Option(
        None, help="lora, ia3, prefix (text tower), prompt (visual prompt tokens, ViT image towers) or freeze."
    ),
    tower: str | None = typer.Option(None, help="image, text or both."),
    freeze_blocks: float | None = typer.Option(
        None,
        help="Freeze the first k blocks (int) or a fraction of them; frozen image blocks are cached in the store.",
    ),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    store: Path | None = typer.Option(None, help="Embedding store folder."),
    epochs: int | None = typer.Option(
        None, min=1, help="Training epochs (images pass through the tuned encoder every epoch)."
    ),
    lr: float | None = typer.Option(
        None, help="Learning rate (default: 1e-3 for adapters and prompts, 1e-4 for freeze)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
    nproc: int | None = typer.Option(
        None,
        min=1,
        help="Train with N processes (PyTorch DDP: gloo on CPU, nccl with one GPU each) through torchrun on this "
        "machine; batch size is per process. Same as `torchrun --nproc_per_node N -m retune.cli peft run ...`.",
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
    metrics = run_peft_experiment(settings, out, show_progress=sys.stderr.isatty())
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


@app.command()
@friendly_errors
def tune(
    config: Path = typer.Argument(
        ..., help="YAML: a `retune train` config plus search (ranges/choices), trials, searcher, scheduler."
    ),
    out: Path = typer.Option(
        ..., help="Output folder: best.yaml (a `retune train --config` file), trials.csv, search.json."
    ),
    data: Path | None = typer.Option(None, help="Label CSV (overrides data.csv of the YAML)."),
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


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for the data, the store, the results and report.html."),
    data: Path | None = typer.Option(
        None, help="Your label CSV instead of synthetic phantoms (e.g. ../shared/data/nih-cxr14/labels.csv)."
    ),
    n_images: int = typer.Option(400, min=40, help="Synthetic phantoms to generate (ignored with --data)."),
    n_tasks: int = typer.Option(3, min=1, help="Class-incremental tasks."),
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
        store=out / "store",
        data=DataConfig(csv=csv_path),
        generate=GeneratorSpec(kind="class", n_tasks=n_tasks),
        device=device,
    )
    execute_scenario(settings, out, restart=True)  # a demo always starts over (its inputs may differ run to run)


if __name__ == "__main__":
    app()
