"""The run card beside every checkpoint (``RUN_CARD.md``, written by ``retune.experiments.run_folder``): a model card
a reader understands without opening the JSON files."""

from __future__ import annotations

from pathlib import Path

from retune.report.text import format_interval as _interval
from retune.report.text import record_mean_label
from retune.version import __version__

DEFAULT_BACKBONE_DOMAIN = (
    "general-domain (ImageNet EfficientNet-Lite0 image tower + sentence-transformers MiniLM text tower, "
    "not aligned, not trained on medical images)"
)


def backbone_domain(spec: str) -> str:
    """What the backbone was trained on, as far as retune knows it."""
    return (
        DEFAULT_BACKBONE_DOMAIN
        if spec == "default"
        else "as stated by its weights' provider (check before clinical research use)"
    )


def _title(kind: str, main: str, files: list[str], mlflow: str) -> list[str]:
    """The card's title and the line naming the folder's files and where its MLflow run is."""
    listed = ", ".join(f"`{name}`" for name in files)
    return [
        f"# Run card: {kind} run ({main})",
        "",
        f"Made by retune {__version__}. Files: {listed}; MLflow run in {mlflow}.",
        "",
    ]


def _model_and_data(
    kind: str, main: str, methods: list[str], facts: dict, files: list[str], mlruns: str
) -> list[str]:
    """Title, files, model and data sections shared by every kind of run."""
    backbone, split = facts["backbone"], facts.get("split", {})
    return _title(kind, main, files, f"`{mlruns}/` unless tracked elsewhere") + [
        "## Model",
        f"- Methods: {', '.join(methods)} (main: {main}); frozen backbone `{backbone['spec']}` "
        f"(fingerprint `{backbone['fingerprint']}`).",
        f"- Backbone domain: {backbone_domain(backbone['spec'])}.",
        "",
        "## Data",
        f"- Label CSV: `{Path(facts['data']['csv']).name}` ({facts['data']['n_images']} images).",
        f"- Patient-level split {split.get('fractions')} (seed {split.get('seed')}): "
        + ", ".join(f"{name} {count} images" for name, count in split.get("sizes", {}).items())
        + ".",
        "",
    ]


def _use_and_limits(spec: str, limitations: list[str]) -> list[str]:
    """Intended use and limitations (the general-domain backbone first where it applies)."""
    lines = [
        "",
        "## Intended use",
        "Research on adapting frozen vision-language models to chest X-ray findings. Not a medical device; not for "
        "diagnosis or triage. Validate on your own site's data before drawing any conclusion.",
        "",
        "## Limitations",
    ]
    if spec == "default":
        lines.append(
            "- **General-domain backbone**: the encoders never saw medical images; "
            "a medical backbone is expected to do better."
        )
    lines += [f"- {line}" for line in limitations]
    lines.append("- Hyper-parameters may have been chosen on the same data; treat the numbers as optimistic.")
    return lines


def run_card(facts: dict, metrics: dict, kind: str, files: list[str], mlruns: str) -> str:
    """The Markdown card of a run from its config.json facts and metrics.json (``files``: what the folder holds)."""
    if kind == "adaptor":
        return adaptor_run_card(facts, metrics, files, mlruns)
    if kind == "vqa":
        return vqa_run_card(facts, metrics, files, mlruns)
    if kind == "adaptor-objectives":
        return bench_run_card(facts, metrics, files)
    return classifier_run_card(facts, metrics, kind, files, mlruns)


