"""`retune seg`: train a segmentation head on the frozen tower's cached dense maps, score it, segment images."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from retune.cli.common import (
    DEVICE,
    QUIET,
    announce_store,
    comma_list,
    console,
    examples,
    friendly_errors,
    progress_shown,
)

app = typer.Typer(
    help="Segmentation on the frozen image encoder: dense maps cached once, a light head, Dice on human masks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

MASK_FORMAT = typer.Option(None, "--format", help="Mask layout: masks_csv, siim_rle, mask_folder (default: auto).")
IMAGE_ROOT = typer.Option(None, help="Folder image paths resolve against (default: the CSV's folder; a mask "
                                     "folder needs it).")


def print_seg_metrics(metrics: dict) -> None:
    """One row per structure and method: Dice / IoU / HD95 with CIs, and the empty-mask columns."""
    from retune.segmentation.report import METRIC_HEADER, metric_rows

    table = Table(title=f"test: {metrics['n_images']} images of {metrics['n_patients']} patients "
                        f"(95% CIs, {metrics['n_bootstrap']} patient resamples)")
    for name in METRIC_HEADER:
        table.add_column(name)
    for row in metric_rows(metrics):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if metrics.get("note"):
        console.print(escape(metrics["note"]), highlight=False)


@app.command(
    "train",
    epilog=examples(
        "retune seg train --data ../shared/data/cxr-seg/masks.csv --structures lungs,heart --out runs/seg",
        "retune seg train --data masks.csv --out runs/seg-10 --label-fraction 0.1 --head text",
        "retune seg train --config configs/seg-cxr.yaml --out runs/seg",
    ),
)
@friendly_errors
def train(
    out: Path = typer.Option(..., help="Run directory: config.json, checkpoint.safetensors (head only), "
                                       "metrics.json, per_image.csv, report.html, RUN_CARD.md, mlruns/."),
    data: Path | None = typer.Option(None, help="masks.csv (mask_* columns), SIIM CSV or a mask folder "
                                               "(default: data.csv of --config)."),
    structures: str | None = typer.Option(None, help="Comma-separated structures (default: every mask column)."),
    head: str | None = typer.Option(None, help="Head: fpn (default), linear or text."),
    label_fraction: float | None = typer.Option(None, help="Share of training patients used: 0.01, 0.1, 1.0 "
                                                           "(default 1.0)."),
    config: Path | None = typer.Option(None, help="YAML with any SegmentationConfig fields (default: built-in)."),
    data_format: str | None = MASK_FORMAT,
    image_root: Path | None = IMAGE_ROOT,
    store: Path | None = typer.Option(None, help="Store for the dense maps (default: retune-store)."),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    epochs: int | None = typer.Option(None, help="Training epochs of the head and the scratch U-Net (default 20)."),
    baselines: str | None = typer.Option(None, help="predict_nothing,scratch_unet (default: both)."),
    seed: int | None = typer.Option(None, help="Seed of training and the patient split (default 0)."),
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Train a head on cached dense maps and, on the same patient split (70/10/20), the predict-nothing and
    from-scratch U-Net baselines; print Dice per structure on the test patients."""
    from retune.api import seg_train
    from retune.config import load_yaml_config, override
    from retune.segmentation.config import SegmentationConfig

    settings = load_yaml_config(config, SegmentationConfig) if config else SegmentationConfig()
    settings = override(settings, {
        "backbone": backbone, "store": store, "device": device, "seed": seed, "split": {"seed": seed},
        "head": head, "label_fraction": label_fraction, "structures": comma_list(structures, str),
        "baselines": comma_list(baselines, str), "optim": {"epochs": epochs},
        "data": {"csv": data, "format": data_format, "image_root": image_root},
    })
    announce_store(settings.store)
    metrics = seg_train(settings, out, show_progress=progress_shown(quiet))
    if as_json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return
    print_seg_metrics(metrics)
    console.print(escape(f"run: {out} (report: {out / 'report.html'})"), highlight=False)


@app.command(
    "evaluate",
    epilog=examples(
        "retune seg evaluate --run runs/seg --data other_patients.csv",
        "retune seg evaluate --run runs/seg --data other_patients.csv --json > seg-metrics.json",
    ),
)
@friendly_errors
def evaluate(
    run: Path = typer.Option(..., help="A segmentation run directory."),
    data: Path = typer.Option(..., help="masks.csv, SIIM CSV or mask folder to score on (every image)."),
    data_format: str | None = MASK_FORMAT,
    image_root: Path | None = IMAGE_ROOT,
    store: Path | None = typer.Option(None, help="Store for the dense maps (default: the run's)."),
    n_bootstrap: int | None = typer.Option(None, help="Patient resamples for the CIs (default: the run's, 1000)."),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Per-structure metrics as JSON on stdout."),
) -> None:
    """Score a run and the predict-nothing baseline per structure on another mask table (warns about images the run
    trained on)."""
    from retune.api import seg_evaluate

    metrics = seg_evaluate(run, data, data_format or "auto", image_root, store, n_bootstrap, progress_shown(quiet))
    if as_json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    print_seg_metrics(metrics)


@app.command(
    "predict",
    epilog=examples(
        "retune seg predict --run runs/seg image1.png image2.jpg --out masks/",
        "retune seg predict --run runs/seg scan.dcm --structures lungs --out masks/",
    ),
)
@friendly_errors
def predict(
    images: list[Path] = typer.Argument(..., help="PNG, JPEG or DICOM files."),
    run: Path = typer.Option(..., help="A segmentation run directory."),
    out: Path = typer.Option(Path("masks"), help="Folder for <image>.<structure>.png masks and <image>.overlay.png."),
    structures: str | None = typer.Option(None, help="Comma-separated structures (default: all of the run's)."),
) -> None:
    """Write one 0/255 mask PNG per structure and an overlay per image, at the image's original size."""
    from retune.api import seg_predict

    for item in seg_predict(run, images, out, comma_list(structures, str)):
        sizes = ", ".join(f"{name} {pixels} px" for name, pixels in item["pixels"].items())
        console.print(escape(f"{item['image']} ({item['width']} x {item['height']}): {sizes} -> {item['overlay']}"),
                      highlight=False)
