"""Data and run commands: embed, train, evaluate, predict, compare, ui, demo, methods, backbones."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from retune.cli.common import (
    ADDRESS,
    ALLOW_OUTSIDE_ROOT,
    BACKBONE,
    CSV_ARGUMENT,
    DATA_FORMAT,
    DEVICE,
    ENGINE,
    IMAGE_ROOT,
    METADATA_CSV,
    MIN_POSITIVES,
    NO_VERIFY,
    QUIET,
    STORE,
    announce_store,
    check_engine,
    console,
    err_console,
    examples,
    friendly_errors,
    progress_shown,
    said_on_interrupt,
    warn_unverified,
)
from retune.cli.root import app
from retune.cli.scenario import execute_scenario
from retune.cli.tables import (
    print_metrics,
    print_paired,
    print_predictions,
    print_run_metrics,
    print_run_saved,
    print_setting_differences,
    show,
)
from retune.data.images import DEFAULT_LIMITS
from retune.errors import ConfigError


@app.command(epilog=examples("retune methods"))
@friendly_errors
def methods() -> None:
    """List the registered methods, whether each is exemplar-free, and the scenario kinds it runs in."""
    from retune.api import methods as available_methods

    table = Table("name", "exemplar-free", "scenario kinds", "description")
    for name, cls in available_methods().items():
        kinds = ", ".join(sorted(cls.scenario_kinds))
        table.add_row(name, "yes" if cls.exemplar_free else "no (stores data)", kinds, cls.description)
    show(table)


@app.command(epilog=examples("retune backbones"))
@friendly_errors
def backbones() -> None:
    """List the backbone families and aliases you can pass to --backbone."""
    from retune.api import backbones as list_backbones

    for name, info in list_backbones():
        console.print(f"[bold]{escape(name)}[/] (aligned towers: {'yes' if info.aligned else 'no'})", highlight=False)
        console.print(f"  --backbone {escape(info.example)}", highlight=False, soft_wrap=True)  # whole, never cut
        console.print(f"  {escape(info.description)}", highlight=False, overflow="fold")


@app.command(
    epilog=examples(
        "retune embed labels.csv --store stores/nih",
        "retune embed labels.csv --store stores/nih --tokens   # for adaptor run",
        "retune embed labels.csv --store stores/nih --max-pixels 40000000",
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
    writing the same store: `retune embed labels.csv --store S --engine ray --workers 2` starts a local Ray
    instance, `--address auto` on a node of a running cluster (image paths and S on a shared filesystem).
    """
    from retune.api import embed as embed_api
    from retune.data.images import DecodeLimits

    limits = DecodeLimits(max_bytes=int(max_file_mb * 2**20), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    interrupted = f"embeddings written so far are kept in {store}; rerun the same command to embed only the rest"
    with said_on_interrupt(interrupted):
        model, summary = embed_api(
            csv_path,
            store,
            backbone,
            data_format=data_format,
            image_root=image_root,
            metadata_csv=metadata_csv,
            allow_outside_root=allow_outside_root,
            batch_size=batch_size,
            workers=workers,
            tokens=tokens,
            limits=limits,
            device=device,
            engine=check_engine(engine, address),
            address=address,
            show_progress=progress_shown(quiet),
            announce=announce_store,
        )
    for path, reason in summary.errors.itertuples(index=False):
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    console.print(escape(f"backbone {model.spec} ({model.fingerprint}): {summary.line()}"), highlight=False)
    if len(summary.errors):
        raise typer.Exit(1)


@app.command(
    epilog=examples(
        "retune train --data labels.csv --store stores/nih --out runs/nih",
        "retune train --data labels.csv --store stores/nih --out runs/clip --objective clip --lr 1e-3",
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
    interrupted = (
        f"embeddings written so far are kept in {settings.store}; no run was saved to {out}; rerun the same command "
        "(images already embedded are not embedded again)"
    )
    with said_on_interrupt(interrupted):
        metrics = train_api(settings, out, show_progress=progress_shown(quiet)).metrics
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(metrics)
        print_run_saved(out)


@app.command(
    epilog=examples(
        "retune evaluate --run runs/nih --data labels.csv            # its test split",
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
    no_verify: bool = NO_VERIFY,
) -> None:
    """Evaluate a trained run (RE-tune and baselines, or a PEFT run): per-class AUROC/AUPRC, patient-bootstrap CIs.

    Evaluation images that are (by content, even under another name) training or validation images of the run are
    counted and warned about loudly, and recorded under "overlap" in the JSON; --exclude-overlap leaves them out.
    """
    from retune.api import load_run

    warn_unverified(no_verify, run)
    metrics = load_run(run, store=store, cache=cache, verify=not no_verify).evaluate(
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
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files (PNG, JPEG, DICOM)."),
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
    no_verify: bool = NO_VERIFY,
) -> None:
    """Per-class probabilities for new images; unreadable images are reported and skipped (exit code 1).

    New images are embedded in memory and forgotten; nothing is added to the store unless --cache.
    """
    from retune.api import export_predictions, load_run
    from retune.experiments.inference import prediction_records

    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(
            f"--output {output}: unknown extension '{output.suffix}'; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    warn_unverified(no_verify, run)
    frame = load_run(run, store=store, cache=cache, verify=not no_verify).predict(images, method=method)
    errors = frame.attrs["unreadable"]
    for path, reason in errors:
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    if not len(frame) and not as_json:
        err_console.print(f"[bold red]error:[/] no readable image among the {len(images)} given", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(prediction_records(frame), indent=2))
    else:
        print_predictions(frame)
    if output is not None:
        export_predictions(frame, output)
        err_console.print(escape(f"wrote {output}"), highlight=False)
    if len(errors):
        raise typer.Exit(1)


@app.command(
    epilog=examples(
        "retune compare runs/bce runs/clip",
        "retune compare runs/bce runs/clip --data labels.csv   # paired AUROC difference",
    )
)
@friendly_errors
def compare(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN...", help="Run directories (or metrics.json files) of any method: train, adaptor, peft."
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
    min_positives: int = typer.Option(
        10,
        "--min-positives",
        min=1,
        help="With --data: the mean difference covers only classes with at least this many positive images "
        "(the rule of the runs' own tables); the rest are listed per class.",
    ),
) -> None:
    """Put runs side by side: mean AUROC with CI and the settings that differ; with --data, is A better than B?

    The paired comparison scores both runs' main methods on the same images (images either run trained on are left
    out) and gives the AUROC difference A - B with a patient-bootstrap CI: a CI excluding 0 means a real difference.
    """
    from retune.api import compare_runs, run_metrics
    from retune.errors import ConfigError

    records = run_metrics(runs)  # every run must have its metrics, paired or not
    if data is not None:
        if len(runs) != 2:
            raise ConfigError(f"--data compares exactly two runs (got {len(runs)})")
        result = compare_runs(
            runs[0], runs[1], data, split=split, n_bootstrap=n_bootstrap, min_positives=min_positives
        )
        if as_json:
            print(json.dumps(result, indent=2))
            return
        print_paired(result)
        return
    print_run_metrics(records)
    if len(runs) > 1:
        print_setting_differences(runs)


@app.command(epilog=examples("retune ui runs/nih", "retune ui results/nih-class --port 5001"))
@friendly_errors
def ui(
    folder: Path = typer.Argument(
        ..., metavar="FOLDER", help="A run or scenario output folder (uses its mlruns/), or an mlruns folder itself."
    ),
    port: int = typer.Option(5000, min=1, max=65535, help="Port of the web UI."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind; the runs hold patient-derived metrics, so keep it local."
    ),
) -> None:
    """Browse a folder's MLflow runs (settings, per-class AUROC with CIs, curves, plots, report) in the MLflow UI.

    The same as `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file://FOLDER/mlruns --host 127.0.0.1`.
    """
    from retune.api import mlflow_ui

    announce = lambda line: err_console.print(escape(line), highlight=False)  # noqa: E731
    raise typer.Exit(mlflow_ui(folder, host, port, announce=announce))


@app.command(
    epilog=examples(
        "retune demo",
        "retune demo --data labels.csv --store stores/nih --out results/nih-demo",
    )
)
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for the data, the store, the results and report.html."),
    data: Path | None = typer.Option(
        None,
        help="Your label CSV instead of synthetic phantoms (default: 400 phantoms made in OUT), "
        "e.g. labels.csv.",
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
