"""`retune vqa`: closed-ended visual question answering, from question sets built from labels to answers."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from retune.cli.common import QUIET, announce_store, console, examples, friendly_errors, progress_shown
from retune.report.text import format_interval

app = typer.Typer(
    help="Closed-ended VQA: questions built from labels (or VQA-RAD / SLAKE), answered through the towers with a "
    "cross-attention fusion and an answer head; frozen or PEFT-tuned towers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ANSWERERS = {"vqa": "this run", "classifier": "classifier as answerer", "majority": "majority", "random": "random"}
SCORES = {
    "accuracy_seen": "seen",
    "paired_accuracy_seen": "paired (seen)",
    "accuracy_unseen_phrasing": "unseen phrasing",
    "accuracy_unseen_finding": "unseen finding",
    "balanced_accuracy_per_finding_mean": "balanced / finding",
    "accuracy_choice": "multiple choice",
    "accuracy": "all",
}


def print_vqa_scores(evaluation: dict, note: str = "") -> None:
    """One row per answerer (this run first, then the baselines), one column per score with its 95% CI."""
    table = Table("answerer", *SCORES.values(), title=f"split: {evaluation['split']} ({evaluation['n_questions']} "
                  "questions)")
    for name, label in ANSWERERS.items():
        scores = evaluation["scores"].get(name)
        if scores is not None:
            table.add_row(label, *(format_interval(scores[key], scores[f"{key}_ci"]) for key in SCORES))
    console.print(table)
    counts = evaluation["scores"]["vqa"]["n"]
    console.print(f"questions: {counts['accuracy_seen']} seen, {counts['accuracy_unseen_phrasing']} unseen phrasing, "
                  f"{counts['accuracy_unseen_finding']} unseen finding; {counts['pairs']} yes/adversarial-no pairs. "
                  "The classifier answers only findings it was trained on.", highlight=False)
    if evaluation.get("training_overlap"):
        console.print(f"[yellow]warning:[/] {evaluation['training_overlap']} questions are about images the run "
                      "trained or validated on", highlight=False)
    if note:
        console.print(f"[dim]{escape(note)}[/]")


@app.command("build", epilog=examples(
    "retune vqa build --data ../shared/data/nih-cxr14/labels.csv --out qa.parquet",
    "retune vqa build --data labels.csv --out qa.parquet --held-out-finding Pneumothorax --held-out-finding Emphysema",
))
@friendly_errors
def build(
    data: Path = typer.Option(..., help="Label CSV (any format retune reads): a path column and 0/1 finding columns."),
    out: Path = typer.Option(..., help="Question table to write (Parquet; pandas.read_parquet reads it)."),
    config: Path | None = typer.Option(None, help="YAML with QuestionSetConfig fields (default: built-in defaults)."),
    held_out_finding: list[str] | None = typer.Option(
        None, help="A finding never asked in training (repeatable; default: the one with the median positive count)."
    ),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root",
                                            help="Read image paths that resolve outside the CSV's folder."),
) -> None:
    """Yes/no questions per image and finding (8 phrasings, synonyms; balanced; each "yes" paired with an adversarial
    "no" on the same image), multiple choice, patient split, held-out phrasings and findings."""
    from retune.api import vqa_build
    from retune.config import load_yaml_config, override
    from retune.data.questions import QuestionSetConfig

    settings = load_yaml_config(config, QuestionSetConfig) if config else QuestionSetConfig()
    settings = override(settings, {"held_out_findings": held_out_finding or None})
    frame = vqa_build({"csv": data, "allow_outside_root": allow_outside_root}, out, settings)
    counts = frame.groupby(["split", "type"]).size()
    console.print(f"{len(frame)} questions on {frame['image_path'].nunique()} images -> {out}", highlight=False)
    console.print(escape(", ".join(f"{split} {kind}: {n}" for (split, kind), n in counts.items())), highlight=False)
    console.print(f"held out of training: findings {frame.attrs['held_out_findings']}, "
                  f"phrasings {settings.held_out_phrasings}", highlight=False)


@app.command("import", epilog=examples(
    "retune vqa import 'VQA_RAD Dataset Public.json' --out vqa-rad.parquet",
    "retune vqa import Slake1.0/test.json --format slake --out slake-test.parquet",
))
@friendly_errors
def import_set(
    path: Path = typer.Argument(..., help="VQA-RAD JSON, or one SLAKE split file (train.json, validate.json...)."),
    out: Path = typer.Option(..., help="Question table to write (Parquet)."),
    format: str = typer.Option("vqa-rad", help="vqa-rad or slake."),
    image_folder: Path | None = typer.Option(
        None, help="Image folder (default: 'VQA_RAD Image Folder' or 'imgs' beside the JSON)."),
    closed_only: bool = typer.Option(False, "--closed-only", help="Keep yes/no questions only."),
) -> None:
    """Read a published VQA set: yes/no answers become yes/no questions, other answers are asked with the file's
    answer vocabulary as candidates."""
    from retune.api import vqa_import

    frame = vqa_import(path, out, format, image_folder, include_open=not closed_only)
    console.print(f"{len(frame)} questions on {frame['image_path'].nunique()} images -> {out}", highlight=False)


@app.command("train", epilog=examples(
    "retune vqa train --questions qa.parquet --peft lora --out runs/vqa",
    "retune vqa train --questions qa.parquet --peft none --store stores/nih --out runs/vqa-frozen",
    "retune vqa train --questions qa.parquet --peft lora --tower image --freeze-blocks 5 --out runs/vqa-image",
))
@friendly_errors
def train(
    questions: Path = typer.Option(..., help="Question table from `retune vqa build` or `retune vqa import`."),
    out: Path = typer.Option(..., help="Run directory: metrics.json, checkpoint.safetensors, config.json."),
    peft: str | None = typer.Option(
        None, help="none (frozen towers: fusion + head only; default), lora, ia3, prefix (text) or prompt (ViT image)."
    ),
    tower: str | None = typer.Option(None, help="image, text or both (default: text; image for prompt)."),
    freeze_blocks: float | None = typer.Option(None, help="lora/ia3: leave the first k blocks untouched (default 0)."),
    config: Path | None = typer.Option(None, help="YAML with VqaExperimentConfig fields (default: built-in)."),
    backbone: str | None = typer.Option(None, help="Backbone spec (default: 'default', general-domain)."),
    store: Path | None = typer.Option(
        None, help="Embedding store; frozen towers' tokens are cached there (default: retune-store)."
    ),
    epochs: int | None = typer.Option(None, min=1, help="Training epochs (default: 8)."),
    quiet: bool = QUIET,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Train a VQA variant on the training split (early stopping on validation accuracy), then score the test split
    with the random, majority and classifier-as-answerer baselines."""
    from retune.api import vqa_train
    from retune.config import load_yaml_config, override
    from retune.experiments.vqa import VqaExperimentConfig

    settings = load_yaml_config(config, VqaExperimentConfig) if config else VqaExperimentConfig()
    settings = override(settings, {"questions": questions, "method": peft, "tower": tower,
                                   "freeze_blocks": freeze_blocks, "backbone": backbone, "store": store,
                                   "optim": {"epochs": epochs}})
    announce_store(settings.store)
    metrics = vqa_train(settings, out, show_progress=progress_shown(quiet))
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    print_vqa_scores(metrics["test"], metrics.get("note", ""))
    console.print(
        f"variant {metrics['variant']}: trainable parameters {metrics['trainable_parameters']:,} "
        f"({metrics['trainable_percent']:.2f}% of the model), peak memory {metrics['peak_memory_mb']:.0f} MB, "
        f"{metrics['seconds_per_epoch']} s per epoch", highlight=False)


