"""`retune adaptor` and `retune peft`: the cross-attention Adaptor and parameter-efficient encoder tuning."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from retune.cli.common import QUIET, announce_store, console, examples, friendly_errors, progress_shown
from retune.cli.tables import print_metrics, print_run_saved, print_tuning_cost, rounded
from retune.report.text import format_interval

adaptor_app = typer.Typer(
    help="The Adaptor framework: a cross-attention adaptor pre-trained on cached image and text tokens.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@adaptor_app.command(
    "run",
    epilog=examples(
        "retune adaptor run --data labels.csv --store stores/nih --out runs/adaptor",
        "retune adaptor run --data labels.csv --store stores/nih --out runs/siglip --loss siglip --epochs 20",
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
    from retune.api import run_adaptor
    from retune.config import AdaptorExperimentConfig, load_yaml_config, override

    settings = load_yaml_config(config, AdaptorExperimentConfig) if config else AdaptorExperimentConfig()
    settings = override(
        settings,
        {"loss": loss, "backbone": backbone, "store": store, "data": {"csv": data}, "optim": {"epochs": epochs}},
    )
    announce_store(settings.store)
    metrics = run_adaptor(settings, out, show_progress=progress_shown(quiet))
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


@adaptor_app.command(
    "bench",
    epilog=examples(
        "retune adaptor bench --config configs/objectives-nih.yaml",
        "retune adaptor bench --config configs/objectives-nih.yaml --store stores/nih --out runs/objectives --seeds 0",
    ),
)
@friendly_errors
def adaptor_bench(
    config: Path = typer.Option(
        ...,
        help="YAML with ObjectivesBenchConfig fields: mixes ({name: {clip: 1.0, caption: 0.5, masked: {ratio: "
        "0.5}}}), seeds, pairs (labels = synthetic sentences from labels, or a csv text column), adaptor and "
        "optim fields.",
    ),
    out: Path = typer.Option(
        Path("runs/objectives"), help="Output folder: bench.json, bench_config.json, runs/<mix>/seed<k>/ run folders."
    ),
    store: Path | None = typer.Option(
        None, help="Embedding store folder, image and text tokens are cached there (default: the config's store)."
    ),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds instead of the config's (default: 0,1,2)."),
    epochs: int | None = typer.Option(
        None, min=1, help="Pre-training epochs per run instead of the config's (default: the config's optim.epochs)."
    ),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print bench.json to stdout."),
) -> None:
    """Pre-train the Adaptor with each objective mix and seed on cached tokens; evaluate every run on the same test
    patients (zero-shot AUROC, probes at each label fraction, retrieval R@1/5/10) and print mean ± sd [CI]."""
    from retune.api import adaptor_bench as bench
    from retune.config import load_yaml_config, override
    from retune.objectives import ObjectivesBenchConfig

    settings = override(
        load_yaml_config(config, ObjectivesBenchConfig),
        {
            "store": store,
            "seeds": None if seeds is None else [part.strip() for part in seeds.split(",") if part.strip()],
            "optim": {"epochs": epochs, "min_epochs": epochs},
        },
    )
    announce_store(settings.store)
    result = bench(settings, out, show_progress=progress_shown(quiet))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    columns, rows = result["table"]["columns"], result["table"]["rows"]
    table = Table(columns[0], *(row[0] for row in rows))  # one column per mix: tasks read down the side
    for index, task in enumerate(columns[1:], start=1):
        table.add_row(task, *(row[index] for row in rows))
    console.print(table)
    console.print(
        escape(
            f"cells: mean ± sd over seeds {result['seeds']} [95% patient-bootstrap CI of the first seed]; texts: "
            f"{result['data']['text_source']}"
        ),
        highlight=False,
    )
    for note in (result["data"]["text_note"], result["note"], *result["not_run"].values()):
        if note:
            console.print(f"[dim]{escape(note)}[/]")


@adaptor_app.command(
    "caption",
    epilog=examples("retune adaptor caption --run runs/objectives/runs/clip+caption/seed0 image.png"),
)
@friendly_errors
def adaptor_caption(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM)."),
    run: Path = typer.Option(..., help="A bench run folder whose mix has a caption objective."),
    device: str | None = typer.Option(None, help="Device (default: CUDA when present, else CPU)."),
) -> None:
    """Generate a sentence for each image with a run's captioning decoder (greedy decoding)."""
    from retune.api import caption

    for path, sentence in zip(images, caption(run, images, device=device)):
        typer.echo(f"{path}: {sentence}")  # plain lines: never wrapped, easy to pipe


peft_app = typer.Typer(
    help="Tune the encoders themselves: LoRA, IA3, prefix (text) or visual prompt (ViT image) tuning, "
    "or freezing the first k blocks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@peft_app.command(
    "run",
    epilog=examples(
        "retune peft run --data labels.csv --store stores/nih --out runs/lora --method lora",
        "retune peft run --data labels.csv --store stores/nih --out runs/f6 --method freeze --freeze-blocks 6",
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
    from retune.api import run_peft
    from retune.config import PeftExperimentConfig, load_yaml_config, override
    from retune.distributed.ddp import drop_option, launch

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
    metrics = run_peft(settings, out, show_progress=progress_shown(quiet))
    if not metrics:  # a DDP process other than rank 0: rank 0 reports
        return
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    print_metrics(metrics)
    print_tuning_cost(metrics)
    print_run_saved(out)