def classifier_run_card(facts: dict, metrics: dict, kind: str, files: list[str], mlruns: str) -> str:
    """The card of a ``train`` or ``peft`` run: per-class test AUROC of the main method and its baselines."""
    positives = facts.get("positives", {})
    methods = [metrics["method"], *metrics.get("baselines", {})]
    lines = _model_and_data(kind, metrics["method"], methods, facts, files, mlruns) + [
        "## Classes and test metrics",
        f"AUROC on the test split ({metrics['n_images']} images of {metrics['n_patients']} patients) with "
        f"{int(metrics.get('ci_level', 0.95) * 100)}% CIs from {metrics['n_bootstrap']} bootstrap resamples "
        "of test patients.",
        "",
        "| class | train positives | test positives | " + " | ".join(f"{name} AUROC [CI]" for name in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    records = [metrics, *metrics.get("baselines", {}).values()]
    for name in metrics["classes"]:
        cells = [_interval(r["per_class"][name]["auroc"], r["per_class"][name]["auroc_ci"]) for r in records]
        lines.append(
            f"| {name} | {positives.get('train', {}).get(name, '?')} | {metrics['per_class'][name]['n_pos']} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        f"| **{record_mean_label(metrics)}** | | | "
        + " | ".join(_interval(r["mean_auroc"], r["mean_auroc_ci"]) for r in records)
        + " |"
    )
    limitations = []
    undefined = metrics.get("undefined_classes", [])
    if undefined:
        limitations.append(f"Undefined AUROC (no positives or no negatives in test): {', '.join(undefined)}.")
    few = [name for name in metrics["classes"] if 0 < metrics["per_class"][name]["n_pos"] < 10]
    if few:
        limitations.append(f"Fewer than 10 test positives (wide CIs): {', '.join(few)}.")
    limitations += metrics.get("warnings", [])
    return "\n".join(lines + _use_and_limits(facts["backbone"]["spec"], limitations)) + "\n"


def adaptor_run_card(facts: dict, metrics: dict, files: list[str], mlruns: str) -> str:
    """The Markdown card of a ``retune adaptor run``: retrieval on test and probes at each label fraction."""
    lines = _model_and_data("adaptor", metrics["method"], [metrics["method"]], facts, files, mlruns)
    lines += ["## Test metrics", "Retrieval on the test split (the adaptor's image and text embeddings):", ""]
    for direction, values in metrics["retrieval"]["adaptor"].items():
        if isinstance(values, dict):
            lines.append(f"- {direction}: " + ", ".join(f"{key} {value:.3f}" for key, value in values.items()))
    lines += [
        "",
        "| labels used | adaptor + probe mean AUROC [CI] | frozen + probe mean AUROC [CI] |",
        "|---|---|---|",
    ]
    for fraction, pair in metrics["label_fractions"].items():
        cells = [
            _interval(pair[name].get("mean_auroc"), pair[name].get("mean_auroc_ci")) for name in ("adaptor", "frozen")
        ]
        lines.append(f"| {float(fraction):.0%} | " + " | ".join(cells) + " |")
    limits = ["Retrieval texts are built from the labels when the CSV has no report column."]
    return "\n".join(lines + _use_and_limits(facts["backbone"]["spec"], limits)) + "\n"



def _browse(where: str, kind: str) -> list[str]:
    """How to open the run's MLflow record (``where``: the folder ``retune ui`` takes)."""
    return [
        "",
        "## Browsing",
        f"`retune ui {where}` serves the MLflow UI over its `mlruns/` (experiment `retune-{kind}`: settings, test "
        "metrics, per-epoch training curves, these files as artifacts); with `tracking_uri` set, the run is on that "
        "server instead.",
    ]


VQA_SCORES = (
    ("accuracy", "all test questions", "accuracy"),
    ("accuracy_seen", "seen phrasing and finding", "accuracy_seen"),
    ("accuracy_unseen_phrasing", "unseen phrasing", "accuracy_unseen_phrasing"),
    ("accuracy_unseen_finding", "unseen finding", "accuracy_unseen_finding"),
    ("accuracy_yes_no", "yes / no", "accuracy_yes_no"),
    ("accuracy_choice", "multiple choice", "accuracy_choice"),
    ("paired_accuracy", "paired (a yes and its adversarial no both right)", "pairs"),
)  # (score, what it covers, its count in the record's ``n``)


def vqa_run_card(facts: dict, metrics: dict, files: list[str], mlruns: str) -> str:
    """The card of a ``retune vqa train`` run: the tuned model, the question set by split and type, and the test
    scores of the run beside its random, majority and classifier answerers on the same questions."""
    config, questions, backbone = facts["train_config"], facts["questions"], facts["backbone"]
    built, test = questions.get("built", {}), metrics["test"]
    answerers = sorted(test["scores"], key=lambda name: name != "vqa")  # the run first, then its baselines
    towers = ", ".join(metrics["tuning"]["towers"]) or "none (both towers frozen)"
    counts = questions.get("counts", {})
    types = sorted({kind for by_type in counts.values() for kind in by_type})
    lines = _title("vqa", metrics["variant"], files, f"`{mlruns}/` unless tracked elsewhere") + [
        "## Model",
        f"- Variant `{metrics['variant']}`: tuner `{metrics['tuning']['method']}`, tuned tower(s): {towers}; a fusion "
        f"transformer (width {config['width']}, {config['layers']} self-attention and {config['fusion_layers']} "
        "cross-attention layer(s)) scores each candidate answer.",
        f"- Trainable parameters: {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} "
        f"({metrics['trainable_percent']}%); {metrics['epochs_run']} epochs, kept epoch {metrics['best_epoch']} "
        "(best accuracy on validation questions of seen phrasings and findings).",
        f"- Frozen backbone `{backbone['spec']}` (fingerprint `{backbone['fingerprint']}`); domain: "
        f"{backbone_domain(backbone['spec'])}.",
        "",
        "## Data",
        f"- Question file `{Path(questions['path']).name}`; questions by split and type:",
        "",
        "| split | " + " | ".join(types) + " | all |",
        "|---|" + "---|" * (len(types) + 1),
        *(f"| {split} | " + " | ".join(str(by_type.get(kind, 0)) for kind in types) + f" | {sum(by_type.values())} |"
          for split, by_type in counts.items()),
        "",
        "- Held out of training (unseen in validation and test): findings "
        f"{', '.join(built.get('held_out_findings', [])) or 'none'}; phrasings "
        f"{', '.join(f'`{phrasing}`' for phrasing in built.get('held_out_phrasings', [])) or 'none'}"
        + ("" if built else " (the question file records no build facts)") + ".",
        f"- Findings asked in training: {', '.join(questions['findings'])} ({questions['n_images']} training images).",
        "",
        "## Test scores",
        f"On the test split ({test['n_questions']} questions of {test['scores']['vqa']['n_patients']} patients), "
        f"95% CIs from {config['n_bootstrap']} bootstrap resamples of patients; every answerer on the same questions.",
        "",
        "| score | questions the run answered | " + " | ".join(f"{name} answerer [CI]" for name in answerers) + " |",
        "|---|---|" + "---|" * len(answerers),
    ]
    for score, label, count in VQA_SCORES:
        cells = [_interval(test["scores"][name].get(score), test["scores"][name].get(f"{score}_ci"))
                 for name in answerers]
        lines.append(f"| {label} | {test['scores']['vqa']['n'][count]} | " + " | ".join(cells) + " |")
    limits = ["Questions are templates built from image-level labels: the answers inherit the labels' noise."]
    if "classifier" in test["scores"]:
        limits.append("The classifier answerer (`classifier/`, its own run card) knows only the findings asked in "
                      "training: it leaves questions on unseen findings unanswered, and its scores cover the rest.")
    if metrics.get("unreadable_images"):
        limits.append(f"{len(metrics['unreadable_images'])} unreadable image(s) left out with their questions.")
    lines += _use_and_limits(backbone["spec"], limits) + _browse("<this folder>", "vqa")
    return "\n".join(lines) + "\n"


def _bench_cell(record: dict | None, value: str, why_missing: str | None = None) -> str:
    """One headline number of a bench run with its CI (the first seed has CIs), or why it is missing."""
    if record is None:
        return why_missing or "not run"
    return _interval(record.get(value), record.get(f"{value}_ci"))


def bench_run_card(facts: dict, metrics: dict, files: list[str]) -> str:
    """The card of one ``retune adaptor bench`` run (one objective mix, one seed): what was pre-trained, on which
    texts, and the tasks' headline test numbers (CIs on the bench's first seed only)."""
    backbone, data, split = facts["backbone"], facts["data"], facts["split"]
    objectives = "; ".join(
        f"`{name}` ({', '.join(f'{key} {value}' for key, value in options.items())})"
        for name, options in metrics["objectives"].items()
    )
    where = "the bench folder's `mlruns/` (three folders up) unless tracked elsewhere"
    lines = _title("adaptor-objectives", f"mix {metrics['mix']}, seed {metrics['seed']}", files, where) + [
        "## Model",
        f"- Cross-attention adaptor pre-trained with the objective mix `{metrics['mix']}`: {objectives}; seed "
        f"{metrics['seed']}, {len(metrics['train_loss'])} epochs, {metrics['seconds_per_epoch']:.3f} s per epoch.",
        f"- Frozen backbone `{backbone['spec']}` (fingerprint `{backbone['fingerprint']}`); domain: "
        f"{backbone_domain(backbone['spec'])}."
        + (f" Image tokens: {facts['image_token_projection']}." if facts.get("image_token_projection") else ""),
        "",
        "## Data",
        f"- `{Path(data['csv']).name}` ({data['n_images']} images); texts: {data['text_source']}.",
        f"- Patient-level split {split['fractions']} (seed {split['seed']}): "
        + ", ".join(f"{name} {count} images" for name, count in split["sizes"].items()) + ".",
        "",
        "## Test numbers",
        "Patient-bootstrap 95% CIs on the bench's first seed (none for text→image recall), the value alone on later "
        "seeds. The same tasks without pre-training are the bench's baseline row (`bench.json`).",
        "",
        "| task | value [CI] |",
        "|---|---|",
    ]
    rows = []
    if "zero_shot" in metrics:
        rows.append((f"zero-shot AUROC, {record_mean_label(metrics['zero_shot'])}",
                     _bench_cell(metrics["zero_shot"], "mean_auroc")))
        rows += [(f"linear probe AUROC, {float(fraction):.0%} of training labels", _bench_cell(record, "mean_auroc"))
                 for fraction, record in metrics["linear_probe"].items()]
    retrieval = metrics["retrieval"]
    for direction, arrow in (("image_to_text", "image→text"), ("text_to_image", "text→image")):
        cis = retrieval.get(f"{direction}_ci", {})
        recalls = sorted(retrieval[direction].items(), key=lambda item: int(item[0].removeprefix("R@")))  # R@1 first
        rows += [(f"{arrow} {key}", _interval(value, cis.get(key))) for key, value in recalls]
    rows.append(("VQA accuracy (adaptor as fusion module)",
                 _bench_cell(metrics.get("vqa"), "accuracy", metrics.get("vqa_accuracy"))))
    rows.append(("Dice (linear head on its image token states)",
                 _bench_cell(metrics.get("segmentation"), "dice", metrics.get("dice"))))
    lines += [f"| {task} | {value} |" for task, value in rows]
    limits = [f"Pair {data['text_note']}."] if data.get("text_note") else []
    limits.append("One seed of the bench: read the mean ± sd over seeds in `bench.json` before comparing mixes.")
    lines += _use_and_limits(backbone["spec"], limits) + _browse("<bench folder>", "adaptor-objectives")
    return "\n".join(lines) + "\n"