@app.command("evaluate", epilog=examples(
    "retune vqa evaluate --run runs/vqa --questions qa.parquet",
    "retune vqa evaluate --run runs/vqa --questions other-site.parquet --split all --json",
))
@friendly_errors
def evaluate(
    run: Path = typer.Option(..., help="A `retune vqa train` run directory."),
    questions: Path = typer.Option(..., help="Question table to score."),
    split: str = typer.Option("auto", help="test, val, all, or auto (test when the run trained on this table)."),
    n_bootstrap: int = typer.Option(1000, min=0, help="Patient-bootstrap replicates for the CIs."),
    store: Path | None = typer.Option(None, help="Embedding store (default: the run's)."),
    as_json: bool = typer.Option(False, "--json", help="Print every score and baseline as JSON."),
) -> None:
    """Score a run and the baselines (random, majority, classifier as answerer) on the same questions, with
    patient-bootstrap CIs: seen, unseen phrasings, unseen findings, paired, per-finding balanced accuracy."""
    from retune.api import vqa_evaluate

    result = vqa_evaluate(run, questions, split, n_bootstrap, store)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print_vqa_scores(result, result.get("note", ""))


@app.command("ask", epilog=examples(
    'retune vqa ask --run runs/vqa ../shared/data/nih-cxr14/images/00000003_000.png "Is there an effusion?"',
))
@friendly_errors
def ask(
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, DICOM)."),
    question: str = typer.Argument(..., help="A yes/no question about the image."),
    run: Path = typer.Option(..., help="A `retune vqa train` run directory."),
    store: Path | None = typer.Option(None, help="Embedding store (default: the run's)."),
) -> None:
    """Answer a yes/no question about one image."""
    from retune.api import vqa_ask

    answer = vqa_ask(run, image, question, store)
    console.print(f"{answer['answer']} (p(yes) = {answer['p_yes']:.3f})", highlight=False)
